"""Feast feature views of robeflow: daily snapshots computed from validated transactions.

A row stamped with day D at 00:00 UTC is computed from events strictly before D, so the
point-in-time join of an event on day D reads only its past. TTLs: the statistics are
refreshed daily, so a value older than two days means a missed run (one is tolerated);
catalogue attributes change rarely and stay valid for 30 days. The user history holds the
user's last ``features.history_len`` events before D as parallel arrays, newest first; the
user x category view, per category level, the categories offered to the user in the 30 days
before D with the user's statistics in each (parallel arrays; a model reads the entry of
the candidate item's category).
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float64, Int64, String

from data_sources import (item_attributes_source, item_daily_stats_source, user_category_stats_source,
                          user_daily_stats_source, user_history_source)
from entities import item, user

user_daily_stats = FeatureView(
    name="user_daily_stats",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="user_offers_7d", dtype=Int64, description="offers shown in the last 7 days"),
        Field(name="user_purchases_7d", dtype=Int64, description="purchases in the last 7 days"),
        Field(name="user_offers_30d", dtype=Int64, description="offers shown in the last 30 days"),
        Field(name="user_purchases_30d", dtype=Int64, description="purchases in the last 30 days"),
        Field(name="user_purchase_rate_30d", dtype=Float64,
              description="(purchases + prior * weight) / (offers + weight) over 30 days"),
        Field(name="user_avg_price_paid_30d", dtype=Float64,
              description="mean price of purchases in the last 30 days (0 without purchases)"),
        Field(name="user_fav_category_l1_30d", dtype=String,
              description="the l1 category offered most often in the last 30 days (null if none)"),
        Field(name="user_days_since_purchase", dtype=Int64,
              description="days since the last purchase, capped (the cap if never)"),
    ],
    source=user_daily_stats_source,
    online=True,
    tags={"team": "recsys", "refresh": "daily"},
)

item_daily_stats = FeatureView(
    name="item_daily_stats",
    entities=[item],
    ttl=timedelta(days=2),
    schema=[
        Field(name="item_offers_7d", dtype=Int64, description="times offered in the last 7 days"),
        Field(name="item_purchases_7d", dtype=Int64, description="purchases in the last 7 days"),
        Field(name="item_purchase_rate_7d", dtype=Float64, description="smoothed purchase rate, 7 days"),
        Field(name="item_offers_30d", dtype=Int64, description="times offered in the last 30 days"),
        Field(name="item_purchases_30d", dtype=Int64, description="purchases in the last 30 days"),
        Field(name="item_purchase_rate_30d", dtype=Float64, description="smoothed purchase rate, 30 days"),
    ],
    source=item_daily_stats_source,
    online=True,
    tags={"team": "recsys", "refresh": "daily"},
)

item_attributes = FeatureView(
    name="item_attributes",
    entities=[item],
    ttl=timedelta(days=30),
    schema=[
        Field(name="item_category_l1", dtype=String),
        Field(name="item_category_l2", dtype=String),
        Field(name="item_category_l3", dtype=String),
        Field(name="item_brand", dtype=String),
        Field(name="item_price", dtype=Float64, description="the last price the item was offered at"),
        Field(name="item_price_band", dtype=String, description="floor(log2(1 + price)), as text"),
    ],
    source=item_attributes_source,
    online=True,
    tags={"team": "recsys", "refresh": "daily"},
)

user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="hist_item", dtype=Array(String), description="item ids of the last events, newest first"),
        Field(name="hist_cat", dtype=Array(String), description="their category_l1 ('<missing>' if none)"),
        Field(name="hist_action", dtype=Array(Int64), description="0 offered, 1 purchased"),
        Field(name="hist_days", dtype=Array(Int64), description="days from the event's day to the row's day (>= 1)"),
    ],
    source=user_history_source,
    online=True,
    tags={"team": "recsys", "refresh": "daily"},
)


def _user_category_fields(level: str) -> list[Field]:
    """The user x category view's parallel arrays of one category level."""
    per_category = [("offers_7d", Int64, "offers in each, last 7 days"),
                    ("purchases_7d", Int64, "purchases in each, last 7 days"),
                    ("offers_30d", Int64, "offers in each, last 30 days"),
                    ("purchases_30d", Int64, "purchases in each, last 30 days"),
                    ("purchase_rate_30d", Float64, "(purchases + prior * weight) / (offers + weight) in each, 30 days")]
    return [Field(name=f"ucat_{level}_keys", dtype=Array(String),
                  description=f"the category_{level} values offered to the user in the last 30 days, in text order"),
            *(Field(name=f"ucat_{level}_{name}_list", dtype=Array(dtype), description=text)
              for name, dtype, text in per_category)]


user_category_stats = FeatureView(
    name="user_category_stats",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[*_user_category_fields("l1"), *_user_category_fields("l2")],
    source=user_category_stats_source,
    online=True,
    tags={"team": "recsys", "refresh": "daily"},
)
