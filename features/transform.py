"""Feature rows -> model-ready columns: the one transform training and serving share.

``build_model_frame`` takes rows that hold the raw event/context columns (user_id, item_id,
event_timestamp, query, device, country, and optionally position, price, purchased,
event_id) next to the ``dlrm_v1`` feature values, whether they came from the offline
point-in-time join (training) or from the online store (serving), and returns the
model-ready table that :meth:`contract.spec.ModelInput.from_frame` reads. Everything it
needs (table sizes, fill values) is in the :class:`~contract.spec.FeatureSpec`, so a server
needs only ``feature_spec.json``.

Missing feature values (an entity the store has never seen, an item on its first day)
are filled with the values of an entity without history: counts 0, rates the prior,
days since purchase the cap; categorical values hash as ``<missing>``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from features.categorize import MISSING, SMALL_INPUT, bag_ids, hash_ids
from features.compute import StatsParams
from features.sql import UCAT_LEVELS, UCAT_ROW_COLUMNS, UCAT_STATS
from contract.spec import DenseFeature, FeatureSpec, HistoryColumn, HistorySpec, SparseFeature

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
    # the user's offers, purchases and rate in the item's category_l1 and category_l2
    # (the user x category view's entry of that category)
    *((name, "identity" if "_rate_" in name else "log1p") for name in UCAT_ROW_COLUMNS),
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

# the user history's list columns (the user_history view's fields, same names) -> the sparse
# feature whose hash and table their ids share (None: integers kept as they are)
HISTORY_IDS: dict[str, str | None] = {
    "hist_item": "item",             # item ids, as the candidate item's
    "hist_cat": "category_l1",       # the event's category_l1, as the candidate's
    "hist_action": None,             # 0 offered, 1 purchased
    "hist_days": None,               # days between the event's day and the row's day (>= 1)
}


def feature_spec(table_sizes: Mapping[str, int], stats: StatsParams, max_query_terms: int = 8,
                 default_position: int = 1, extra: Mapping | None = None, history_len: int = 0,
                 price_fill: float = 0.0) -> FeatureSpec:
    """The spec of the ``dlrm_v1`` model input.

    Args:
        table_sizes: virtual table size of every sparse feature (keys of ``SPARSE_SOURCES``).
        stats: the smoothing/caps the feature tables were computed with (fill values).
        max_query_terms: query terms kept per row (the first distinct ones).
        default_position: position scored when the caller gives none (serving).
        extra: more provenance to record (e.g. the split windows).
        history_len: > 0: the rows carry the user's last ``history_len`` events as the
            list columns of :data:`HISTORY_IDS` (``spec.history``); 0: no history.
        price_fill: the offer price of a row that gives none and whose item has no known
            price (an item the store does not know): a typical price, so such an offer does
            not look free.
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
    if history_len < 0:
        raise ValueError(f"history_len must be >= 0, got {history_len}")
    fill = {name: 0.0 for name, _ in DENSE}
    fill.update({n: stats.rate_prior for n, _ in DENSE if "_rate_" in n})
    fill["user_days_since_purchase"] = float(stats.days_since_cap)
    if not (np.isfinite(price_fill) and price_fill >= 0):
        raise ValueError(f"price_fill must be a finite price >= 0, got {price_fill}")
    fill["price"] = float(price_fill)
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
        history=HistorySpec(int(history_len), tuple(HistoryColumn(n, t) for n, t in HISTORY_IDS.items()))
        if history_len > 0 else None,
    )


def position_bucket(position: pd.Series) -> pd.Series:
    """Ranks 1..10 stay themselves; deeper ranks fall into 11-20, 21-50, 51-100, 101+."""
    return pd.Series(_bucket_texts(position.to_numpy(dtype=np.int64)), index=position.index, dtype=object)


def _bucket_texts(p: np.ndarray) -> list[str]:
    """(n,) int64 positions -> their bucket names (see :func:`position_bucket`)."""
    out = np.where(p <= 10, p.astype(str), np.where(p <= 20, "11-20", np.where(
        p <= 50, "21-50", np.where(p <= 100, "51-100", "101+"))))
    return out.tolist()


def query_terms(query: pd.Series, max_terms: int) -> pd.Series:
    """Search strings -> lists of their first ``max_terms`` distinct lower-case terms."""
    split = query.astype(object).where(query.notna(), "").astype(str).str.lower().str.split()
    return split.map(lambda ts: list(dict.fromkeys(ts))[:max_terms] or [NO_QUERY])


def _query_bag_ids(query: np.ndarray | list, max_terms: int, feature: str, table_size: int) -> list[np.ndarray]:
    """Search strings -> one int64 id array per row (:func:`query_terms`, hashed). A query
    repeated across rows (all candidates of a request share one) is split and hashed once
    and its rows share the id array; values other than plain strings or missing ones go
    through :func:`query_terms` itself."""
    if len(query) > SMALL_INPUT:
        return bag_ids(query_terms(pd.Series(list(query), dtype=object), max_terms).tolist(), feature, table_size)
    memo: dict[str, np.ndarray] = {}
    out = []
    for q in query:
        if q is None or q is pd.NA or (type(q) is float and q != q):
            q = ""
        elif type(q) is not str:
            return bag_ids(query_terms(pd.Series(list(query), dtype=object), max_terms).tolist(),
                           feature, table_size)
        ids = memo.get(q)
        if ids is None:
            terms = list(dict.fromkeys(q.lower().split()))[:max_terms] or [NO_QUERY]
            ids = memo[q] = hash_ids(terms, feature, table_size)
        out.append(ids)
    return out


def _numeric(values: np.ndarray | list | None, n: int) -> np.ndarray:
    """(n,) float64 of a column as ``pd.to_numeric(errors="coerce")`` reads it; NaN where
    the column is absent (None)."""
    if values is None:
        return np.full(n, np.nan)
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values.astype(np.float64)
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if set(map(type, items)) <= {float, int, type(None)}:
        return np.array(items, dtype=np.float64)  # None -> NaN, as to_numeric does
    return pd.to_numeric(pd.Series(items, dtype=object), errors="coerce").astype("float64").to_numpy()


def _utc_hour_and_weekday(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) datetime64 (UTC, naive) -> (hour 0..23, day of week 0 = Monday), int64."""
    ns = ts.astype("datetime64[ns]").view(np.int64)
    day = ns // 86_400_000_000_000                     # floor: right before 1970 too
    hour = (ns - day * 86_400_000_000_000) // 3_600_000_000_000
    return hour, (day + 3) % 7                          # 1970-01-01 was a Thursday (3)


_INT_TEXT = [str(i) for i in range(24)]


def _dense_columns(raw_of, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Dense feature name -> (n,) float32 transformed values; ``raw_of(column)`` gives a
    column's (n,) float64 raw values with NaN where missing or absent."""
    fill: dict[str, float] = spec.extra["fill"]
    out: dict[str, np.ndarray] = {}
    for f in spec.dense:
        raw = raw_of(f.name)
        if f.name == "price":
            # the offer's price; where not given, the item's last known price; else the fill
            raw = np.where(np.isnan(raw), raw_of("item_price"), raw)
        raw = np.where(np.isnan(raw), fill[f.name], raw)
        out[f.name] = (np.log1p(np.maximum(raw, 0.0)) if f.transform == "log1p" else raw).astype(np.float32)
    return out


def user_category_values(columns: Mapping[str, np.ndarray | list], n: int) -> dict[str, list]:
    """The user x category entries of each row's item category, from the view's lists.

    ``columns`` holds, per level, ``ucat_<level>_keys`` (a list of categories per row, None
    where the store has no row), the parallel ``ucat_<level>_<stat>_list`` lists, and the
    row's ``item_category_<level>``; returns ``ucat_<level>_<stat>`` -> n values, None where
    the category is missing or not listed (the user had no offers in it), as
    :func:`features.sql.model_rows` picks them in the engine. {} when ``columns`` holds no
    lists (rows from the engine hold the picked values)."""
    out: dict[str, list] = {}
    for lv in UCAT_LEVELS:
        keys = columns.get(f"ucat_{lv}_keys")
        if keys is None:
            continue
        cats = columns.get(f"item_category_{lv}")
        cats = [None] * n if cats is None else cats
        where: dict[int, dict] = {}     # one index per distinct list object (a request shares one)
        pos = []
        for k, c in zip(keys, cats):
            if k is None or c is None or (type(c) is float and c != c) or (type(k) is float and k != k):
                pos.append(-1)
                continue
            index = where.get(id(k))
            if index is None:
                index = where[id(k)] = {v: j for j, v in enumerate(k)}
            pos.append(index.get(c, -1))
        for st in UCAT_STATS:
            values = columns[f"ucat_{lv}_{st}_list"]
            out[f"ucat_{lv}_{st}"] = [values[i][p] if p >= 0 else None for i, p in enumerate(pos)]
    return out


def model_columns(columns: Mapping[str, np.ndarray | list], n: int, spec: FeatureSpec) -> dict[str, object]:
    """The transform's core on plain columns; :func:`build_model_frame` and the server
    both call it, so training and serving compute every feature with the same code.

    Args:
        columns: column name -> (n,) values (numpy array or list), as in the rows of
            :func:`build_model_frame`; ``event_timestamp`` is a (n,) datetime64 array in
            UTC (naive). Absent columns are missing values.
        n: the number of rows.
        spec: the feature spec.

    Returns:
        Feature name -> (n,) float32 (dense, transformed), (n,) int64 ids (single-hot), a
        list of n int64 id arrays (multi-hot); and the label (float32) when present.
    """
    extra = spec.extra
    picked = user_category_values(columns, n)
    if picked:
        columns = {**columns, **picked}
    out: dict[str, object] = _dense_columns(lambda name: _numeric(columns.get(name), n), spec)

    hour, weekday = _utc_hour_and_weekday(np.asarray(columns["event_timestamp"]))
    for f in spec.sparse:
        src = extra["sources"][f.name]
        if f.name == "hour":
            values: list | np.ndarray = [_INT_TEXT[h] for h in hour.tolist()]
        elif f.name == "day_of_week":
            values = [_INT_TEXT[d] for d in weekday.tolist()]
        elif f.name == "position":
            pos = _numeric(columns.get("position"), n)
            pos = np.maximum(np.where(np.isnan(pos), float(extra["default_position"]), pos), 1.0)
            values = _bucket_texts(pos.astype(np.int64))
        elif f.multi_hot:
            query = columns.get(src)
            out[f.name] = _query_bag_ids([""] * n if query is None else query, extra["max_query_terms"],
                                         f.name, f.table_size)
            continue
        else:
            col = columns.get(src)
            values = [None] * n if col is None else col
        out[f.name] = hash_ids(values, f.name, f.table_size)

    out.update(_history_lists(columns, n, spec))
    if spec.label in columns:
        out[spec.label] = _numeric(columns[spec.label], n).astype(np.float32)
    return out


def _history_lists(columns: Mapping[str, np.ndarray | list], n: int, spec: FeatureSpec) -> dict[str, list]:
    """The history list columns of ``spec.history`` when ``columns`` holds them (raw values
    of the user_history view, None for no history): each a list of n int64 arrays, ids
    hashed as their sparse feature's; {} when the spec has no history or the rows none."""
    if spec.history is None or not all(c.name in columns for c in spec.history.columns):
        return {}
    sizes = {f.name: f.table_size for f in spec.sparse}
    out: dict[str, list] = {}
    for c in spec.history.columns:
        bags = [() if b is None or (type(b) is float and b != b) else b for b in columns[c.name]]
        lengths = np.fromiter(map(len, bags), dtype=np.int64, count=n)
        flat_values = [v for b in bags for v in b]
        flat = (hash_ids(flat_values, c.ids_of, sizes[c.ids_of]) if c.ids_of is not None
                else np.asarray(flat_values, dtype=np.int64))
        out[c.name] = np.split(flat, np.cumsum(lengths)[:-1]) if n else []
    return out


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
    n = len(rows)
    columns = {c: rows[c].to_numpy() for c in rows.columns if c != "event_timestamp"}
    columns["event_timestamp"] = ts.to_numpy(dtype="datetime64[ns]")
    features = model_columns(columns, n, spec)
    data: dict[str, object] = {}
    for col in PASS_THROUGH:
        if col in rows.columns:
            data[col] = (ts if col == "event_timestamp" else rows[col]).reset_index(drop=True)
    for name, values in features.items():
        if isinstance(values, list):  # id arrays, one per row
            bags = np.empty(n, dtype=object)
            for i, b in enumerate(values):
                bags[i] = b
            values = bags
        data[name] = values
    return pd.DataFrame(data, index=pd.RangeIndex(n))


# ---------------------------------------------------------------------------- Arrow batches


def _arrow_numeric(batch, name: str, n: int) -> np.ndarray:
    """(n,) float64 of a batch column, NaN where null; all NaN when the column is absent."""
    import pyarrow as pa

    if name not in batch.schema.names:
        return np.full(n, np.nan)
    col = batch.column(name).cast(pa.float64())
    return col.to_numpy(zero_copy_only=False)


def _arrow_text_ids(col, feature: str, table_size: int) -> np.ndarray:
    """(n,) int64 ids of a text column (null = missing): each distinct value hashed once,
    as :func:`~features.categorize.hash_ids` hashes it."""
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(col)
    texts = enc.dictionary.to_pylist() + [None]
    codes = enc.indices.fill_null(len(texts) - 1).to_numpy(zero_copy_only=False)
    return hash_ids(texts, feature, table_size)[codes]


def _arrow_query_bags(col, max_terms: int, feature: str, table_size: int):
    """The multi-hot ids of a query column as an Arrow list<int64> array: each distinct
    query split and hashed once (:func:`_query_bag_ids`), gathered row by row with numpy."""
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(col)
    queries = enc.dictionary.to_pylist() + [None]
    codes = enc.indices.fill_null(len(queries) - 1).to_numpy(zero_copy_only=False)
    bags = _query_bag_ids(queries, max_terms, feature, table_size)     # one id array per query
    bag_len = np.fromiter((len(b) for b in bags), dtype=np.int64, count=len(bags))
    bag_start = np.concatenate([[0], np.cumsum(bag_len)[:-1]])
    flat = np.concatenate(bags) if bags else np.zeros(0, np.int64)
    row_len = bag_len[codes]                                            # (n,)
    offsets = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum(row_len, out=offsets[1:])
    # position k of the output: the bag of its row, at its rank inside that bag
    take = np.repeat(bag_start[codes] - offsets[:-1], row_len) + np.arange(offsets[-1])
    values = pa.array(flat[take], pa.int64())
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values).cast(
        pa.list_(pa.field("element", pa.int64())))


def history_id_batch(batch, spec: FeatureSpec):
    """Rows of the user history view (Arrow record batch: key, day, the list columns of
    ``spec.history``) with the lists of ids hashed as :func:`model_batch` hashes them
    (``hist_item`` as item ids, ``hist_cat`` as category_l1 ids; null lists empty), other
    columns unchanged: hashing the history once per (user, day) row instead of once per
    event row that joins it. :func:`model_batch` takes such rows with ``hashed_history``."""
    import pyarrow as pa

    if spec.history is None:
        raise ValueError("the feature spec has no history (features.history_len = 0)")
    sizes = {f.name: f.table_size for f in spec.sparse}
    hashed = {c.name: c for c in spec.history.columns}
    names = batch.schema.names
    missing = [c for c in hashed if c not in names]
    if missing:
        raise ValueError(f"history rows lack column(s) {missing}")
    arrays = [(_arrow_history(batch.column(n), hashed[n].ids_of, sizes.get(hashed[n].ids_of))
               if n in hashed else batch.column(n)) for n in names]
    return pa.Table.from_arrays(arrays, names=names)


def model_batch(batch, spec: FeatureSpec, hashed_history: bool = False):
    """Joined feature rows as an Arrow record batch -> the model-ready columns, vectorised.

    The same values as :func:`build_model_frame` on the same rows (the dense transform is
    shared; every id is :func:`~features.categorize.hash_ids` of the same text), computed
    per distinct value instead of per row, for the features step's streaming output.

    Args:
        batch: a ``pyarrow.RecordBatch`` with ``user_id``, ``item_id``, ``ts_ns`` (int64
            nanoseconds since the epoch, UTC) or ``event_timestamp``, and optionally the other
            columns of :func:`build_model_frame`'s rows.
        spec: the feature spec.
        hashed_history: the history list columns already hold ids (:func:`history_id_batch`).

    Returns:
        A ``pyarrow.Table``: pass-through columns, dense float32, sparse int64, the query
        bags as list<int64>, the label (float32) when present; the schema
        :func:`build_model_frame` frames are written with.
    """
    import pyarrow as pa

    names = batch.schema.names
    for col in ("user_id", "item_id"):
        if col not in names:
            raise ValueError(f"feature rows lack column {col!r}")
    n = batch.num_rows
    if "ts_ns" in names:
        ts_ns = batch.column("ts_ns").cast(pa.int64())
    elif "event_timestamp" in names:
        ts_ns = batch.column("event_timestamp").cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
    else:
        raise ValueError("feature rows lack column 'event_timestamp'")
    if ts_ns.null_count:
        raise ValueError("feature rows hold missing event_timestamp values")
    ns = ts_ns.to_numpy(zero_copy_only=False)
    extra = spec.extra
    data: dict[str, object] = {}
    for col in PASS_THROUGH:
        if col == "event_timestamp":
            data[col] = ts_ns.cast(pa.timestamp("ns", tz="UTC"))
        elif col in names:
            data[col] = batch.column(col)
    data.update(_dense_columns(lambda name: _arrow_numeric(batch, name, n), spec))

    hour, weekday = _utc_hour_and_weekday(ns.view("datetime64[ns]"))
    for f in spec.sparse:
        src = extra["sources"][f.name]
        if f.name in ("hour", "day_of_week"):
            table = hash_ids(_INT_TEXT, f.name, f.table_size)        # ids of "0".."23"
            data[f.name] = table[hour if f.name == "hour" else weekday]
        elif f.name == "position":
            pos = _arrow_numeric(batch, "position", n)
            pos = np.maximum(np.where(np.isnan(pos), float(extra["default_position"]), pos), 1.0)
            uniq, inv = np.unique(pos.astype(np.int64), return_inverse=True)
            data[f.name] = hash_ids(_bucket_texts(uniq), f.name, f.table_size)[inv.reshape(-1)]
        elif f.multi_hot:
            col = batch.column(src) if src in names else pa.nulls(n, pa.string())
            data[f.name] = _arrow_query_bags(col, extra["max_query_terms"], f.name, f.table_size)
        else:
            col = batch.column(src) if src in names else pa.nulls(n, pa.string())
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
                col = col.cast(pa.string())
            data[f.name] = _arrow_text_ids(col, f.name, f.table_size)
    if spec.history is not None and all(c.name in names for c in spec.history.columns):
        sizes = {f.name: f.table_size for f in spec.sparse}
        for c in spec.history.columns:
            ids_of = None if hashed_history else c.ids_of
            data[c.name] = _arrow_history(batch.column(c.name), ids_of, sizes.get(ids_of))
    if spec.label in names:
        data[spec.label] = _arrow_numeric(batch, spec.label, n).astype(np.float32)
    return pa.table(data)


def _arrow_history(col, feature: str | None, table_size: int | None):
    """A history list column (raw values, null = no history) -> list<int64>: the values
    hashed as ``feature``'s ids (each distinct value once), or as int64 when ``feature`` is
    None; null lists become empty ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_large_list(col.type):
        col = col.cast(pa.list_(col.type.value_type))
    if col.null_count:
        col = col.fill_null(pa.scalar([], col.type))
    offsets = pc.subtract(col.offsets, col.offsets[0])     # (n + 1,) of a sliced array too
    values = col.flatten()
    if feature is None:
        flat = values.cast(pa.int64())
    else:
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = values.cast(pa.string())
        flat = pa.array(_arrow_text_ids(values, feature, table_size), pa.int64())
    return pa.ListArray.from_arrays(offsets.cast(pa.int32()), flat).cast(pa.list_(pa.field("element", pa.int64())))
