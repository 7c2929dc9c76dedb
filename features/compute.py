"""The feature views' tables, computed from validated transactions by the SQL of
:mod:`features.sql` on an engine (DuckDB by default).

Every table holds daily snapshots: the row of entity e stamped day D (00:00 UTC) is
computed from e's events strictly before D, so a point-in-time join of an event on day D
reads only the past. Rows exist for every (entity, day) with an event of that entity (what
training joins on) and, for every entity, for the day after the last day of data: the
latest values, which are materialised into the online store for serving.

:func:`compute_feature_tables` runs the definitions on an in-memory frame (tests,
monitoring of small windows); the features step runs the same definitions on the
validated Parquet files and streams the results (:func:`materialize_feature_tables`,
:func:`stamped_batches`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

from features import sql
from features.sql import DAY_NS, WINDOWS  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class StatsParams:
    """Smoothing and caps of the statistics (from ``params.yaml: features``)."""

    rate_prior: float = 0.03        # smoothed rate of an entity without history
    rate_prior_weight: float = 20.0  # pseudo-offers the prior counts as
    days_since_cap: int = 365       # days since last purchase when there is none (or longer)


@dataclass
class FeatureTables:
    """The offline tables, keyed by entity id and ``event_timestamp`` (tz-aware UTC)."""

    user_daily_stats: pd.DataFrame
    item_daily_stats: pd.DataFrame
    item_attributes: pd.DataFrame
    snapshot: pd.Timestamp      # the stamp of the latest rows (day after the last event day)
    user_history: pd.DataFrame | None = None   # the user's last events (list columns), when asked for
    user_category_stats: pd.DataFrame | None = None   # per user: lists by category (sql.USER_CATEGORY)

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        out = [("user_daily_stats", self.user_daily_stats),
               ("item_daily_stats", self.item_daily_stats),
               ("item_attributes", self.item_attributes)]
        if self.user_history is not None:
            out.append((sql.HISTORY, self.user_history))
        if self.user_category_stats is not None:
            out.append((sql.USER_CATEGORY, self.user_category_stats))
        return out


@dataclass(frozen=True)
class DataSummary:
    """What the engine's ``events`` relation holds."""

    rows: int
    unlabelled: int          # events without a label (purchased)
    first_day: int           # days since 1970-01-01 (UTC)
    last_day: int

    @property
    def snapshot_day(self) -> int:
        return self.last_day + 1

    @property
    def snapshot(self) -> pd.Timestamp:
        return day_stamp(np.array([self.snapshot_day]))[0]


def event_days(ts: pd.Series) -> np.ndarray:
    """(n,) int64 days since 1970-01-01 (UTC) of tz-aware timestamps."""
    ns = ts.dt.tz_convert("UTC").to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return np.floor_divide(ns, DAY_NS)


def day_stamp(days: np.ndarray) -> pd.Series:
    """Days since epoch -> tz-aware UTC timestamps at 00:00."""
    return pd.Series(pd.to_datetime(np.asarray(days, dtype=np.int64) * DAY_NS, utc=True))


def price_band(price: pd.Series | np.ndarray) -> pd.Series:
    """floor(log2(1 + price)) as text (null where the price is missing)."""
    p = pd.Series(price, dtype="float64")
    band = np.floor(np.log2(1.0 + p.clip(lower=0.0)))
    return band.map(lambda b: None if np.isnan(b) else str(int(b))).astype(object)


def summarize(engine) -> DataSummary:
    """Counts and day range of the engine's ``events`` (days None-free only when rows > 0)."""
    n, unlabelled, first, last = engine.rows(sql.data_summary())[0]
    return DataSummary(int(n), int(unlabelled or 0), int(first if first is not None else 0),
                       int(last if last is not None else 0))


def materialize_feature_tables(engine, summary: DataSummary, params: StatsParams) -> None:
    """Computes the three feature tables into the engine (tables named as the views)."""
    selects = sql.feature_tables(summary.snapshot_day, params.rate_prior, params.rate_prior_weight,
                                 params.days_since_cap)
    for name, select in selects.items():
        engine.materialize(name, select)


def materialize_user_category(engine, summary: DataSummary, params: StatsParams) -> None:
    """Computes the user x category table (:func:`features.sql.user_category_stats`: per user
    and day, the offers, purchases and rate of each category_l1 and category_l2 the user was
    offered in the 30 days before) into the engine, as table ``user_category_stats``."""
    engine.materialize(sql.USER_CATEGORY, sql.user_category_stats(
        engine.dialect, summary.snapshot_day, params.rate_prior, params.rate_prior_weight))


def materialize_user_history(engine, summary: DataSummary, length: int) -> None:
    """Computes the user history table (:func:`features.sql.user_history`: each user's last
    ``length`` events before the row's day) into the engine, as table ``user_history``."""
    engine.materialize(sql.HISTORY, sql.user_history(engine.dialect, summary.snapshot_day, length))


def stamp_days(batch: "pa.RecordBatch") -> "pa.RecordBatch":
    """A batch of feature rows with ``day`` (days since epoch) replaced by
    ``event_timestamp`` (timestamp[ns, UTC] at 00:00 of that day), in the same place."""
    import pyarrow as pa
    import pyarrow.compute as pc

    i = batch.schema.get_field_index("day")
    stamp = pc.multiply(batch.column(i), pa.scalar(DAY_NS, pa.int64())).cast(pa.timestamp("ns", tz="UTC"))
    return batch.set_column(i, "event_timestamp", stamp) if hasattr(batch, "set_column") else \
        pa.RecordBatch.from_arrays([stamp if j == i else c for j, c in enumerate(batch.columns)],
                                   names=[("event_timestamp" if j == i else n)
                                          for j, n in enumerate(batch.schema.names)])


def stamped_batches(engine, name: str, batch_rows: int, day: int | None = None) -> Iterator["pa.RecordBatch"]:
    """The rows of feature table ``name`` in (key, day) order, stamped (:func:`stamp_days`);
    the rows of ``day`` only, when given (the user history and user x category tables)."""
    by_day = {sql.HISTORY: sql.history_rows, sql.USER_CATEGORY: sql.user_category_rows}
    if day is not None and name not in by_day:
        raise ValueError(f"rows of one day are read from {sorted(by_day)} only, not {name}")
    select = by_day[name](day) if day is not None else sql.table_rows(name)
    for batch in engine.batches(select, batch_rows):
        yield stamp_days(batch)


def _events_arrow(events: pd.DataFrame) -> "pa.Table":
    """The columns the SQL reads, as Arrow (missing optional ones as nulls), plus ``seq``
    (the frame's row order breaks ties of time)."""
    import pyarrow as pa

    n = len(events)
    types = {"event_id": pa.string(), "user_id": pa.string(), "item_id": pa.string(),
             "query": pa.string(), "category_l1": pa.string(), "category_l2": pa.string(),
             "category_l3": pa.string(), "brand": pa.string(), "price": pa.float64(),
             "position": pa.int64(), "device": pa.string(), "country": pa.string(),
             "purchased": pa.int64()}
    arrays = {"event_timestamp": pa.array(pd.to_datetime(events["event_timestamp"], utc=True)
                                          .to_numpy(dtype="datetime64[ns]"), pa.timestamp("ns"))
              .cast(pa.timestamp("ns", tz="UTC"))}
    for c, t in types.items():
        if c not in events.columns:
            arrays[c] = pa.nulls(n, t)
            continue
        s = events[c]
        if pa.types.is_string(t):
            s = s.astype(object).where(s.notna(), None)
            try:
                arrays[c] = pa.array(s, t, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):   # ids that are not text: as text
                arrays[c] = pa.array(s.map(lambda v: v if v is None else str(v)).tolist(), t)
        else:
            arrays[c] = pa.array(pd.to_numeric(s, errors="coerce").astype("float64"),
                                 from_pandas=True).cast(t, safe=False)
    arrays["seq"] = pa.array(np.arange(n, dtype=np.int64))
    return pa.table(arrays)


def compute_feature_tables(events: pd.DataFrame, params: StatsParams = StatsParams(),
                           memory_limit: str = "1GB", history_len: int = 0) -> FeatureTables:
    """Validated transactions (canonical schema) -> the feature view tables, in memory.

    ``history_len`` > 0 adds the ``user_history`` table (each user's last ``history_len``
    events before the row's day, :func:`materialize_user_history`).

    Raises:
        ValueError: ``events`` is empty or lacks a column the features need.
    """
    from features.engine import DuckDBEngine

    needed = ["event_timestamp", "user_id", "item_id", "category_l1", "category_l2",
              "category_l3", "brand", "price", "purchased"]
    missing = [c for c in needed if c not in events.columns]
    if missing:
        raise ValueError(f"transactions lack column(s) {missing} needed by the features")
    if events.empty:
        raise ValueError("no transactions to compute features from")
    with tempfile.TemporaryDirectory(prefix="robeflow-features-") as work, \
            DuckDBEngine(work, memory_limit=memory_limit, threads=1) as engine:
        engine.events_from_arrow(_events_arrow(events))
        summary = summarize(engine)
        materialize_feature_tables(engine, summary, params)
        materialize_user_category(engine, summary, params)
        names = [*sql.TABLES, sql.USER_CATEGORY]
        if history_len > 0:
            materialize_user_history(engine, summary, history_len)
            names.append(sql.HISTORY)
        frames = {}
        for name in names:
            import pyarrow as pa

            batches = list(stamped_batches(engine, name, 1 << 20))
            frames[name] = pa.Table.from_batches(batches).to_pandas() if batches else None
    return FeatureTables(frames["user_daily_stats"], frames["item_daily_stats"], frames["item_attributes"],
                         summary.snapshot, frames.get(sql.HISTORY), frames[sql.USER_CATEGORY])
