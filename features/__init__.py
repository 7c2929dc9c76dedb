"""The Feast feature repo and the categorisation of raw values into ids."""

from features.categorize import hash_bags, hash_ids
from features.online import OnlineFeatures, online_model_input
from contract.spec import DenseFeature, FeatureSpec, ModelInput, SparseFeature
from features.transform import build_model_frame, feature_spec

__all__ = ["DenseFeature", "FeatureSpec", "ModelInput", "OnlineFeatures", "SparseFeature",
           "build_model_frame", "feature_spec", "hash_bags", "hash_ids", "online_model_input"]
