"""The transform's numpy core equals the pandas transform it replaced, on random frames.

``reference_model_frame`` is the pandas implementation of ``build_model_frame`` before it
was rebuilt on :func:`features.transform.model_columns` (kept here as the reference);
the serving path (:meth:`OnlineFeatures.columns` -> ``model_columns`` -> ModelInput) is
checked against ``build_model_frame`` on the same rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import categorize
from features.categorize import MISSING, _as_text, stable_hash64
from features.compute import StatsParams
from contract.spec import ModelInput
from features.transform import (PASS_THROUGH, SPARSE_SOURCES, build_model_frame, feature_spec,
                                model_columns, query_terms)


SIZES = {name: 500 + 37 * i for i, name in enumerate(SPARSE_SOURCES)}
STATS = StatsParams(rate_prior=0.03, rate_prior_weight=10.0, days_since_cap=365)
SPEC = feature_spec(SIZES, STATS, max_query_terms=4)
DENSE_COLUMNS = [f.name for f in SPEC.dense if f.name != "price"]
TEXT_COLUMNS = ["device", "country", "item_category_l1", "item_category_l2", "item_category_l3",
                "item_brand", "item_price_band", "user_fav_category_l1_30d"]


# ---- the reference: the pandas transform, as it was ------------------------------------

def ref_hash_ids(values, feature: str, table_size: int) -> np.ndarray:
    text = _as_text(values)
    codes, uniques = pd.factorize(text, sort=False)
    h = stable_hash64(f"{feature}={u}" for u in uniques)
    ids = (h % np.uint64(table_size)).astype(np.int64)
    return ids[codes] if len(codes) else np.zeros(0, dtype=np.int64)


def ref_position_bucket(position: pd.Series) -> pd.Series:
    p = position.to_numpy(dtype=np.int64)
    out = np.where(p <= 10, p.astype(str), np.where(p <= 20, "11-20", np.where(
        p <= 50, "21-50", np.where(p <= 100, "51-100", "101+"))))
    return pd.Series(out, index=position.index, dtype=object)


def ref_numeric(rows: pd.DataFrame, col: str) -> pd.Series:
    if col not in rows.columns:
        return pd.Series(np.nan, index=rows.index, dtype="float64")
    return pd.to_numeric(rows[col], errors="coerce").astype("float64")


def reference_model_frame(rows: pd.DataFrame, spec) -> pd.DataFrame:
    ts = pd.to_datetime(rows["event_timestamp"], utc=True)
    extra, fill = spec.extra, spec.extra["fill"]
    out = pd.DataFrame(index=rows.index)
    for col in PASS_THROUGH:
        if col in rows.columns:
            out[col] = ts if col == "event_timestamp" else rows[col]
    for f in spec.dense:
        if f.name == "price":
            raw = ref_numeric(rows, "price").fillna(ref_numeric(rows, "item_price"))
        else:
            raw = ref_numeric(rows, f.name)
        raw = raw.fillna(fill[f.name]).to_numpy(dtype=np.float64)
        out[f.name] = (np.log1p(np.maximum(raw, 0.0)) if f.transform == "log1p" else raw).astype(np.float32)
    for f in spec.sparse:
        src = extra["sources"][f.name]
        if f.name == "hour":
            values = pd.Series(ts.dt.hour.to_numpy().astype(str), index=rows.index)
        elif f.name == "day_of_week":
            values = pd.Series(ts.dt.dayofweek.to_numpy().astype(str), index=rows.index)
        elif f.name == "position":
            pos = ref_numeric(rows, "position").fillna(extra["default_position"]).clip(lower=1)
            values = ref_position_bucket(pos)
        elif f.multi_hot:
            q = rows[src] if src in rows.columns else pd.Series("", index=rows.index)
            bags = query_terms(q, extra["max_query_terms"])
            lengths = bags.map(len).to_numpy(dtype=np.int64)
            ids = ref_hash_ids([t for bag in bags for t in bag], f.name, f.table_size)
            parts = np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []
            out[f.name] = pd.Series(parts, index=rows.index, dtype=object)
            continue
        else:
            values = rows[src] if src in rows.columns else pd.Series(None, index=rows.index, dtype=object)
        out[f.name] = ref_hash_ids(values, f.name, f.table_size)
    if spec.label in rows.columns:
        out[spec.label] = ref_numeric(rows, spec.label).to_numpy(dtype=np.float32)
    return out.reset_index(drop=True)


# ---- random frames --------------------------------------------------------------------

def random_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Rows as training (offline join) and serving (online read) produce them, with the
    dtypes each path gives: floats with NaN, objects with None, nullable ints, strings."""
    def maybe_missing(values: list, p: float = 0.2) -> list:
        return [None if rng.random() < p else v for v in values]

    ns = rng.integers(-10**17, 3 * 10**18, n)  # nanoseconds, some before 1970
    rows = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "user_id": [f"u{u}" for u in rng.integers(0, 50, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 80, n)],
        "event_timestamp": pd.to_datetime(ns, utc=True),
        "query": maybe_missing([" ".join(rng.choice(["Red", "red", "gift", "KIDS", "sale", "x"], k))
                                for k in rng.integers(0, 7, n)]),
        "position": maybe_missing([int(p) for p in rng.integers(-3, 300, n)]),
        "price": maybe_missing([float(p) for p in rng.uniform(-5, 500, n)], 0.5),
        "item_price": rng.uniform(0, 300, n).round(2),
        "purchased": rng.integers(0, 2, n),
    })
    for col in TEXT_COLUMNS:
        rows[col] = maybe_missing([f"{col[:3]}{v}" for v in rng.integers(0, 9, n)])
    for j, col in enumerate(DENSE_COLUMNS):
        values = rng.exponential(5.0, n)
        kind = (j + int(rng.integers(0, 4))) % 4
        if kind == 0:    # float64 with NaN
            rows[col] = np.where(rng.random(n) < 0.3, np.nan, values)
        elif kind == 1:  # object with None (an online read)
            rows[col] = pd.Series(maybe_missing(values.tolist()), dtype=object)
        elif kind == 2:  # nullable integers
            rows[col] = pd.array(maybe_missing(values.astype(int).tolist()), dtype="Int64")
        else:            # plain ints
            rows[col] = values.astype(np.int64)
    if rng.random() < 0.5:
        rows["device"] = rows["device"].astype("string")            # pd.NA for missing
    if rng.random() < 0.3:
        rows = rows.drop(columns=["price", "query", "item_brand"])  # absent columns
    if rng.random() < 0.5:
        rows.index = rng.permutation(n) + 1000                        # a non-default index
    return rows


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    for col in want.columns:
        if col == "query":
            assert [b.tolist() for b in got[col]] == [b.tolist() for b in want[col]]
        else:
            pd.testing.assert_series_equal(got[col], want[col], check_exact=True, obj=col)


@pytest.mark.parametrize("seed", range(12))
def test_build_model_frame_equals_the_pandas_reference_on_random_frames(seed):
    rng = np.random.default_rng(seed)
    for n in (1, 7, 100, 700):
        rows = random_rows(rng, n)
        assert_frames_equal(build_model_frame(rows, SPEC), reference_model_frame(rows, SPEC))


def test_large_inputs_take_the_pandas_path_and_agree(monkeypatch):
    rng = np.random.default_rng(99)
    rows = random_rows(rng, 300)
    small = build_model_frame(rows, SPEC)
    monkeypatch.setattr(categorize, "SMALL_INPUT", 10)  # every hash_ids call: the factorising path
    assert_frames_equal(build_model_frame(rows, SPEC), small)
    assert_frames_equal(small, reference_model_frame(rows, SPEC))


def test_cached_hashes_equal_fresh_ones_and_the_cache_is_bounded(monkeypatch):
    values = ["mobile", None, "ünïcode", "", float("nan"), "mobile", pd.NA]
    want = ref_hash_ids(pd.Series(values, dtype=object), "device", 97)
    monkeypatch.setattr(categorize, "CACHE_SIZE", 3)
    monkeypatch.setattr(categorize, "_HASHES", {})
    for _ in range(3):  # cold, then from the cache (which is emptied when full)
        np.testing.assert_array_equal(categorize.hash_ids(values, "device", 97), want)
        assert len(categorize._HASHES["device"]) <= 3
    # values that are not plain strings go through pandas' text conversion
    mixed = [3, 3.0, b"q", True, np.str_("z"), None]
    np.testing.assert_array_equal(categorize.hash_ids(mixed, "brand", 1000),
                                  ref_hash_ids(pd.Series(mixed, dtype=object), "brand", 1000))
    assert categorize.hash_ids([MISSING], "brand", 1000)[0] == categorize.hash_ids([None], "brand", 1000)[0]


def test_serving_columns_give_the_model_input_of_the_training_transform(site):
    """Online columns -> model_columns -> ModelInput equals online rows -> build_model_frame
    -> ModelInput.from_frame (the training path), for known and unknown entities."""
    from features.online import OnlineFeatures

    online = OnlineFeatures(site.repo, site.spec, reader="lean")
    users = [*site.events["user_id"].unique()[:3].tolist(), "nobody"]
    items = [*site.events["item_id"].unique()[:9].tolist(), "no-such-item"]
    contexts = [{"query": "Red gift red", "device": "mobile", "hour": 23}, {},
                {"country": "FR", "timestamp": "1969-07-20T20:17:00Z", "position": 12, "price": 3.5},
                {"query": "", "position": [1, 2, 30, 70, 200, None, 4, 5, 6, 7]}]
    for user, context in zip(users, contexts):
        cols = online.columns(user, items, context)
        got = ModelInput.from_columns(model_columns(cols, len(items), site.spec), site.spec)
        want = ModelInput.from_frame(build_model_frame(online.rows(user, items, context), site.spec), site.spec)
        for field in ("dense", "sparse_values", "sparse_offsets"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


@pytest.mark.parametrize("seed", range(4))
def test_model_input_from_columns_equals_from_frame(seed):
    rng = np.random.default_rng(100 + seed)
    for n in (1, 50, 400):
        rows = random_rows(rng, n)
        frame = build_model_frame(rows, SPEC)
        columns = {c: rows[c].to_numpy() for c in rows.columns if c != "event_timestamp"}
        columns["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True).to_numpy(dtype="datetime64[ns]")
        got = ModelInput.from_columns(model_columns(columns, n, SPEC), SPEC)
        want = ModelInput.from_frame(frame, SPEC)
        for field in ("dense", "sparse_values", "sparse_offsets", "labels"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
