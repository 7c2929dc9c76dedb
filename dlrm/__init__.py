"""DLRM: configs, embedding backends, arches, training loop, metrics."""

from dlrm.bundle import load_model, predict, save_model
from dlrm.configs import EmbeddingConfig, EvaluateConfig, ModelConfig, OptimConfig, TrainConfig
from dlrm.model import DLRM

__all__ = ["DLRM", "EmbeddingConfig", "EvaluateConfig", "ModelConfig", "OptimConfig", "TrainConfig",
           "load_model", "predict", "save_model"]
