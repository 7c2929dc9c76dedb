"""The KServe predictor, its registry and its manifests.

Names resolve on first use, so ``import serving.registry`` (push does) imports neither
kserve nor torch.
"""

from importlib import import_module

_EXPORTS = {
    "Registry": "serving.registry", "load_production": "serving.predictor",
    "RobeflowModel": "serving.predictor", "Ranker": "serving.predictor",
    "ScoreRequest": "serving.requests", "lean_online_features": "serving.online",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
