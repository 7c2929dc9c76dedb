"""The feature views' tables, computed from validated transactions with vectorised pandas.

Every table holds daily snapshots: the row of entity e stamped day D (00:00 UTC) is
computed from e's events strictly before D, so a point-in-time join of an event on day D
reads only the past. Rows exist for every (entity, day) with an event of that entity (what
training joins on) and, for every entity, for the day after the last day of data: the
latest values, which are materialised into the online store for serving.

Trailing windows use cumulative sums over each entity's daily aggregates: the sum over
days [D - w, D) is ``S(D) - S(D - w)`` with ``S(x)`` the sum of the entity's days before
``x``, found for all (entity, day) queries at once with one ``searchsorted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

WINDOWS = (7, 30)          # days; the feature views' field names carry them
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class StatsParams:
    """Smoothing and caps of the statistics (from ``params.yaml: features``)."""

    rate_prior: float = 0.03        # smoothed rate of an entity without history
    rate_prior_weight: float = 20.0  # pseudo-offers the prior counts as
    days_since_cap: int = 365       # days since last purchase when there is none (or longer)


@dataclass
class FeatureTables:
    """The three offline tables, keyed by entity id and ``event_timestamp`` (tz-aware UTC)."""

    user_daily_stats: pd.DataFrame
    item_daily_stats: pd.DataFrame
    item_attributes: pd.DataFrame
    snapshot: pd.Timestamp      # the stamp of the latest rows (day after the last event day)

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("user_daily_stats", self.user_daily_stats),
                ("item_daily_stats", self.item_daily_stats),
                ("item_attributes", self.item_attributes)]


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


class _Daily:
    """Per-key daily aggregates, sorted by (key, day), answering sums before a day."""

    def __init__(self, key: np.ndarray, day: np.ndarray, values: np.ndarray,
                 first_day: int, last_day: int):
        order = np.lexsort((day, key))
        self.key, self.day = key[order], day[order]
        # shift days so that query days minus any window stay > 0 and inside a key's block
        self.base = first_day - max(WINDOWS) - 1
        self.stride = last_day + 2 - self.base + 1
        self.comb = self.key * self.stride + (self.day - self.base)
        v = values[order].reshape(len(order), -1).astype(np.float64)
        self.cum = np.vstack([np.zeros((1, v.shape[1])), np.cumsum(v, axis=0)])  # (rows+1, k)

    def _pos(self, key: np.ndarray, day: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.comb, key * self.stride + (day - self.base), side="left")

    def window(self, key: np.ndarray, day: np.ndarray, w: int) -> np.ndarray:
        """(q, k) sums of the key's values over days [day - w, day)."""
        return self.cum[self._pos(key, day)] - self.cum[self._pos(key, day - w)]

    def last_before(self, key: np.ndarray, day: np.ndarray) -> np.ndarray:
        """(q,) index (into the sorted rows) of the key's last day before ``day``; -1 if none."""
        idx = self._pos(key, day) - 1
        ok = (idx >= 0) & (self.key[np.maximum(idx, 0)] == key)
        return np.where(ok, idx, -1)


def _queries(key: np.ndarray, day: np.ndarray, n_keys: int, snapshot_day: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (key, day) pairs of the events plus (every key, snapshot day)."""
    k = np.concatenate([key, np.arange(n_keys)])
    d = np.concatenate([day, np.full(n_keys, snapshot_day)])
    pairs = np.unique(np.stack([k, d], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _smoothed(purchases: np.ndarray, offers: np.ndarray, p: StatsParams) -> np.ndarray:
    return (purchases + p.rate_prior * p.rate_prior_weight) / (offers + p.rate_prior_weight)


def compute_feature_tables(events: pd.DataFrame, params: StatsParams = StatsParams()) -> FeatureTables:
    """Validated transactions (canonical schema) -> the three feature view tables.

    Raises:
        ValueError: ``events`` is empty or lacks a column the features need.
    """
    needed = ["event_timestamp", "user_id", "item_id", "category_l1", "category_l2",
              "category_l3", "brand", "price", "purchased"]
    missing = [c for c in needed if c not in events.columns]
    if missing:
        raise ValueError(f"transactions lack column(s) {missing} needed by the features")
    if events.empty:
        raise ValueError("no transactions to compute features from")

    day = event_days(events["event_timestamp"])
    first_day, last_day = int(day.min()), int(day.max())
    snapshot_day = last_day + 1
    purchased = events["purchased"].to_numpy(dtype=np.float64, na_value=0.0)
    price = events["price"].to_numpy(dtype=np.float64, na_value=0.0)
    user_code, users = pd.factorize(events["user_id"].astype(object))
    item_code, items = pd.factorize(events["item_id"].astype(object))
    user_code, item_code = user_code.astype(np.int64), item_code.astype(np.int64)

    user = _user_stats(events, day, user_code, len(users), purchased, price,
                       first_day, last_day, snapshot_day, params)
    user.insert(0, "user_id", np.asarray(users, dtype=object)[user.pop("key").to_numpy()])
    item_stats = _item_stats(day, item_code, len(items), purchased, first_day, last_day,
                             snapshot_day, params)
    item_stats.insert(0, "item_id", np.asarray(items, dtype=object)[item_stats.pop("key").to_numpy()])
    attrs = _item_attributes(events, day, item_code, len(items), first_day, last_day, snapshot_day)
    attrs.insert(0, "item_id", np.asarray(items, dtype=object)[attrs.pop("key").to_numpy()])
    return FeatureTables(user, item_stats, attrs, day_stamp(np.array([snapshot_day]))[0])


def _user_stats(events, day, code, n, purchased, price, first_day, last_day, snapshot_day,
                params: StatsParams) -> pd.DataFrame:
    # daily aggregates per (user, day): offers, purchases, money paid
    agg = pd.DataFrame({"k": code, "d": day, "o": 1.0, "p": purchased, "paid": price * purchased})
    agg = agg.groupby(["k", "d"], sort=False, as_index=False).sum()
    daily = _Daily(agg["k"].to_numpy(), agg["d"].to_numpy(),
                   agg[["o", "p", "paid"]].to_numpy(), first_day, last_day)
    qk, qd = _queries(code, day, n, snapshot_day)
    s7, s30 = daily.window(qk, qd, 7), daily.window(qk, qd, 30)
    o30, p30, paid30 = s30[:, 0], s30[:, 1], s30[:, 2]
    out = pd.DataFrame({
        "key": qk,
        "event_timestamp": day_stamp(qd),
        "user_offers_7d": np.rint(s7[:, 0]).astype(np.int64),
        "user_purchases_7d": np.rint(s7[:, 1]).astype(np.int64),
        "user_offers_30d": np.rint(o30).astype(np.int64),
        "user_purchases_30d": np.rint(p30).astype(np.int64),
        "user_purchase_rate_30d": _smoothed(p30, o30, params),
        "user_avg_price_paid_30d": np.divide(paid30, p30, out=np.zeros_like(paid30), where=p30 > 0),
    })
    out["user_fav_category_l1_30d"] = _favourite_l1(events, day, code, qk, qd, first_day, last_day)
    # last day with a purchase strictly before the query day
    bought = agg[agg["p"] > 0]
    pdaily = _Daily(bought["k"].to_numpy(), bought["d"].to_numpy(),
                    np.zeros(len(bought)), first_day, last_day)
    idx = pdaily.last_before(qk, qd)
    since = np.where(idx >= 0, qd - pdaily.day[np.maximum(idx, 0)], params.days_since_cap)
    out["user_days_since_purchase"] = np.minimum(since, params.days_since_cap).astype(np.int64)
    return out


def _favourite_l1(events, day, code, qk, qd, first_day, last_day) -> np.ndarray:
    """(q,) the l1 category offered most often to the user in [qd - 30, qd); None if none.

    Ties go to the alphabetically first category, so the result is deterministic.
    """
    l1 = events["category_l1"].astype(object).where(events["category_l1"].notna(), None)
    valid = l1.notna().to_numpy()
    if not valid.any():
        return np.full(len(qk), None, dtype=object)
    cat_code, cats = pd.factorize(l1[valid])
    pair = pd.DataFrame({"k": code[valid], "c": cat_code, "d": day[valid]})
    # (user, category) keys, numbered 0..pairs-1
    pair_code, pairs = pd.factorize(pair["k"].to_numpy() * len(cats) + pair["c"].to_numpy())
    pair["pk"] = pair_code
    agg = pair.groupby(["pk", "d"], sort=False, as_index=False).size()
    daily = _Daily(agg["pk"].to_numpy(), agg["d"].to_numpy(), agg["size"].to_numpy(),
                   first_day, last_day)
    # every query (user, day) crossed with that user's categories
    pk_user = pd.DataFrame({"k": pairs // len(cats), "c": pairs % len(cats),
                            "pk": np.arange(len(pairs))})
    q = pd.DataFrame({"k": qk, "d": qd, "row": np.arange(len(qk))})
    cross = q.merge(pk_user, on="k", how="inner")
    cross["n"] = daily.window(cross["pk"].to_numpy(), cross["d"].to_numpy(), 30)[:, 0]
    cross = cross[cross["n"] > 0]
    cross["name"] = np.asarray(cats, dtype=object)[cross["c"].to_numpy()]
    best = cross.sort_values(["row", "n", "name"], ascending=[True, False, True]).drop_duplicates("row")
    fav = np.full(len(qk), None, dtype=object)
    fav[best["row"].to_numpy()] = best["name"].to_numpy()
    return fav


def _item_stats(day, code, n, purchased, first_day, last_day, snapshot_day,
                params: StatsParams) -> pd.DataFrame:
    agg = pd.DataFrame({"k": code, "d": day, "o": 1.0, "p": purchased})
    agg = agg.groupby(["k", "d"], sort=False, as_index=False).sum()
    daily = _Daily(agg["k"].to_numpy(), agg["d"].to_numpy(), agg[["o", "p"]].to_numpy(),
                   first_day, last_day)
    qk, qd = _queries(code, day, n, snapshot_day)
    out = pd.DataFrame({"key": qk, "event_timestamp": day_stamp(qd)})
    for w in WINDOWS:
        s = daily.window(qk, qd, w)
        out[f"item_offers_{w}d"] = np.rint(s[:, 0]).astype(np.int64)
        out[f"item_purchases_{w}d"] = np.rint(s[:, 1]).astype(np.int64)
        out[f"item_purchase_rate_{w}d"] = _smoothed(s[:, 1], s[:, 0], params)
    return out[["key", "event_timestamp", "item_offers_7d", "item_purchases_7d", "item_purchase_rate_7d",
                "item_offers_30d", "item_purchases_30d", "item_purchase_rate_30d"]]


def _item_attributes(events, day, code, n, first_day, last_day, snapshot_day) -> pd.DataFrame:
    """Attributes of the item's last event before each query day (nulls before its first day)."""
    cols = ["category_l1", "category_l2", "category_l3", "brand", "price"]
    last = pd.DataFrame({"k": code, "d": day, "ts": events["event_timestamp"].to_numpy(),
                         "seq": np.arange(len(code))})
    for c in cols[:-1]:
        last[c] = events[c].astype(object).where(events[c].notna(), None).to_numpy()
    last["price"] = events["price"].to_numpy(dtype=np.float64, na_value=np.nan)
    # the day's last event (latest timestamp, then latest row) carries the day's attributes
    last = last.sort_values(["k", "d", "ts", "seq"]).drop_duplicates(["k", "d"], keep="last")
    daily = _Daily(last["k"].to_numpy(), last["d"].to_numpy(), np.zeros(len(last)), first_day, last_day)
    # _Daily sorted by (key, day) already; keep the attribute rows in that order
    last = last.sort_values(["k", "d"]).reset_index(drop=True)
    qk, qd = _queries(code, day, n, snapshot_day)
    idx = daily.last_before(qk, qd)
    have = idx >= 0
    out = pd.DataFrame({"key": qk, "event_timestamp": day_stamp(qd)})
    for c in cols:
        vals = last[c].to_numpy()[np.maximum(idx, 0)]
        if c == "price":
            out["item_price"] = np.where(have, vals.astype(np.float64), np.nan)
        else:
            out[f"item_{c}"] = np.where(have, vals, None).astype(object)
    out["item_price_band"] = price_band(out["item_price"]).to_numpy()
    return out[["key", "event_timestamp", "item_category_l1", "item_category_l2", "item_category_l3",
                "item_brand", "item_price", "item_price_band"]]
