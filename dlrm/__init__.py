"""DLRM: configs, embedding backends, arches, training loop, metrics.

Names resolve on first use, so ``import dlrm.configs`` (the CLI does) does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "save_model": "dlrm.bundle", "load_model": "dlrm.bundle", "predict": "dlrm.bundle",
    "DLRM": "dlrm.model", "train_model": "dlrm.train",
    "EmbeddingConfig": "dlrm.configs", "ModelConfig": "dlrm.configs", "OptimConfig": "dlrm.configs",
    "TrainConfig": "dlrm.configs", "EvaluateConfig": "dlrm.configs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dlrm' has no attribute {name!r}")
