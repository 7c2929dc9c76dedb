"""The model bundle: ``model.safetensors`` (weights, no pickle) + ``config.json``, and
batch prediction. This is the API serving and monitoring use."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.io import atomic_file, plain
from dlrm.configs import EmbeddingConfig, ModelConfig
from dlrm.data import TensorData
from dlrm.model import DLRM
from contract.spec import FeatureSpec, ModelInput

BUNDLE_FORMAT = "robeflow.dlrm.v1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of ``asdict(ModelConfig)`` (lists back to tuples); unknown keys raise ValueError."""
    names = {f.name for f in fields(ModelConfig)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"model config has unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kw = dict(d)
    emb = kw.pop("embedding", {})
    unknown = set(emb) - {f.name for f in fields(EmbeddingConfig)}
    if unknown:
        raise ValueError(f"embedding config has unknown key(s) {sorted(unknown)}")
    for k in ("bottom_mlp", "top_mlp"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return ModelConfig(embedding=EmbeddingConfig(**emb), **kw)


def save_model(model: nn.Module, out_dir: Path, *, spec: FeatureSpec, config: dict,
               metrics: dict | None = None) -> None:
    """Writes ``out_dir/model.safetensors`` and ``out_dir/config.json``.

    Args:
        model: a :class:`dlrm.model.DLRM`.
        out_dir: the bundle directory (created if needed; both files replaced atomically).
        spec: the FeatureSpec the model was trained on (stored under ``"feature_spec"``).
        config: the run's config as a plain dict (e.g. ``asdict(TrainConfig)``), stored
            under ``"config"``.
        metrics: training metrics, stored under ``"metrics"``.
    """
    from safetensors.torch import save_file

    if not isinstance(model, DLRM):
        raise TypeError(f"save_model expects a dlrm.model.DLRM, got {type(model).__name__}")
    if len(spec.sparse) != len(model.table_sizes) or len(spec.dense) != model.num_dense:
        raise ValueError(f"feature spec ({len(spec.dense)} dense, {len(spec.sparse)} sparse) does not "
                         f"match the model ({model.num_dense} dense, {len(model.table_sizes)} tables)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emb = model.embedding
    doc = {
        "format": BUNDLE_FORMAT,
        "model": plain(asdict(model.config)),
        "num_dense": model.num_dense,
        "table_sizes": model.table_sizes,
        "feature_spec": json.loads(spec.to_json()),
        "embedding": {
            "backend": model.config.embedding.backend,
            "bytes": emb.num_bytes,
            "full_bytes": emb.full_bytes,
            "compression": emb.compression,
            "hash": emb.hash_constants(),   # ROBE / hashing constants (A, B, C, P, Z, |M|)
        },
        "config": plain(config),
        "metrics": plain(metrics or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # weights first: a bundle whose config.json exists is whole
    with atomic_file(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": BUNDLE_FORMAT})
    with atomic_file(out_dir / CONFIG) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")


def load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    """Reads a bundle written by :func:`save_model`.

    Returns:
        (model in eval mode on CPU, the config.json dict; its ``"feature_spec"`` key holds
        the FeatureSpec dict, ``FeatureSpec.from_dict`` turns it back).
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    for name in (WEIGHTS, CONFIG):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"model bundle {model_dir} lacks {name}")
    doc = json.loads((model_dir / CONFIG).read_text())
    if doc.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{model_dir / CONFIG} has format {doc.get('format')!r}; expected {BUNDLE_FORMAT!r}")
    model = DLRM(model_config_from_dict(doc["model"]), doc["num_dense"], doc["table_sizes"])
    stored = doc["embedding"]["hash"]
    if model.embedding.hash_constants() != stored:
        raise ValueError(f"hash constants rebuilt from the config {model.embedding.hash_constants()} differ "
                         f"from the bundle's {stored}; the bundle was written by an incompatible version")
    model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
    model.eval()
    return model, doc


@torch.no_grad()
def predict(model: nn.Module, inputs: ModelInput, batch_size: int = 8192) -> np.ndarray:
    """Purchase probabilities, float32 of shape (N,), in batches of ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = TensorData(inputs, len(model.table_sizes))
    if data.dense.shape[1] != model.num_dense:
        raise ValueError(f"inputs have {data.dense.shape[1]} dense features; the model expects {model.num_dense}")
    out = np.empty(data.num_rows, dtype=np.float32)
    for start in range(0, data.num_rows, batch_size):
        stop = min(start + batch_size, data.num_rows)
        b = data.range_batch(start, stop).to(device)
        out[start:stop] = torch.sigmoid(model(b.dense, b.values, b.offsets).float()).cpu().numpy()
    model.train(was_training)
    return out
