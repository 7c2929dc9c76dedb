"""Serving: the ranker (bundle + features -> scores), the batcher, the thin KServe adapter.

Names resolve on first use, so importing ``serving`` imports neither kserve nor torch.
"""

from importlib import import_module

_EXPORTS = {
    "Ranker": "serving.ranker", "load_production": "serving.ranker", "Batcher": "serving.batcher",
    "RobeflowModel": "serving.predictor", "ServeConfig": "serving.config",
    "ScoreRequest": "serving.requests",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
