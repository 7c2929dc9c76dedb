"""Online store reads: the latest offline values, and the same model input as training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.categorize import hash_ids
from features.online import OnlineFeatures, online_model_input
from features.repo import historical_rows, open_store
from contract.spec import FeatureSpec, ModelInput
from features.transform import build_model_frame

CONTEXT = {"query": "red gift", "device": "app_ios", "country": "FR", "position": 3}


@pytest.fixture(scope="module")
def spec(built) -> FeatureSpec:
    return FeatureSpec.load(built.model_input / "feature_spec.json")


@pytest.fixture(scope="module")
def online(built, spec) -> OnlineFeatures:
    return OnlineFeatures(built.repo, spec)


@pytest.fixture(scope="module")
def sample(events):
    """Six (user, items) requests drawn from the data."""
    rng = np.random.default_rng(3)
    users = rng.choice(events["user_id"].unique(), 6, replace=False)
    items = events["item_id"].unique()
    return [(str(u), [str(i) for i in rng.choice(items, 5, replace=False)]) for u in users]


def assert_same_values(a: pd.DataFrame, b: pd.DataFrame, cols) -> None:
    for c in cols:
        x, y = a[c].tolist(), b[c].tolist()
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in x + y):   # the list views' fields
            x, y = ([None if v is None else list(v) for v in vs] for vs in (x, y))
            assert [v is None for v in x] == [v is None for v in y], c
            for u, v in zip(x, y):
                assert u == pytest.approx(v) if c.endswith("rate_30d_list") else u == v, c
        elif all(isinstance(v, str) or v is None for v in x + y):
            assert x == y, c
        else:
            np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), err_msg=c)


def test_online_values_equal_offline_values_at_the_latest_stamp(online, built, sample):
    store = open_store(built.repo)
    snapshot = pd.Timestamp(built.result.snapshot)
    feature_cols = [f.name for fv in online.service.feature_view_projections for f in fv.features]
    for user, items in sample:
        got = online.rows(user, items, {**CONTEXT, "timestamp": snapshot})
        entity = got[["user_id", "item_id", "event_timestamp"]]
        want = historical_rows(store, entity)
        assert_same_values(got, want, feature_cols)
        # and both equal the snapshot rows of the offline tables themselves
        users = pd.read_parquet(built.repo / "store/offline/user_daily_stats.parquet")
        latest = users[(users["user_id"] == user) & (users["event_timestamp"] == snapshot)]
        assert got["user_offers_30d"].iloc[0] == latest["user_offers_30d"].iloc[0]


def test_model_input_is_identical_from_either_path(online, built, spec, sample):
    store = open_store(built.repo)
    snapshot = pd.Timestamp(built.result.snapshot)
    for user, items in sample:
        mi_online = online.model_input(user, items, {**CONTEXT, "timestamp": snapshot})
        rows = online.rows(user, items, {**CONTEXT, "timestamp": snapshot})
        context = rows[["user_id", "item_id", "event_timestamp", "query", "device", "country",
                        "position", "price"]]
        mi_offline = ModelInput.from_frame(build_model_frame(historical_rows(store, context), spec), spec)
        for field in ("dense", "sparse_values", "sparse_offsets"):
            np.testing.assert_array_equal(getattr(mi_online, field), getattr(mi_offline, field), err_msg=field)
        assert mi_online.num_rows == len(items)


def test_unknown_users_and_items_get_filled_features_and_hashed_ids(online, spec, built):
    frame = online.frame("nobody-123", ["new-item", "i1"], {"device": "mobile"})
    fill = spec.extra["fill"]
    assert frame["user_offers_30d"].tolist() == [0.0, 0.0]
    assert frame["user_purchase_rate_30d"].tolist() == pytest.approx([fill["user_purchase_rate_30d"]] * 2)
    assert frame["item_offers_30d"][0] == 0.0 and frame["item_offers_30d"][1] > 0.0
    size = {f.name: f.table_size for f in spec.sparse}
    assert frame["user"].tolist() == hash_ids(["nobody-123"] * 2, "user", size["user"]).tolist()
    mi = online_model_input(built.repo, spec, "nobody-123", ["new-item"], {})
    assert mi.num_rows == 1 and len(mi.sparse_offsets) == len(spec.sparse) + 1


def test_bad_context_is_refused(online):
    with pytest.raises(ValueError, match="colour"):
        online.rows("u1", ["i1"], {"colour": "red"})
    with pytest.raises(ValueError, match="2 values for 1 items"):
        online.rows("u1", ["i1"], {"price": [1.0, 2.0]})
    with pytest.raises(ValueError, match="0..23"):
        online.rows("u1", ["i1"], {"hour": 24})
