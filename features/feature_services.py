"""Feast feature services: the versioned sets of features a model reads.

A new model version that reads different features gets a new service (``dlrm_v2``);
``dlrm_v1`` stays as long as a model trained on it is served.
"""

from feast import FeatureService

from feature_views import item_attributes, item_daily_stats, user_category_stats, user_daily_stats, user_history

dlrm_v1 = FeatureService(
    name="dlrm_v1",
    features=[user_daily_stats, item_daily_stats, item_attributes, user_category_stats],
    description="Everything the robeflow DLRM v1 reads from the feature store (the user x category "
                "view as arrays by category: a model reads the entry of the candidate item's category).",
    tags={"model": "dlrm", "version": "1"},
)

user_history_v1 = FeatureService(
    name="user_history_v1",
    features=[user_history],
    description="A user's last events (arrays, newest first), for the history tower.",
    tags={"model": "dlrm", "part": "history", "version": "1"},
)
