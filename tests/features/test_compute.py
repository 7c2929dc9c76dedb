"""Feature tables: every value equals a direct recomputation from the events strictly before
its stamp, and changing the future never changes the past (no leakage)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.compute import StatsParams, compute_feature_tables, price_band

P = StatsParams(rate_prior=0.05, rate_prior_weight=20.0, days_since_cap=365)
DAY = pd.Timedelta(days=1)


def naive_user(ev: pd.DataFrame, stamp: pd.Timestamp) -> dict:
    """The user features of the events ``ev`` of one user, as of ``stamp``, by brute force."""
    past = ev[ev["event_timestamp"] < stamp]
    w7 = past[past["event_timestamp"] >= stamp - 7 * DAY]
    w30 = past[past["event_timestamp"] >= stamp - 30 * DAY]
    bought30 = w30[w30["purchased"] == 1]
    counts = w30["category_l1"].value_counts()
    fav = sorted(counts[counts == counts.max()].index)[0] if len(counts) else None
    bought = past[past["purchased"] == 1]
    since = P.days_since_cap if bought.empty else min(
        P.days_since_cap, (stamp - bought["event_timestamp"].max().floor("D")).days)
    return {
        "user_offers_7d": len(w7), "user_purchases_7d": int(w7["purchased"].sum()),
        "user_offers_30d": len(w30), "user_purchases_30d": len(bought30),
        "user_purchase_rate_30d": (len(bought30) + P.rate_prior * P.rate_prior_weight)
        / (len(w30) + P.rate_prior_weight),
        "user_avg_price_paid_30d": float(bought30["price"].mean()) if len(bought30) else 0.0,
        "user_fav_category_l1_30d": fav, "user_days_since_purchase": since,
    }


def naive_item(ev: pd.DataFrame, stamp: pd.Timestamp) -> dict:
    past = ev[ev["event_timestamp"] < stamp]
    out = {}
    for w in (7, 30):
        win = past[past["event_timestamp"] >= stamp - w * DAY]
        o, p = len(win), int(win["purchased"].sum())
        out |= {f"item_offers_{w}d": o, f"item_purchases_{w}d": p,
                f"item_purchase_rate_{w}d": (p + P.rate_prior * P.rate_prior_weight) / (o + P.rate_prior_weight)}
    last = past.iloc[-1] if len(past) else None  # events are sorted by time
    for c in ("category_l1", "category_l2", "category_l3", "brand"):
        out[f"item_{c}"] = None if last is None else last[c]
    out["item_price"] = np.nan if last is None else float(last["price"])
    out["item_price_band"] = price_band([out["item_price"]])[0]
    return out


def assert_rows_match(table: pd.DataFrame, key: str, events: pd.DataFrame, naive, n: int = 150) -> None:
    """Compares a seeded sample of ``n`` rows (brute force is slow) with ``naive``."""
    groups = dict(tuple(events.groupby(key)))
    for row in table.sample(n=min(n, len(table)), random_state=0).itertuples(index=False):
        want = naive(groups[getattr(row, key)], row.event_timestamp)
        want = {k: v for k, v in want.items() if k in table.columns}
        assert len(want) == len(table.columns) - 2
        got = {k: getattr(row, k) for k in want}
        for k, v in want.items():
            if isinstance(v, float):
                assert got[k] == pytest.approx(v, nan_ok=True), (k, row)
            else:
                assert got[k] == v or (v is None and got[k] is None), (k, row)


@pytest.fixture(scope="module")
def tables(events):
    return compute_feature_tables(events, P)


def test_user_stats_equal_direct_recomputation(tables, events):
    assert_rows_match(tables.user_daily_stats, "user_id", events, naive_user)


def test_item_stats_and_attributes_equal_direct_recomputation(tables, events):
    assert_rows_match(tables.item_daily_stats, "item_id", events, naive_item)
    assert_rows_match(tables.item_attributes, "item_id", events, naive_item)


def naive_user_category(ev: pd.DataFrame, stamp: pd.Timestamp) -> dict:
    """The user x category lists of the events ``ev`` of one user, as of ``stamp``."""
    past = ev[ev["event_timestamp"] < stamp]
    out = {}
    for lv in ("l1", "l2"):
        w30 = past[past["event_timestamp"] >= stamp - 30 * DAY].dropna(subset=[f"category_{lv}"])
        cats = sorted(w30[f"category_{lv}"].unique())
        rows = {k: [] for k in ("offers_7d", "purchases_7d", "offers_30d", "purchases_30d", "purchase_rate_30d")}
        for c in cats:
            in30 = w30[w30[f"category_{lv}"] == c]
            in7 = in30[in30["event_timestamp"] >= stamp - 7 * DAY]
            o, p = len(in30), int(in30["purchased"].sum())
            rows["offers_7d"].append(len(in7))
            rows["purchases_7d"].append(int(in7["purchased"].sum()))
            rows["offers_30d"].append(o)
            rows["purchases_30d"].append(p)
            rows["purchase_rate_30d"].append((p + P.rate_prior * P.rate_prior_weight) / (o + P.rate_prior_weight))
        out[f"ucat_{lv}_keys"] = cats
        out.update({f"ucat_{lv}_{k}_list": v for k, v in rows.items()})
    return out


def test_user_category_lists_equal_direct_recomputation(tables, events):
    table = tables.user_category_stats
    groups = dict(tuple(events.groupby("user_id")))
    nonempty = 0
    for row in table.sample(n=150, random_state=0).itertuples(index=False):
        want = naive_user_category(groups[row.user_id], row.event_timestamp)
        assert set(want) == set(table.columns[2:])
        for k, v in want.items():
            got = list(getattr(row, k))
            if k.endswith("purchase_rate_30d"):
                assert got == pytest.approx(v), (k, row.user_id, row.event_timestamp)
            else:
                assert got == v, (k, row.user_id, row.event_timestamp)
        nonempty += bool(want["ucat_l2_keys"])
    assert nonempty > 100
    # one row per (user, day) of the user's grid, as the user view
    assert set(zip(table["user_id"], table["event_timestamp"])) == set(
        zip(tables.user_daily_stats["user_id"], tables.user_daily_stats["event_timestamp"]))


def test_rows_cover_every_event_day_and_a_latest_snapshot(tables, events):
    day = events["event_timestamp"].dt.floor("D")
    snapshot = day.max() + DAY
    assert tables.snapshot == snapshot
    for table, key in ((tables.user_daily_stats, "user_id"), (tables.item_daily_stats, "item_id"),
                       (tables.item_attributes, "item_id")):
        stamps = set(zip(table[key], table["event_timestamp"]))
        assert set(zip(events[key], day)) <= stamps
        latest = table[table["event_timestamp"] == snapshot]
        assert sorted(latest[key]) == sorted(events[key].unique())
        assert not table.duplicated([key, "event_timestamp"]).any()


def test_changing_the_future_leaves_past_rows_unchanged(tables, events):
    """Perturb every event from day D on (labels, prices, categories, half dropped):
    every row stamped up to D must stay exactly the same."""
    cut = events["event_timestamp"].dt.floor("D").unique()[7]
    rng = np.random.default_rng(1)
    future = events["event_timestamp"] >= cut
    changed = events.copy()
    changed.loc[future, "purchased"] = 1 - changed.loc[future, "purchased"]
    changed.loc[future, "price"] = changed.loc[future, "price"] * 3 + 1
    changed.loc[future, "category_l1"] = "other"
    changed = changed[~future | (rng.random(len(events)) < 0.5)].reset_index(drop=True)
    again = compute_feature_tables(changed, P)
    for (name, before), (_, after) in zip(tables.items(), again.items()):
        key = before.columns[0]
        b = before[before["event_timestamp"] <= cut]
        a = after[after["event_timestamp"] <= cut]
        assert set(zip(a[key], a["event_timestamp"])) <= set(zip(b[key], b["event_timestamp"])), name
        merged = a.merge(b, on=[key, "event_timestamp"], suffixes=("", "_orig"))
        assert len(merged) == len(a) and len(a) > 0
        for col in before.columns[2:]:
            pd.testing.assert_series_equal(merged[col], merged[f"{col}_orig"], check_names=False)


def test_empty_or_incomplete_events_are_refused(events):
    with pytest.raises(ValueError, match="no transactions"):
        compute_feature_tables(events.iloc[:0])
    with pytest.raises(ValueError, match="brand"):
        compute_feature_tables(events.drop(columns="brand"))
