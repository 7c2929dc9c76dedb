"""The shared transform: feature rows -> model-ready columns, fills as for a new entity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.categorize import MISSING, hash_ids
from features.compute import StatsParams
from contract.spec import FeatureSpec, ModelInput
from features.transform import (NO_QUERY, SPARSE_SOURCES, build_model_frame, feature_spec,
                                position_bucket, query_terms)

SIZES = {name: 1000 + 17 * i for i, name in enumerate(SPARSE_SOURCES)}
STATS = StatsParams(rate_prior=0.1, rate_prior_weight=10.0, days_since_cap=100)


@pytest.fixture()
def spec() -> FeatureSpec:
    return feature_spec(SIZES, STATS, max_query_terms=3)


def bare_rows(n: int = 2) -> pd.DataFrame:
    """Candidate rows with context only: no feature values at all."""
    return pd.DataFrame({
        "user_id": ["u1"] * n,
        "item_id": [f"i{i}" for i in range(n)],
        "event_timestamp": pd.Timestamp("2026-10-05 13:30", tz="UTC"),
        "query": ["Red shoe red big extra", None][:n],
        "device": ["mobile"] * n,
        "country": ["DE"] * n,
    })


def test_missing_features_are_filled_as_an_entity_without_history(spec):
    out = build_model_frame(bare_rows(), spec)
    assert out["user_offers_30d"].tolist() == [0.0, 0.0]
    assert out["user_purchase_rate_30d"].tolist() == pytest.approx([0.1, 0.1])
    assert out["user_days_since_purchase"].tolist() == pytest.approx([np.log1p(100)] * 2)
    assert out["price"].tolist() == [0.0, 0.0]
    assert (out["brand"] == hash_ids([MISSING], "brand", SIZES["brand"])[0]).all()
    assert (out["position"] == hash_ids(["1"], "position", SIZES["position"])[0]).all()
    assert out["hour"].tolist() == hash_ids(["13", "13"], "hour", SIZES["hour"]).tolist()
    assert out["day_of_week"][0] == hash_ids(["0"], "day_of_week", SIZES["day_of_week"])[0]  # a Monday
    mi = ModelInput.from_frame(out, spec)
    assert mi.num_rows == 2 and mi.labels is None


def test_an_offer_without_a_price_of_an_unknown_item_is_scored_at_the_typical_price():
    spec = feature_spec(SIZES, STATS, price_fill=24.99)
    rows = bare_rows()
    out = build_model_frame(rows, spec)
    assert out["price"].tolist() == pytest.approx([np.log1p(24.99)] * 2)
    rows["item_price"] = [9.99, np.nan]             # the item's last known price comes first
    assert build_model_frame(rows, spec)["price"].tolist() == pytest.approx([np.log1p(9.99), np.log1p(24.99)])
    with pytest.raises(ValueError, match="price_fill"):
        feature_spec(SIZES, STATS, price_fill=float("nan"))


def test_values_become_transformed_dense_and_hashed_ids(spec):
    rows = bare_rows().assign(user_offers_30d=[3, None], item_price=[9.0, 4.0], price=[None, 2.5],
                              item_brand=["acme", None], purchased=[1, 0], event_id=["a", "b"])
    out = build_model_frame(rows, spec)
    assert out["user_offers_30d"].tolist() == pytest.approx([np.log1p(3), 0.0])
    assert out["price"].tolist() == pytest.approx([np.log1p(9.0), np.log1p(2.5)])  # offer price first
    assert out["brand"][0] == hash_ids(["acme"], "brand", SIZES["brand"])[0]
    assert out["user"].tolist() == hash_ids(["u1", "u1"], "user", SIZES["user"]).tolist()
    assert out["purchased"].dtype == np.float32 and out["event_id"].tolist() == ["a", "b"]
    assert list(out.columns[:4]) == ["event_id", "event_timestamp", "user_id", "item_id"]


def test_query_terms_are_distinct_lower_case_capped_and_empty_has_a_token(spec):
    assert query_terms(pd.Series(["Red shoe red big extra", "", None]), 3).tolist() == [
        ["red", "shoe", "big"], [NO_QUERY], [NO_QUERY]]
    out = build_model_frame(bare_rows(), spec)
    assert [list(b) for b in out["query"]] == [
        hash_ids(["red", "shoe", "big"], "query", SIZES["query"]).tolist(),
        hash_ids([NO_QUERY], "query", SIZES["query"]).tolist()]


def test_position_buckets():
    got = position_bucket(pd.Series([1, 10, 11, 20, 21, 50, 51, 100, 101, 5000])).tolist()
    assert got == ["1", "10", "11-20", "11-20", "21-50", "21-50", "51-100", "51-100", "101+", "101+"]


def test_rows_without_keys_are_refused(spec):
    with pytest.raises(ValueError, match="'item_id'"):
        build_model_frame(bare_rows().drop(columns="item_id"), spec)


def test_spec_names_every_table_and_round_trips(spec, tmp_path):
    assert [f.name for f in spec.sparse if f.multi_hot] == ["query"]
    assert spec.table_sizes == [SIZES[n] for n in SPARSE_SOURCES]
    spec.save(tmp_path / "s.json")
    assert FeatureSpec.load(tmp_path / "s.json") == spec
    with pytest.raises(ValueError, match="brand"):
        feature_spec({k: v for k, v in SIZES.items() if k != "brand"}, STATS)
    with pytest.raises(ValueError, match=">= 1"):
        feature_spec({**SIZES, "hour": 0}, STATS)
