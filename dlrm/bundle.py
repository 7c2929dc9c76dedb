"""The model bundle: ``model.safetensors`` (weights, no pickle) + ``config.json``, and
batch prediction. This is the API serving and monitoring use."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from contract.io import atomic_file, plain
from dlrm.configs import EmbeddingConfig, HistoryConfig, HistoryInputs, ModelConfig
from dlrm.data import TensorData
from dlrm.model import DLRM
from contract.spec import FeatureSpec, ModelInput

if TYPE_CHECKING:
    from dlrm.retrieval import RetrievalConfig, RetrievalModel

BUNDLE_FORMAT = "robeflow.dlrm.v1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of ``asdict(ModelConfig)`` (lists back to tuples); unknown keys raise ValueError.
    A config written before the history tower existed (no ``history`` key) reads as one with
    the tower off."""
    names = {f.name for f in fields(ModelConfig)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"model config has unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kw = dict(d)
    emb = kw.pop("embedding", {})
    unknown = set(emb) - {f.name for f in fields(EmbeddingConfig)}
    if unknown:
        raise ValueError(f"embedding config has unknown key(s) {sorted(unknown)}")
    hist = kw.pop("history", {"enabled": False})
    unknown = set(hist) - {f.name for f in fields(HistoryConfig)}
    if unknown:
        raise ValueError(f"history config has unknown key(s) {sorted(unknown)}")
    for k in ("bottom_mlp", "top_mlp"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return ModelConfig(embedding=EmbeddingConfig(**emb), history=HistoryConfig(**hist), **kw)


def history_inputs_from_dict(d: dict[str, Any] | None) -> HistoryInputs | None:
    """Inverse of ``asdict(HistoryInputs)`` (None: a model without the history tower)."""
    if not d:
        return None
    unknown = set(d) - {f.name for f in fields(HistoryInputs)}
    if unknown:
        raise ValueError(f"history inputs have unknown key(s) {sorted(unknown)}")
    return HistoryInputs(**{**d, "columns": tuple(d["columns"])})


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
        # where the history tower reads the user history (None: the model has no tower)
        "history": None if model.history_inputs is None else plain(asdict(model.history_inputs)),
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
    model = DLRM(model_config_from_dict(doc["model"]), doc["num_dense"], doc["table_sizes"],
                 history=history_inputs_from_dict(doc.get("history")))
    stored = doc["embedding"]["hash"]
    if model.embedding.hash_constants() != stored:
        raise ValueError(f"hash constants rebuilt from the config {model.embedding.hash_constants()} differ "
                         f"from the bundle's {stored}; the bundle was written by an incompatible version")
    model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
    model.eval()
    return model, doc


@torch.no_grad()
def predict(model: nn.Module, inputs: ModelInput, batch_size: int = 8192, *,
            histories: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Purchase probabilities, float32 of shape (N,), in batches of ``batch_size`` rows.

    A model with the history tower reads the user history: the inputs' own (one per row),
    or ``histories = (values (nnz, C), offsets (U + 1,), rows (N,))``: U histories (newest
    first, as in a ModelInput) and the one each row reads, so a request scoring many
    candidates of one user encodes that history once. ValueError when the model reads a
    history and none is given; a model without the tower ignores any."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    if was_training:   # eval() walks every module: ~0.2 ms a call, paid per served request
        model.eval()
    device = next(model.parameters()).device
    reads_history = getattr(model, "history", None) is not None
    if inputs.has_history and (not reads_history or histories is not None):
        inputs = ModelInput(inputs.dense, inputs.sparse_values, inputs.sparse_offsets, inputs.labels)
    shared = None
    if reads_history and histories is not None:
        values, offsets, rows = (torch.as_tensor(np.asarray(a, dtype=np.int64)).to(device) for a in histories)
        if rows.shape != (inputs.num_rows,) or (rows.numel() and (int(rows.min()) < 0 or
                                                                  int(rows.max()) >= offsets.numel() - 1)):
            raise ValueError(f"histories' rows must be ({inputs.num_rows},) indices of its "
                             f"{offsets.numel() - 1} histories, got shape {tuple(rows.shape)}")
        shared = (values.reshape(-1, len(model.history_inputs.columns)), offsets, rows)
    data = TensorData(inputs, len(model.table_sizes))
    if data.dense.shape[1] != model.num_dense:
        raise ValueError(f"inputs have {data.dense.shape[1]} dense features; the model expects {model.num_dense}")
    out = np.empty(data.num_rows, dtype=np.float32)
    for start in range(0, data.num_rows, batch_size):
        stop = min(start + batch_size, data.num_rows)
        b = data.range_batch(start, stop).to(device)
        args = b.model_args() if shared is None else (b.dense, b.values, b.offsets, shared[0], shared[1],
                                                       shared[2][start:stop])
        out[start:stop] = torch.sigmoid(model(*args).float()).cpu().numpy()
    if was_training:
        model.train()
    return out


# ---------------------------------------------------------------------------------------
# The retrieval bundle: user/context tower + item vectors (dlrm/retrieval.py)
# ---------------------------------------------------------------------------------------

RETRIEVAL_FORMAT = "robeflow.retrieval.v1"
ITEMS = "items.json"   # the catalogue: item_id of each output row, in order


def save_retrieval(model: "RetrievalModel", out_dir: Path, *, spec: FeatureSpec, items: list[str],
                   popularity: torch.Tensor, config: dict, metrics: dict | None = None) -> None:
    """Writes a retrieval bundle: ``model.safetensors`` (tower, item vectors and biases, the
    training popularity), ``items.json`` (item_id per output row) and ``config.json``.

    Args:
        model: a :class:`dlrm.retrieval.RetrievalModel`.
        out_dir: the bundle directory (created if needed; files replaced atomically).
        spec: the context features the tower reads (sparse only), stored under ``"feature_spec"``.
        items: the catalogue's item ids, one per output row.
        popularity: ``(N,)`` training purchases per item (the sampled/in-batch heads' Q).
        config: the run's config as a plain dict, stored under ``"config"``.
        metrics: stored under ``"metrics"``.

    The LSH tables are not stored: :func:`load_retrieval` rebuilds them from the item vectors.
    """
    from safetensors.torch import save_file

    from dlrm.retrieval import RetrievalModel

    if not isinstance(model, RetrievalModel):
        raise TypeError(f"save_retrieval expects a dlrm.retrieval.RetrievalModel, got {type(model).__name__}")
    if len(items) != model.num_items or popularity.numel() != model.num_items:
        raise ValueError(f"{len(items)} item ids and {popularity.numel()} popularities for a model of "
                         f"{model.num_items} items")
    if len(spec.sparse) * model.cfg.embedding.dim != model.tower.mlp[0].in_features:
        raise ValueError(f"feature spec ({len(spec.sparse)} sparse features) does not match the tower")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emb = model.tower.embedding
    doc = {
        "format": RETRIEVAL_FORMAT,
        "model": plain(asdict(model.cfg)),
        "num_items": model.num_items,
        "table_sizes": spec.table_sizes,
        "feature_spec": json.loads(spec.to_json()),
        "embedding": {"backend": model.cfg.embedding.backend, "bytes": emb.num_bytes,
                      "full_bytes": emb.full_bytes, "compression": emb.compression,
                      "hash": emb.hash_constants()},
        "config": plain(config),
        "metrics": plain(metrics or {}),
    }
    state = {f"tower.{k}": v.detach().cpu().contiguous() for k, v in model.tower.state_dict().items()}
    state["items.weight"] = model.head.weight.detach().cpu().contiguous()
    state["items.bias"] = model.head.bias.detach().cpu().contiguous()
    state["items.popularity"] = popularity.detach().cpu().to(torch.int64).contiguous()
    with atomic_file(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": RETRIEVAL_FORMAT})
    with atomic_file(out_dir / ITEMS) as tmp:
        tmp.write_text(json.dumps(list(map(str, items))) + "\n")
    with atomic_file(out_dir / CONFIG) as tmp:          # last: a bundle whose config.json exists is whole
        tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")


def retrieval_config_from_dict(d: dict[str, Any]) -> "RetrievalConfig":
    """Inverse of ``asdict(RetrievalConfig)``; unknown keys raise ValueError."""
    from contract.params import from_dict
    from dlrm.retrieval import RetrievalConfig

    return from_dict(RetrievalConfig, d, "retrieval model config")


def load_retrieval(model_dir: Path) -> tuple["RetrievalModel", list[str], dict]:
    """Reads a bundle written by :func:`save_retrieval` (no pickle anywhere).

    Returns:
        (model in eval mode on CPU with its LSH tables rebuilt, the item ids of its output
        rows, the config.json dict; ``FeatureSpec.from_dict(doc["feature_spec"])`` gives the
        context features the tower reads).
    """
    from safetensors.torch import load_file

    from dlrm.retrieval import LSHHead, RetrievalModel

    model_dir = Path(model_dir)
    for name in (WEIGHTS, CONFIG, ITEMS):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"retrieval bundle {model_dir} lacks {name}")
    doc = json.loads((model_dir / CONFIG).read_text())
    if doc.get("format") != RETRIEVAL_FORMAT:
        raise ValueError(f"{model_dir / CONFIG} has format {doc.get('format')!r}; expected {RETRIEVAL_FORMAT!r}")
    items = json.loads((model_dir / ITEMS).read_text())
    state = load_file(str(model_dir / WEIGHTS))
    if len(items) != doc["num_items"] or state["items.weight"].shape[0] != doc["num_items"]:
        raise ValueError(f"retrieval bundle {model_dir}: {len(items)} item ids and "
                         f"{state['items.weight'].shape[0]} item vectors; config says {doc['num_items']}")
    cfg = retrieval_config_from_dict(doc["model"])
    model = RetrievalModel(doc["table_sizes"], doc["num_items"], cfg, popularity=state["items.popularity"])
    stored = doc["embedding"]["hash"]
    if model.tower.embedding.hash_constants() != stored:
        raise ValueError(f"hash constants rebuilt from the config {model.tower.embedding.hash_constants()} "
                         f"differ from the bundle's {stored}; the bundle was written by an incompatible version")
    model.tower.load_state_dict({k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")})
    with torch.no_grad():
        model.head.weight.copy_(state["items.weight"])
        model.head.bias.copy_(state["items.bias"])
    if isinstance(model.head, LSHHead):
        model.head.layer.index.build(model.head.weight, model.head.bias)
    model.eval()
    return model, items, doc
