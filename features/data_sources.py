"""Feast batch sources: one Parquet table per feature view, written by `robeflow features`.

Paths are relative to the repo directory (Feast resolves them against it); every row
holds the feature values valid from ``event_timestamp`` (00:00 UTC of a day), computed
from events strictly before that instant.

The source type follows the offline store of the ``feature_store.yaml`` beside this file:
``FileSource`` for the DuckDB (and file) store, ``SparkSource`` for Feast's Spark offline
store (``features.engine: spark``), which reads only Spark sources. Spark opens a relative
path against its file system's working directory, which ``features.repo`` points at the
repo for the duration of each Feast call, so both kinds of repo stay relocatable.
"""

from pathlib import Path

import yaml
from feast import FileSource
from feast.data_format import ParquetFormat


def offline_store_type(repo_dir: Path = Path(__file__).resolve().parent) -> str:
    """The ``offline_store.type`` of the repo's ``feature_store.yaml`` (``duckdb`` when absent)."""
    config = yaml.safe_load((Path(repo_dir) / "feature_store.yaml").read_text()) or {}
    return str((config.get("offline_store") or {}).get("type", "duckdb"))


def _daily_table(view: str, description: str):
    """The source of feature view ``view``: its table under ``store/offline/``."""
    common = dict(name=f"{view}_source", path=f"store/offline/{view}.parquet",
                  timestamp_field="event_timestamp", description=description)
    if offline_store_type() == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(file_format="parquet", **common)
    return FileSource(file_format=ParquetFormat(), **common)


user_daily_stats_source = _daily_table(
    "user_daily_stats", "Per user and day: offer/purchase counts over trailing windows.")
item_daily_stats_source = _daily_table(
    "item_daily_stats", "Per item and day: offer/purchase counts over trailing windows.")
item_attributes_source = _daily_table(
    "item_attributes", "Per item and day: the catalogue attributes last seen before that day.")
user_history_source = _daily_table(
    "user_history", "Per user and day: the user's last events before that day, newest first (lists).")
user_category_stats_source = _daily_table(
    "user_category_stats",
    "Per user and day: offers, purchases and rates of each category offered in the last 30 days (lists).")
