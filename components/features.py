"""`robeflow features`: validated transactions -> Feast feature store and model-ready tables.

Computes the feature views' daily tables and the point-in-time join (every event gets
the feature values valid at its timestamp: the rows stamped at the start of its day) as
SQL (:mod:`features.sql`) on an out-of-core engine (``features.engine``: DuckDB) reading
the validated Parquet files; applies the Feast repo and materialises the latest values
into the online store; and streams the model-ready train / valid / test tables (split by
time) out in row groups of ``features.batch_rows``, with ``feature_spec.json``. Memory
is set by ``features.memory_limit`` and the batch size, not by the data.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contract.background import BackgroundCalls
from contract.io import StepError, atomic_dir, log, remove_stale, scratch_name
from contract.model_input import SPEC_FILE, SPLITS, split_path
from features.windows import split_days
from contract.params import add_params_args, as_dict, load_config

if TYPE_CHECKING:
    import pandas as pd

STEP = "features"


@dataclass(frozen=True)
class TableSizes:
    """Virtual rows of each sparse feature's table (ids are hash mod size).

    The defaults total 947,528 rows: 60.6 MB as full float32 tables at dim 16, so the
    uncompressed baseline trains on a laptop; with ROBE raise them freely.
    """

    user: int = 500_000
    item: int = 200_000
    category_l1: int = 1_000
    category_l2: int = 5_000
    category_l3: int = 20_000
    brand: int = 20_000
    price_band: int = 64
    fav_category_l1: int = 1_000
    device: int = 64
    country: int = 256
    position: int = 64
    hour: int = 64
    day_of_week: int = 16
    query: int = 200_000


ENGINES = ("duckdb", "spark")


@dataclass(frozen=True)
class FeaturesConfig:
    test_days: int = 3              # the last days of data form the test window
    valid_days: int = 3             # the days before them form the validation window
    rate_prior: float = 0.03        # smoothed purchase rate of an entity without history (~ the data's rate)
    rate_prior_weight: float = 20.0  # pseudo-offers the prior counts as
    days_since_cap: int = 365       # days since last purchase of a user who never bought
    max_query_terms: int = 8        # distinct query terms kept per event
    default_position: int = 1       # position scored at serving when none is given
    tables: TableSizes = field(default_factory=TableSizes)
    engine: str = "duckdb"          # the SQL engine of the feature tables and the point-in-time join
    memory_limit: str = "2GB"       # the engine's working memory; beyond it, it spills to disk
    threads: int = 0                # engine threads (0 = one per core)
    batch_rows: int = 131_072       # model-ready rows transformed and written at a time (bounds memory)
    query_rows: int = 1_000_000     # most events one model-ready query joins and sorts: a larger day is
                                    # queried a run of whole hours at a time (bounds the engine's memory)
    spark_master: str = "local[2]"  # engine spark: the master (local[N], spark://host:7077, k8s://...)
    history_len: int = 20           # the user's last events before the row's day kept per row (user_history
                                    # view, hist_* list columns); each row's size grows with it

    def __post_init__(self) -> None:
        if self.history_len < 1:
            raise ValueError(f"features.history_len = {self.history_len}; expected >= 1 (events per history)")
        if self.engine not in ENGINES:
            raise ValueError(f"features.engine = {self.engine!r}; expected one of {list(ENGINES)}")
        if self.batch_rows < 1:
            raise ValueError(f"features.batch_rows = {self.batch_rows}; expected >= 1")
        if self.threads < 0:
            raise ValueError(f"features.threads = {self.threads}; expected >= 0 (0 = one per core)")
        if self.query_rows < 1:
            raise ValueError(f"features.query_rows = {self.query_rows}; expected >= 1")


@dataclass
class FeaturesResult:
    rows: int                          # events in, = rows out over the three splits
    split_rows: dict[str, int]
    split_days: dict[str, list[str]]   # first and last day (YYYY-MM-DD) of each split
    feature_rows: dict[str, int]       # rows of each feature view's offline table
    online_entities: dict[str, int]    # users and items with latest values online
    snapshot: str                      # stamp of the materialised (latest) values
    seconds: float


def read_validated(input_dir: Path) -> "pd.DataFrame":
    """The validated transactions (Parquet partitioned by day=...), sorted by time."""
    import pandas as pd

    from contract.schema import COLUMNS

    input_dir = Path(input_dir)
    events = pd.concat([pd.read_parquet(f) for f in validated_files(input_dir)], ignore_index=True)
    missing = [c for c in COLUMNS if c not in events.columns]
    if missing:
        raise StepError(f"transactions in {input_dir} lack column(s) {missing}")
    events = events[list(COLUMNS)]
    if events.empty:
        raise StepError(f"input directory {input_dir} holds no transactions (all files are empty)")
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    if events["purchased"].isna().any():
        raise StepError(f"transactions in {input_dir} hold missing labels (purchased); validate them first")
    return events.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)


def _stamp(day: int) -> str:
    """Days since 1970-01-01 -> YYYY-MM-DD."""
    import numpy as np

    return str(np.datetime64(int(day), "D"))


def validated_files(input_dir: Path) -> list[Path]:
    """The Parquet files of the validated dataset, after checking their footers: every
    canonical column present (StepError naming the directory otherwise)."""
    import pyarrow.parquet as pq

    from contract.schema import COLUMNS

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise StepError(f"input directory {input_dir} does not exist; run `robeflow validate` first")
    files = sorted(input_dir.rglob("*.parquet"))
    if not files:
        raise StepError(f"input directory {input_dir} holds no Parquet files (expected day=YYYY-MM-DD/*.parquet)")
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise StepError(f"transactions in {input_dir} lack column(s) {missing} (in {f})")
    return files


def features(cfg: FeaturesConfig, input_dir: Path, out_dir: Path, model_input_dir: Path) -> FeaturesResult:
    """Runs the features step.

    The feature tables and the point-in-time join run as SQL on ``cfg.engine`` over the
    validated Parquet files; the model-ready rows stream out of it in batches of
    ``cfg.batch_rows``, are transformed and written as row groups, so memory is set by
    ``cfg.memory_limit`` and the batch size, not by the data.

    Args:
        cfg: the ``features`` section of params.yaml.
        input_dir: validated transactions (``data/validated``).
        out_dir: the Feast repo and its data (``data/features``): replaced on success.
        model_input_dir: ``{train,valid,test}.parquet`` and ``feature_spec.json`` (``data/model_input``).
    """
    os.environ.setdefault("FEAST_USAGE", "False")
    import tempfile

    import pandas as pd

    from features import sql
    from features.compute import (StatsParams, materialize_feature_tables, materialize_user_category,
                                  materialize_user_history, summarize)
    from features.engine import open_engine
    from features.transform import feature_spec

    t0 = time.perf_counter()
    files = validated_files(input_dir)
    _import_in_background("feast", "features.repo")  # ~5-10 s of imports, while the engine computes
    out_dir, model_input_dir = Path(out_dir), Path(model_input_dir)
    for out in (out_dir, model_input_dir):
        remove_stale(out)
    model_input_dir.parent.mkdir(parents=True, exist_ok=True)
    stats = StatsParams(cfg.rate_prior, cfg.rate_prior_weight, cfg.days_since_cap)
    with tempfile.TemporaryDirectory(dir=model_input_dir.parent, prefix=scratch_name(model_input_dir, "work").name[:-8]) as work, \
            open_engine(cfg.engine, work, cfg.memory_limit, cfg.threads, cfg.spark_master) as engine:
        engine.events_from_parquet(files)
        data = summarize(engine)
        if data.rows == 0:
            raise StepError(f"input directory {input_dir} holds no transactions (all files are empty)")
        if data.unlabelled:
            raise StepError(f"transactions in {input_dir} hold missing labels (purchased); validate them first")
        days = [d for (d,) in engine.rows(sql.event_days())]
        splits = split_days(pd.Series(days), cfg.test_days, cfg.valid_days)
        log(STEP, f"{data.rows:,} events over {len(days)} days from {input_dir} ({len(files)} files); "
                  f"engine {cfg.engine}, memory limit {cfg.memory_limit}")

        materialize_feature_tables(engine, data, stats)
        materialize_user_category(engine, data, stats)
        materialize_user_history(engine, data, cfg.history_len)
        counts = engine.rows(sql.entity_counts())[0]
        feature_rows = dict(zip(sql.TABLES, map(int, counts[:3])))
        for name in (sql.USER_CATEGORY, sql.HISTORY):
            feature_rows[name] = int(engine.rows(sql.row_count(name))[0][0])
        log(STEP, "feature tables: " + ", ".join(f"{n} {r:,} rows" for n, r in feature_rows.items())
            + f" ({time.perf_counter() - t0:.1f}s)")

        with atomic_dir(out_dir) as repo:
            _feast_repo(engine, repo, data, cfg.batch_rows, store_config=_store_config(cfg))
        log(STEP, f"feast apply done; materialised the values as of {data.snapshot} into the online store")

        extra = {"splits": {s: [_stamp(d[0]), _stamp(d[-1])] for s, d in splits.items()},
                 "snapshot": str(data.snapshot)}
        (typical_price,) = engine.rows(sql.typical_price())[0]
        spec = feature_spec(as_dict(cfg.tables), stats, cfg.max_query_terms, cfg.default_position, extra=extra,
                            history_len=cfg.history_len,
                            price_fill=0.0 if typical_price is None else float(typical_price))
        hashed = _hashed_history(engine, spec, Path(work), cfg.batch_rows)
        hours = engine.rows(sql.events_per_hour(engine.dialect))
        split_rows = {}
        with atomic_dir(model_input_dir) as mdir:
            for name in SPLITS:
                # one query per day, or per run of hours of a day over cfg.query_rows events:
                # each sort holds at most that many events, not a split's
                batches = (b for day in splits[name] for span in day_spans(hours, day, cfg.query_rows)
                           for b in engine.batches(sql.model_rows(day, day, history=True, history_table=hashed,
                                                                  user_category=True, dialect=engine.dialect,
                                                                  ts_range=span),
                                                   cfg.batch_rows))
                split_rows[name] = write_model_table(batches, spec, split_path(mdir, name), hashed_history=True)
            spec.save(mdir / SPEC_FILE)
            if sum(split_rows.values()) != data.rows:
                raise StepError(f"splits hold {sum(split_rows.values())} rows for {data.rows} events")
    seconds = time.perf_counter() - t0
    log(STEP, "model input: " + ", ".join(f"{k} {v:,}" for k, v in split_rows.items())
        + f" rows in {model_input_dir} ({data.rows / seconds:,.0f} events/s)")
    return FeaturesResult(
        rows=data.rows,
        split_rows=split_rows,
        split_days={s: [_stamp(d[0]), _stamp(d[-1])] for s, d in splits.items()},
        feature_rows=feature_rows,
        online_entities={"user": int(counts[3]), "item": int(counts[4])},
        snapshot=str(data.snapshot),
        seconds=seconds,
    )


def day_spans(hours: list[tuple[int, int]], day: int, query_rows: int) -> list[tuple[int, int] | None]:
    """The nanosecond ranges [lo, hi) that cover ``day`` in runs of whole hours of at most
    ``query_rows`` events each (an hour holding more is a run of its own); ``[None]`` (the
    whole day in one query) when the day holds no more than ``query_rows``.

    ``hours``: (hour since the epoch, events) of every hour with events, as
    :func:`features.sql.events_per_hour` gives them.
    """
    from features.sql import DAY_NS, HOUR_NS

    own = [(h, n) for h, n in hours if h // 24 == day]
    if sum(n for _, n in own) <= query_rows:
        return [None]
    starts, run = [], query_rows + 1
    for h, n in own:
        if run + n > query_rows:  # this hour opens a new run
            starts.append(h * HOUR_NS)
            run = 0
        run += n
    starts[0] = day * DAY_NS
    return list(zip(starts, starts[1:] + [(day + 1) * DAY_NS]))


def _import_in_background(*modules: str) -> None:
    """Imports ``modules`` on a daemon thread (later imports of them wait for it and then
    find them loaded); an import error there is left for the importing call to raise."""
    import importlib
    import threading

    def work() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the step's own import reports it
                return

    threading.Thread(target=work, name="import-feast", daemon=True).start()


def _store_config(cfg: FeaturesConfig) -> dict | None:
    """The Feast repo's store sections for ``cfg.engine``: Feast's Spark offline store and
    Spark materialisation on ``cfg.spark_master`` for ``spark``; None (the packaged DuckDB
    store) for ``duckdb``."""
    if cfg.engine != "spark":
        return None
    from features.repo import spark_config

    return spark_config(cfg.spark_master)


def _feast_repo(engine, repo: Path, data, batch_rows: int, store_config: dict | None = None) -> None:
    """Installs the Feast repo in ``repo`` (with the ``feature_store.yaml`` sections
    ``store_config``; the packaged DuckDB store when None), streams the offline tables out of the engine, applies the
    repo and loads the snapshot rows (``data.snapshot``) into the online store: the
    statistics through Feast's materialisation (on the offline store: Spark runs it for a
    Spark repo), the list views (user history, user x category; Feast would read their
    lists whole) straight from the engine, a batch at a time."""
    from features import sql
    from features.compute import stamped_batches
    from features.repo import (apply_repo, check_tables_match_views, install_repo, materialize_latest,
                               write_offline_batches, write_online_batches)

    install_repo(repo, store_config)
    columns = {}
    lists = {sql.USER_CATEGORY: ("user_id", sql.UCAT_COLUMNS), sql.HISTORY: ("user_id", sql.HISTORY_COLUMNS)}
    for name, (key, fields) in {**sql.TABLES, **lists}.items():
        write_offline_batches(name, stamped_batches(engine, name, batch_rows), repo)
        columns[name] = [key, "event_timestamp", *fields]
    store = apply_repo(repo)
    check_tables_match_views(store, columns)
    materialize_latest(store, data.snapshot, views=list(sql.TABLES))
    for name in lists:
        write_online_batches(store, name, stamped_batches(engine, name, batch_rows, day=data.snapshot_day))
    del store


HASHED_HISTORY = "user_history_ids"


def _hashed_history(engine, spec, work: Path, batch_rows: int) -> str:
    """Loads the user history table with its lists hashed to ids
    (:func:`features.transform.history_id_batch`) into the engine as table
    :data:`HASHED_HISTORY`, a batch at a time through a Parquet file in ``work``; returns
    its name. Each (user, day) row is hashed once instead of once per event joining it."""
    import pyarrow.parquet as pq

    from features import sql
    from features.transform import history_id_batch

    path, writer = work / f"{HASHED_HISTORY}.parquet", None
    try:
        for batch in engine.batches(sql.all_rows(sql.HISTORY), batch_rows):
            table = history_id_batch(batch, spec)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise StepError(f"the {sql.HISTORY} table holds no rows")
    engine.table_from_parquet(HASHED_HISTORY, path)
    return HASHED_HISTORY


def write_model_table(batches, spec, path: Path, hashed_history: bool = False) -> int:
    """Transforms joined feature rows (Arrow record batches) into model-ready rows and
    writes them to the Parquet file ``path``, one row group per batch; returns the rows.
    ``hashed_history``: the rows' history lists already hold ids (:func:`_hashed_history`).

    The file has the schema (and pandas metadata) of a model-ready frame written by
    pandas, so every reader sees the same table as before.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.transform import model_batch

    writer, rows = None, 0
    with BackgroundCalls(depth=1) as background:  # the next batch is computed while one is written
        try:
            for batch in batches:
                table = model_batch(batch, spec, hashed_history=hashed_history)
                if writer is None:
                    meta = pa.Schema.from_pandas(table.slice(0, 1).to_pandas(), preserve_index=False).metadata
                    schema = table.schema.with_metadata(meta)
                    writer = pq.ParquetWriter(path, schema)
                background.submit(writer.write_table, table.replace_schema_metadata(schema.metadata))
                rows += table.num_rows
            background.wait()
        finally:
            if writer is not None:
                background.wait(raise_errors=False)
                writer.close()
    if writer is None:
        raise StepError(f"no rows for {path.name}")
    return rows


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(FeaturesConfig, STEP, args.params, args.overrides)
    features(cfg, args.input, args.out, args.model_input)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(STEP, help="compute features, fill the Feast stores, write the model-ready tables")
    p.add_argument("--input", type=Path, required=True, help="validated transactions (data/validated)")
    p.add_argument("--out", type=Path, required=True, help="Feast repo and its data (data/features)")
    p.add_argument("--model-input", type=Path, required=True,
                   help="model-ready tables and feature_spec.json (data/model_input)")
    add_params_args(p)
    p.set_defaults(func=_main)
