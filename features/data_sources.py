"""Feast batch sources: one Parquet table per feature view, written by `robeflow features`.

Paths are relative to the repo directory (Feast resolves them against it); every row
holds the feature values valid from ``event_timestamp`` (00:00 UTC of a day), computed
from events strictly before that instant.
"""

from feast import FileSource
from feast.data_format import ParquetFormat


def _daily_table(view: str, description: str) -> FileSource:
    """The source of feature view ``view``: its table under ``store/offline/``."""
    return FileSource(
        name=f"{view}_source",
        path=f"store/offline/{view}.parquet",
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=description,
    )


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
