"""The Feast feature repo and the categorisation of raw values into ids."""

from features.spec import DenseFeature, FeatureSpec, ModelInput, SparseFeature

__all__ = ["DenseFeature", "FeatureSpec", "ModelInput", "SparseFeature"]
