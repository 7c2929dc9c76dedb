"""Installing, applying and reading the Feast repo that ``robeflow features`` materialises.

A materialised repo directory holds the Feast definitions (copied from this package) and,
under ``store/``, the offline Parquet tables, the registry and the SQLite online store::

    DIR/feature_store.yaml, entities.py, data_sources.py, feature_views.py, feature_services.py
    DIR/store/offline/{user_daily_stats,item_daily_stats,item_attributes,user_category_stats,user_history}.parquet
    DIR/store/registry.db, DIR/store/online_store.db

so ``cd DIR && feast feature-views list`` works on it. Feast is imported lazily.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd

from features.compute import FeatureTables

if TYPE_CHECKING:
    from feast import FeatureStore

PACKAGE_DIR = Path(__file__).resolve().parent
# the Feast repo proper; everything else in this package is listed in .feastignore
REPO_FILES = ("feature_store.yaml", ".feastignore", "entities.py", "data_sources.py",
              "feature_views.py", "feature_services.py")
OFFLINE_DIR = Path("store") / "offline"


PACKAGED_OFFLINE_STORE = "offline_store:\n  type: duckdb\n"


def install_repo(dest: Path, config: Mapping[str, Any] | None = None) -> Path:
    """Copies the Feast definitions into ``dest`` (created if needed); returns ``dest``.

    ``config``: sections of the repo's ``feature_store.yaml`` that replace (``offline_store``)
    or join (others, e.g. ``batch_engine``) the packaged ones, e.g. :func:`spark_config`;
    the sources (``data_sources.py``) follow the offline store.
    """
    dest = Path(dest)
    (dest / OFFLINE_DIR).mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        shutil.copyfile(PACKAGE_DIR / name, dest / name)
    if config:
        import yaml

        path = dest / "feature_store.yaml"
        text = path.read_text()
        extra = dict(config)
        if "offline_store" in extra:
            if PACKAGED_OFFLINE_STORE not in text:
                raise ValueError(f"{PACKAGE_DIR / 'feature_store.yaml'} lacks the block {PACKAGED_OFFLINE_STORE!r}")
            block = yaml.safe_dump({"offline_store": dict(extra.pop("offline_store"))}, sort_keys=False)
            text = text.replace(PACKAGED_OFFLINE_STORE, block)
        if extra:
            text += yaml.safe_dump(extra, sort_keys=False)
        path.write_text(text)
    return dest


def spark_config(master: str, conf: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``feature_store.yaml`` sections of a repo on Spark ``master`` (``features.spark_master``):
    Feast's Spark offline store (UTC, plus ``conf``: Spark settings) and its Spark
    materialisation engine (``batch_engine: spark.engine``)."""
    spark_conf = {"spark.master": str(master), "spark.sql.session.timeZone": "UTC",
                  "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                  **{k: str(v) for k, v in (conf or {}).items()}}
    return {"offline_store": {"type": "spark", "spark_conf": spark_conf},
            "batch_engine": {"type": "spark.engine"}}


def write_offline_tables(tables: FeatureTables, repo_dir: Path) -> dict[str, Path]:
    """Writes each feature view's table where ``data_sources.py`` points; returns the paths."""
    paths = {}
    for name, frame in tables.items():
        path = Path(repo_dir) / OFFLINE_DIR / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        paths[name] = path
    return paths


def write_offline_batches(name: str, batches: Iterable[Any], repo_dir: Path) -> tuple[Path, int]:
    """Streams one feature view's rows (Arrow record batches with the key,
    ``event_timestamp`` and the view's fields) to where ``data_sources.py`` points, one
    row group per batch; returns (path, rows). Text columns are written as ``string``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.data_sources import offline_store_type

    path = Path(repo_dir) / OFFLINE_DIR / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Spark reads no nanosecond Parquet timestamps; the rows are stamped at day starts
    micros = offline_store_type(repo_dir) == "spark"
    writer, rows = None, 0
    try:
        for batch in batches:
            if writer is None:
                schema = pa.schema([_offline_field(f, micros) for f in batch.schema])
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"feature table {name} has no rows")
    return path, rows


def _offline_field(field, micros: bool):
    """The field an offline table stores for ``field``: text as ``string``; with ``micros``,
    timestamps in microseconds."""
    import pyarrow as pa

    t = field.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.field(field.name, pa.string())
    if micros and pa.types.is_timestamp(t):
        return pa.field(field.name, pa.timestamp("us", tz=t.tz))
    return field


def repo_objects(repo_dir: Path) -> list[Any]:
    """The Feast objects the repo's modules define (as ``feast apply`` collects them).

    The modules import each other by their top-level names (``from entities import
    user``), as Feast runs them; they are loaded fresh from ``repo_dir`` and removed from
    ``sys.modules`` again afterwards.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.repo_operations import get_repo_files

    root = Path(repo_dir).resolve()
    names = [p.relative_to(root).with_suffix("").as_posix().replace("/", ".")
             for p in get_repo_files(root)]
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(root))
    objects: list[Any] = []
    try:
        for name in names:
            module = importlib.import_module(name)
            for value in vars(module).values():
                if isinstance(value, (Entity, DataSource, FeatureView, FeatureService)) and not any(
                        value is o for o in objects):
                    objects.append(value)
    finally:
        sys.path.remove(str(root))
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return objects


def open_store(repo_dir: Path) -> "FeatureStore":
    """A FeatureStore on a materialised repo directory (paths resolve against it)."""
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    repo_dir = Path(repo_dir).resolve()
    if not (repo_dir / "feature_store.yaml").is_file():
        raise FileNotFoundError(f"{repo_dir} is not a Feast repo (no feature_store.yaml)")
    return FeatureStore(repo_path=str(repo_dir))


def apply_repo(repo_dir: Path) -> "FeatureStore":
    """``feast apply`` of the repo in ``repo_dir``: registers its objects; returns the store."""
    store = open_store(repo_dir)
    store.apply(repo_objects(repo_dir))
    return store


def check_tables_match_views(store: "FeatureStore",
                             tables: FeatureTables | Mapping[str, Sequence[str]]) -> None:
    """Raises ValueError when a computed table's columns differ from its view's schema.

    ``tables``: the computed tables, or feature view name -> the columns of its table.
    """
    items = tables.items()
    for name, frame in items:
        columns = list(frame.columns) if hasattr(frame, "columns") else list(frame)
        view = store.get_feature_view(name)
        fields = [f.name for f in view.features]
        keys = list(view.join_keys) if hasattr(view, "join_keys") else [
            c.name for c in view.entity_columns]
        expected = sorted([*keys, "event_timestamp", *fields])
        if sorted(columns) != expected:
            raise ValueError(f"table {name} has columns {sorted(columns)}; "
                             f"feature view {name} expects {expected}")


def historical_rows(store: "FeatureStore", entity_df: pd.DataFrame, service: str = "dlrm_v1",
                    as_of_floor: str | None = None) -> pd.DataFrame:
    """Point-in-time join of ``entity_df`` (user_id, item_id, tz-aware event_timestamp and
    any other columns, which pass through) with the service's features, in input order.

    Feast's file (dask) store keeps one entity row per (join keys of the views joined so
    far, timestamp), which would silently drop all but one of several items offered to a
    user at the same instant (feast-dev/feast#6787). So the join runs once per entity over
    the distinct (key, as-of instant) pairs, and the values are merged back onto every row.

    Args:
        as_of_floor: ask Feast at each timestamp floored to this pandas frequency ("D")
            instead of at the timestamp itself. Exact when every feature row is stamped on
            that grid and each (entity, period) with an event has its own row (as
            :func:`features.compute.compute_feature_tables` guarantees): the latest row at
            or before the event is then the one stamped at the start of its period. It
            cuts the join to one request per entity and period. None: exact timestamps.
    """
    missing = [c for c in ("event_timestamp", "user_id", "item_id") if c not in entity_df.columns]
    if missing:
        raise ValueError(f"entity rows lack column(s) {missing}")
    out = entity_df.copy().reset_index(drop=True)
    for col in out.columns:  # Feast's joins expect plain object strings, not pandas' StringDtype
        if isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    ts = pd.to_datetime(out["event_timestamp"], utc=True)
    # Feast converts the entity range to Python datetimes (microseconds), so the join key
    # is floored to microseconds at least; feature rows are stamped at day starts
    out["event_timestamp"] = ts.dt.floor(as_of_floor or "us")
    refs: dict[tuple[str, ...], list[str]] = {}
    for proj in store.get_feature_service(service).feature_view_projections:
        keys = tuple(store.get_feature_view(proj.name).join_keys)
        refs.setdefault(keys, []).extend(f"{proj.name}:{f.name}" for f in proj.features)
    for keys, features in refs.items():
        pairs = out[[*keys, "event_timestamp"]].drop_duplicates(ignore_index=True)
        with _offline_paths(store):
            got = store.get_historical_features(entity_df=pairs, features=features).to_df()
        for col in got.columns:  # back to plain object strings with None for missing
            if isinstance(got[col].dtype, (pd.StringDtype, pd.ArrowDtype)):
                got[col] = got[col].astype(object).where(got[col].notna(), None)
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True).astype(
            out["event_timestamp"].dtype)
        values = got[[*keys, "event_timestamp", *[f.split(":", 1)[1] for f in features]]]
        out = out.merge(values, on=[*keys, "event_timestamp"], how="left", validate="many_to_one")
    out["event_timestamp"] = ts.reset_index(drop=True)
    return out


def materialize_latest(store: "FeatureStore", tables: FeatureTables | pd.Timestamp,
                       views: Sequence[str] | None = None) -> None:
    """Loads every view's (or the ``views``') latest rows (stamped at the snapshot:
    ``tables.snapshot``, or ``tables`` itself when it is a timestamp) into the online store.

    Every entity has a row stamped at the snapshot, so the window is the snapshot instant
    alone (one second): Feast reads only those rows. (``materialize_incremental`` would
    start at now - ttl and load nothing from old data.)
    """
    snapshot = tables.snapshot if hasattr(tables, "snapshot") else pd.Timestamp(tables)
    end = snapshot + timedelta(seconds=1)
    with _offline_paths(store):
        store.materialize(start_date=snapshot.to_pydatetime(), end_date=end.to_pydatetime(),
                          feature_views=list(views) if views is not None else None)


def write_online_batches(store: "FeatureStore", view: str, batches: Iterable[Any], write_rows: int = 1024) -> int:
    """Writes a view's latest rows (Arrow record batches with the key, ``event_timestamp``
    and the view's fields) straight into the online store, ``write_rows`` rows a write;
    returns the rows. For views whose offline table is too heavy for Feast's
    materialisation, which reads the whole table into memory (the list views): Feast turns
    every list element into a Python object, so a write holds few rows."""
    import pyarrow as pa

    rows = 0
    for batch in batches:
        for start in range(0, batch.num_rows, write_rows):
            frame = pa.Table.from_batches([batch.slice(start, write_rows)]).to_pandas()
            for col in frame.columns:   # Feast's type conversion reads Python lists
                if frame[col].dtype == object and len(frame) and hasattr(frame[col].iloc[0], "tolist"):
                    frame[col] = [v.tolist() for v in frame[col]]
            store.write_to_online_store(view, frame)
            rows += len(frame)
    return rows


@contextmanager
def _offline_paths(store: "FeatureStore") -> Iterator[None]:
    """Context under which the store's offline reads find the repo's relative source paths.

    Feast 0.67's DuckDB offline store hands a ``FileSource`` path to ibis, which makes it
    absolute against the working directory (its file store and its own writer resolve it
    against the repo instead), so it finds ``store/offline/...`` only when run from the
    repo, as the ``feast`` CLI is. The block therefore runs in the repo directory
    (``contextlib.chdir``, restored on exit; the calls inside are Feast's alone), which
    keeps the registry's paths relative and the repo relocatable (``dvc checkout``).
    Under the file (dask) store: strings held as Arrow arrays (with object columns dask
    tokenises every intermediate frame by pickling it: 8x slower joins on 50k events).
    """
    kind = store.config.offline_store.type
    if kind == "duckdb":
        from contextlib import chdir

        with chdir(Path(store.repo_path).resolve()):
            yield
    elif kind in ("file", "dask"):
        import dask

        with dask.config.set({"dataframe.convert-string": True}):
            yield
    elif kind == "spark":
        with _spark_working_directory(store):
            yield
    else:
        yield


@contextmanager
def _spark_working_directory(store: "FeatureStore") -> Iterator[None]:
    """Points the local file system of the Spark session Feast's Spark offline store uses
    (the active one, or one started with the store's ``spark_conf``) at the repo directory,
    so Spark resolves the sources' relative paths against the repo (it would against the
    JVM's working directory); restored on exit."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
        get_spark_session_or_start_new_with_repoconfig)

    # Spark's Python workers (its materialisation engine runs Feast in them) need this
    # interpreter's packages, not the first python3 on the PATH
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_spark_session_or_start_new_with_repoconfig(store.config.offline_store)
    hadoop = spark._jvm.org.apache.hadoop.fs
    local = hadoop.FileSystem.getLocal(spark._jsc.hadoopConfiguration())
    before = local.getWorkingDirectory()
    local.setWorkingDirectory(hadoop.Path(str(Path(store.repo_path).resolve())))
    try:
        yield
    finally:
        local.setWorkingDirectory(before)
