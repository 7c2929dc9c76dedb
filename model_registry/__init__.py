"""Versioned model bundles and the production pointer (used by push, monitor and serving)."""

from model_registry.registry import Registry

__all__ = ["Registry"]
