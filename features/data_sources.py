"""Feast batch sources: one Parquet table per feature view, written by `robeflow features`.

Paths are relative to the repo directory (Feast resolves them against it); every row
holds the feature values valid from ``event_timestamp`` (00:00 UTC of a day), computed
from events strictly before that instant.
"""

from feast import FileSource
from feast.data_format import ParquetFormat

user_daily_stats_source = FileSource(
    name="user_daily_stats_source",
    path="store/offline/user_daily_stats.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Per user and day: offer/purchase counts over trailing windows.",
)

item_daily_stats_source = FileSource(
    name="item_daily_stats_source",
    path="store/offline/item_daily_stats.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Per item and day: offer/purchase counts over trailing windows.",
)

item_attributes_source = FileSource(
    name="item_attributes_source",
    path="store/offline/item_attributes.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Per item and day: the catalogue attributes last seen before that day.",
)

user_history_source = FileSource(
    name="user_history_source",
    path="store/offline/user_history.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Per user and day: the user's last events before that day, newest first (lists).",
)

user_category_stats_source = FileSource(
    name="user_category_stats_source",
    path="store/offline/user_category_stats.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Per user and day: offers, purchases and rates of each category offered in the last 30 days (lists).",
)
