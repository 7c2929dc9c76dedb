"""Feature rows -> model-ready columns: the one transform training and serving share.

``build_model_frame`` takes rows that hold the raw event/context columns (user_id, item_id,
event_timestamp, query, device, country, and optionally position, price, purchased,
event_id) next to the ``dlrm_v1`` feature values, whether they came from the offline
point-in-time join (training) or from the online store (serving), and returns the
model-ready table that :meth:`features.spec.ModelInput.from_frame` reads. Everything it
needs (table sizes, fill values) is in the :class:`~features.spec.FeatureSpec`, so a server
needs only ``feature_spec.json``.

Missing feature values (an entity the store has never seen, an item on its first day)
are filled with the values of an entity without history: counts 0, rates the prior,
days since purchase the cap; categorical values hash as ``<missing>``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from features.categorize import MISSING, hash_bags, hash_ids
from features.compute import StatsParams
from features.spec import DenseFeature, FeatureSpec, SparseFeature

PASS_THROUGH = ("event_id", "event_timestamp", "user_id", "item_id")
NO_QUERY = "<empty>"       # the single term of an empty query (browsing, not searching)
FEATURE_SERVICE = "dlrm_v1"

# dense feature -> transform; the feature views' fields, plus the offer price
DENSE: tuple[tuple[str, str], ...] = (
    ("user_offers_7d", "log1p"),
    ("user_purchases_7d", "log1p"),
    ("user_offers_30d", "log1p"),
    ("user_purchases_30d", "log1p"),
    ("user_purchase_rate_30d", "identity"),
    ("user_avg_price_paid_30d", "log1p"),
    ("user_days_since_purchase", "log1p"),
    ("item_offers_7d", "log1p"),
    ("item_purchases_7d", "log1p"),
    ("item_purchase_rate_7d", "identity"),
    ("item_offers_30d", "log1p"),
    ("item_purchases_30d", "log1p"),
    ("item_purchase_rate_30d", "identity"),
    ("price", "log1p"),   # the offer's price; the item's last known price where not given
)

# sparse feature -> the row column its values come from ("query" is multi-hot)
SPARSE_SOURCES: dict[str, str] = {
    "user": "user_id",
    "item": "item_id",
    "category_l1": "item_category_l1",
    "category_l2": "item_category_l2",
    "category_l3": "item_category_l3",
    "brand": "item_brand",
    "price_band": "item_price_band",
    "fav_category_l1": "user_fav_category_l1_30d",
    "device": "device",
    "country": "country",
    "position": "position",
    "hour": "event_timestamp",
    "day_of_week": "event_timestamp",
    "query": "query",
}
MULTI_HOT = frozenset({"query"})


def feature_spec(table_sizes: Mapping[str, int], stats: StatsParams, max_query_terms: int = 8,
                 default_position: int = 1, extra: Mapping | None = None) -> FeatureSpec:
    """The spec of the ``dlrm_v1`` model input.

    Args:
        table_sizes: virtual table size of every sparse feature (keys of ``SPARSE_SOURCES``).
        stats: the smoothing/caps the feature tables were computed with (fill values).
        max_query_terms: query terms kept per row (the first distinct ones).
        default_position: position scored when the caller gives none (serving).
        extra: more provenance to record (e.g. the split windows).
    """
    unknown = sorted(set(table_sizes) - set(SPARSE_SOURCES))
    absent = [f for f in SPARSE_SOURCES if f not in table_sizes]
    if unknown or absent:
        raise ValueError(f"table sizes must name exactly the sparse features {list(SPARSE_SOURCES)}; "
                         f"unknown {unknown}, missing {absent}")
    bad = {k: v for k, v in table_sizes.items() if int(v) < 1}
    if bad:
        raise ValueError(f"table sizes must be >= 1, got {bad}")
    if max_query_terms < 1:
        raise ValueError(f"max_query_terms must be >= 1, got {max_query_terms}")
    fill = {name: 0.0 for name, _ in DENSE}
    fill.update({n: stats.rate_prior for n, _ in DENSE if "_rate_" in n})
    fill["user_days_since_purchase"] = float(stats.days_since_cap)
    return FeatureSpec(
        dense=tuple(DenseFeature(n, t) for n, t in DENSE),  # type: ignore[arg-type]
        sparse=tuple(SparseFeature(n, int(table_sizes[n]), multi_hot=n in MULTI_HOT)
                     for n in SPARSE_SOURCES),
        label="purchased",
        version=FEATURE_SERVICE,
        extra={
            "feature_service": FEATURE_SERVICE,
            "hash": "blake2b(digest_size=8) of UTF-8 'feature=value', little-endian, mod table_size",
            "missing_token": MISSING,
            "empty_query_token": NO_QUERY,
            "fill": fill,                      # raw (untransformed) value of a missing dense feature
            "max_query_terms": int(max_query_terms),
            "default_position": int(default_position),
            "sources": dict(SPARSE_SOURCES),
            **dict(extra or {}),
        },
    )


def position_bucket(position: pd.Series) -> pd.Series:
    """Ranks 1..10 stay themselves; deeper ranks fall into 11-20, 21-50, 51-100, 101+."""
    p = position.to_numpy(dtype=np.int64)
    out = np.where(p <= 10, p.astype(str), np.where(p <= 20, "11-20", np.where(
        p <= 50, "21-50", np.where(p <= 100, "51-100", "101+"))))
    return pd.Series(out, index=position.index, dtype=object)


def query_terms(query: pd.Series, max_terms: int) -> pd.Series:
    """Search strings -> lists of their first ``max_terms`` distinct lower-case terms."""
    split = query.astype(object).where(query.notna(), "").astype(str).str.lower().str.split()
    return split.map(lambda ts: list(dict.fromkeys(ts))[:max_terms] or [NO_QUERY])


def _numeric(rows: pd.DataFrame, col: str) -> pd.Series:
    if col not in rows.columns:
        return pd.Series(np.nan, index=rows.index, dtype="float64")
    return pd.to_numeric(rows[col], errors="coerce").astype("float64")


def build_model_frame(rows: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Rows of events (or serving candidates) with feature values -> the model-ready table.

    Args:
        rows: one row per event with ``user_id``, ``item_id``, ``event_timestamp``
            (tz-aware) and optionally ``query``, ``device``, ``country``, ``position``,
            ``price``, ``purchased``, ``event_id``, and the ``dlrm_v1`` feature columns
            (absent or null where the store has no value).
        spec: the feature spec (:func:`feature_spec`), which holds sizes and fill values.

    Returns:
        The pass-through columns present in ``rows`` (event_id, event_timestamp, user_id,
        item_id), one float32 column per dense feature (transformed), one int64 id column
        per single-hot feature, an id-array column per multi-hot feature, and the label
        (float32) when ``rows`` has it; same row order as ``rows``.
    """
    for col in ("user_id", "item_id", "event_timestamp"):
        if col not in rows.columns:
            raise ValueError(f"feature rows lack column {col!r}")
    ts = pd.to_datetime(rows["event_timestamp"], utc=True)
    if ts.isna().any():
        raise ValueError("feature rows hold missing event_timestamp values")
    extra = spec.extra
    fill: dict[str, float] = extra["fill"]
    out = pd.DataFrame(index=rows.index)
    for col in PASS_THROUGH:
        if col in rows.columns:
            out[col] = ts if col == "event_timestamp" else rows[col]

    for f in spec.dense:
        if f.name == "price":
            # the offer's price; where not given, the item's last known price; else the fill
            raw = _numeric(rows, "price").fillna(_numeric(rows, "item_price"))
        else:
            raw = _numeric(rows, f.name)
        raw = raw.fillna(fill[f.name]).to_numpy(dtype=np.float64)
        out[f.name] = (np.log1p(np.maximum(raw, 0.0)) if f.transform == "log1p" else raw).astype(np.float32)

    for f in spec.sparse:
        src = extra["sources"][f.name]
        if f.name == "hour":
            values = pd.Series(ts.dt.hour.to_numpy().astype(str), index=rows.index)
        elif f.name == "day_of_week":
            values = pd.Series(ts.dt.dayofweek.to_numpy().astype(str), index=rows.index)
        elif f.name == "position":
            pos = _numeric(rows, "position").fillna(extra["default_position"]).clip(lower=1)
            values = position_bucket(pos)
        elif f.multi_hot:
            q = rows[src] if src in rows.columns else pd.Series("", index=rows.index)
            out[f.name] = hash_bags(query_terms(q, extra["max_query_terms"]), f.name, f.table_size)
            continue
        else:
            values = rows[src] if src in rows.columns else pd.Series(None, index=rows.index, dtype=object)
        out[f.name] = hash_ids(values, f.name, f.table_size)

    if spec.label in rows.columns:
        out[spec.label] = _numeric(rows, spec.label).to_numpy(dtype=np.float32)
    return out.reset_index(drop=True)
