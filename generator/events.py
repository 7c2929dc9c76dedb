"""Offers drawn from the world: who saw which item when, where, at which position and price,
and the planted purchase probability of each, term by term.

Chunks are contiguous in time (every row's day comes from one draw of rows per day for the
whole window), and a chunk is simulated day by day: a day's offers can show a buyer one of
their earlier purchases ("buy again"), and a purchase 20-60 days earlier changes the
probability of buying the same item again (:data:`~generator.world.REPLENISH_L1`). The
purchases made so far travel from chunk to chunk in a :class:`PurchaseHistory`, which starts
with the purchases of the 60 days before the window (:func:`warm_history`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from contract.schema import COUNTRIES, DEVICES
from generator.config import GenerateConfig
from generator.world import (BUY_AGAIN_SHARE, DEVICE_EFFECT, DEVICE_SHARE, DIM, HOUR_EFFECT, HOUR_TRAFFIC,
                             REPEAT_LAG, WEEKDAY_EFFECT, WEEKDAY_TRAFFIC, World, cdf_sample, draw_world, format_ids,
                             sample_in_group, searchsorted, sigmoid)

# the planted logit's terms, in the order they are summed (see components/generate.py)
TERMS = ("category_taste", "item_taste", "user_taste", "user_bias", "item_quality", "price",
         "position", "query_match", "context", "repeat")


@dataclass
class PurchaseHistory:
    """Every (user, item) bought so far and the day of its latest purchase."""

    n_items: int
    key: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted user * n_items + item
    day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # latest purchase day per key

    def ranges(self, user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of each user's purchases in ``key``."""
        base = user.astype(np.int64) * self.n_items
        return searchsorted(self.key, base), searchsorted(self.key, base + self.n_items)

    def last_day(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """(n,) day of the latest purchase of each (user, item); -inf if never."""
        k = user.astype(np.int64) * self.n_items + item
        pos = np.minimum(searchsorted(self.key, k), max(self.key.size - 1, 0))
        found = (self.key.size > 0) & (self.key[pos] == k) if self.key.size else np.zeros(k.size, bool)
        return np.where(found, self.day[pos] if self.key.size else 0, -np.inf)

    def add(self, user: np.ndarray, item: np.ndarray, day: int) -> None:
        if user.size == 0:
            return
        k = np.concatenate([self.key, user.astype(np.int64) * self.n_items + item])
        d = np.concatenate([self.day, np.full(user.size, day, np.int64)])
        order = np.lexsort((d, k))
        k, d = k[order], d[order]
        last = np.r_[k[1:] != k[:-1], True]  # the latest day of each key sorts last
        self.key, self.day = k[last], d[last]


def _day_weights(cfg: GenerateConfig) -> np.ndarray:
    start, _ = cfg.window
    w = WEEKDAY_TRAFFIC[(start.weekday() + np.arange(cfg.days)) % 7]
    return w / w.sum()


def _chunk_days(cfg: GenerateConfig, first: int, n: int) -> np.ndarray:
    """(n,) day of rows [first, first + n) of the window's time-ordered rows."""
    per_day = np.random.default_rng([cfg.seed, 5]).multinomial(cfg.rows, _day_weights(cfg))
    ends = np.cumsum(per_day)  # row r falls on the first day whose end exceeds it
    return np.searchsorted(ends, np.arange(first, first + n), side="right")


def _day_counts(rng: np.random.Generator, days: int, n: int, piece: int = 1 << 22) -> np.ndarray:
    """(days,) how many of ``n`` days drawn uniformly from [-days, 0) fall on each, drawn
    ``piece`` (even) at a time: the counts of one ``rng.integers(-days, 0, size=n)`` (numpy
    draws these two to a 64-bit word, so even pieces read the same stream, barring a
    rejected draw, p ~ 4e-9 a value) without holding n values (143M at 100M rows)."""
    counts = np.zeros(days, np.int64)
    for a in range(0, n, piece):
        counts += np.bincount(rng.integers(-days, 0, size=min(piece, n - a)) + days, minlength=days)
    return counts


def warm_history(cfg: GenerateConfig, world: World) -> PurchaseHistory:
    """The purchases of the ``REPEAT_LAG[1]`` days before the window, so that the window
    starts in a steady state (buyers already have earlier purchases to buy again).

    The earlier days get the window's traffic per day; their offers are scored without
    repeat effects and without drift, in pieces of ``chunk_rows``.
    """
    history = PurchaseHistory(len(world.item_ids))
    if cfg.replenish == 0:  # no repeat purchases, no buy-again offers: earlier buys change nothing
        return history
    days = REPEAT_LAG[1]
    n = int(round(cfg.rows / cfg.days * days))
    rng = np.random.default_rng([cfg.seed, 6])
    ends = np.cumsum(_day_counts(rng, days, n))   # the sorted days, as the end of each day's run
    for a in range(0, n, cfg.chunk_rows):
        day = np.searchsorted(ends, np.arange(a, min(a + cfg.chunk_rows, n)), side="right") - days
        ev = _offers(cfg, world, rng, day, drift_on=False)
        prob = sigmoid(world.intercept + sum(logit_terms(cfg, world, ev).values()))
        bought = rng.random(prob.size) < prob
        for d in np.unique(ev["day"][bought]):  # one add per day keeps each pair's latest day
            sel = bought & (ev["day"] == d)
            history.add(ev["user"][sel], ev["item"][sel], int(d))
    return history


def _offers(cfg: GenerateConfig, world: World, rng: np.random.Generator, day: np.ndarray,
            drift_on: bool = True) -> dict[str, np.ndarray]:
    """Who is offered which item, where and how, for rows on ``day`` (n,), as index arrays."""
    n = day.size
    n_leaf = len(world.leaf_names)
    user = cdf_sample(world.user_cdf, rng.random(n))
    hour = rng.choice(24, size=n, p=HOUR_TRAFFIC / HOUR_TRAFFIC.sum())
    second = rng.integers(0, 3600, size=n)
    weekday = (cfg.window[0].weekday() + day) % 7
    drift = cfg.drift if drift_on else 0.0
    drifted = (day >= cfg.days - cfg.drift_days) & (drift > 0)

    # intent: the leaf the user searches or browses in, ~ softmax(leaf logits) per row
    uvec = world.user_vec[user]                                        # (n, DIM)
    leaf_logit = 1.5 * uvec @ world.leaf_vec.T                        # (n, L), then in place
    leaf_logit /= np.sqrt(DIM)
    leaf_logit += world.leaf_prior
    if drifted.any():
        leaf_logit += (2.5 * drift * drifted)[:, None] * world.drift_boost[None, :]
    leaf_logit -= leaf_logit.max(axis=1, keepdims=True)
    cum = np.cumsum(np.exp(leaf_logit, out=leaf_logit), axis=1, out=leaf_logit)  # unnormalised cdf
    intent = np.minimum((cum < (rng.random(n) * cum[:, -1])[:, None]).sum(axis=1), n_leaf - 1)

    search = rng.random(n) < 0.45
    query = sample_in_group(world.leaf_query_key, world.leaf_query_order, intent, rng.random(n))
    query = np.where(search, query, -1)

    # which item is shown: mostly from the intent leaf (or its l2), else a popular item
    r = rng.random(n)
    p_leaf = np.where(search, 0.65, 0.4)
    p_l2 = np.where(search, 0.2, 0.0)
    l2 = world.leaf_l2[intent]
    pick = (rng.random(n) * world.l2_size[l2]).astype(np.int64)
    sibling = world.l2_leaf_table[l2, pick]                            # a random leaf of the same l2
    shown_leaf = np.where(r < p_leaf, intent, sibling)
    in_leaf = sample_in_group(world.leaf_item_key, world.leaf_item_order, shown_leaf, rng.random(n))
    popular = cdf_sample(world.item_cdf, rng.random(n))
    if drift > 0:
        use_drift = drifted & (rng.random(n) < drift)
        popular = np.where(use_drift, cdf_sample(world.item_cdf_drift, rng.random(n)), popular)
    item = np.where(r < p_leaf + p_l2, in_leaf, popular)

    # where the item was shown and on what
    position = np.where(search, 1 + rng.geometric(0.12, n), rng.geometric(0.2, n))
    position = np.minimum(position, np.where(search, 48, 24))
    device = np.where(rng.random(n) < 0.8, world.user_device[user],
                      rng.choice(len(DEVICES), size=n, p=[DEVICE_SHARE[d] for d in DEVICES]))
    country = world.user_country[user]
    return {"user": user, "item": item, "query": query, "search": search, "day": day, "hour": hour,
            "second": second, "weekday": weekday, "position": position, "device": device,
            "country": country, "price_mult": np.where(drifted, 1.0 + 0.5 * drift, 1.0),
            "lag": np.full(n, np.inf)}


def logit_terms(cfg: GenerateConfig, world: World, ev: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The planted logit of each offer (without intercept), one (n,) array per name in TERMS.

    ``ev`` holds the offers' index arrays (as :func:`_offers` draws them, with the shown
    ``item`` and the days since its last purchase by the user in ``lag``).
    """
    user, item, search = ev["user"], ev["item"], ev["search"]
    item_leaf = world.item_leaf[item]
    price = np.round(world.item_price[item] * ev["price_mult"], 2)
    uvec = world.user_vec[user]                                        # (n, DIM)
    q = np.maximum(ev["query"], 0)
    q_leaf, q_l2, q_brand = world.query_leaf[q], world.query_l2[q], world.query_brand[q]
    same_leaf = item_leaf == q_leaf
    same_l2 = world.leaf_l2[item_leaf] == q_l2
    match = np.where(q_leaf >= 0, np.where(same_leaf, 1.0, np.where(same_l2, 0.4, 0.0)),
                     np.where(same_l2, 0.7, 0.0))
    match += np.where(q_brand >= 0, np.where(world.item_brand[item] == q_brand, 0.6, -0.4), 0.0)
    match = np.where(search, match, 0.0)

    leaf_vec = world.leaf_vec[item_leaf]                               # (n, DIM)
    item_dev = world.item_vec[item]                                    # (n, DIM)
    sens = world.user_price_sens[user] * np.where(search, world.query_price_mult[q], 1.0)
    rel_price = np.log(price / world.leaf_median_price[item_leaf])
    device_eff = np.array([DEVICE_EFFECT[d] for d in DEVICES])[ev["device"]]
    country_eff = np.linspace(-0.1, 0.1, len(COUNTRIES))[ev["country"]]
    lag = ev["lag"]
    in_lag = (lag >= REPEAT_LAG[0]) & (lag <= REPEAT_LAG[1])
    return {
        "category_taste": 0.9 * np.einsum("nd,nd->n", uvec, leaf_vec) / np.sqrt(DIM),
        "item_taste": cfg.item_taste * np.einsum("nd,nd->n", uvec, item_dev) / np.sqrt(DIM),
        "user_taste": cfg.user_taste * np.einsum("nd,nd->n", world.user_taste[user], leaf_vec + item_dev)
        / np.sqrt(DIM),
        "user_bias": world.user_bias[user],
        "item_quality": world.item_quality[item],
        "price": -0.8 * sens * rel_price - 0.1 * np.log(price / 20.0),
        "position": -0.45 * np.log(ev["position"]),
        "query_match": 1.6 * match - 0.4 * (~search),
        "context": HOUR_EFFECT[ev["hour"]] + WEEKDAY_EFFECT[ev["weekday"]] + device_eff + country_eff,
        "repeat": cfg.replenish * np.where(in_lag, world.l1_replenish[world.leaf_l1[item_leaf]], 0.0),
    }


@dataclass
class ChunkDraw:
    """One chunk's offers in time order: index arrays, planted terms, probability and label."""

    first: int
    ev: dict[str, np.ndarray]
    terms: dict[str, np.ndarray]
    prob: np.ndarray
    label: np.ndarray


def simulate_chunk(cfg: GenerateConfig, world: World, chunk: int,
                   history: PurchaseHistory | None = None) -> ChunkDraw:
    """Chunk number ``chunk``, simulated day by day on top of ``history`` (updated in place).

    Without a history (a chunk drawn on its own) it starts from :func:`warm_history`.
    """
    first = chunk * cfg.chunk_rows
    n = min(cfg.chunk_rows, cfg.rows - first)
    if history is None:
        history = warm_history(cfg, world)
    rng = np.random.default_rng([cfg.seed, 2, chunk])
    ev = _offers(cfg, world, rng, _chunk_days(cfg, first, n))
    order = np.argsort(ev["day"] * 86_400 + ev["hour"] * 3_600 + ev["second"], kind="stable")
    ev = {k: v[order] for k, v in ev.items()}
    u_again, u_pick, u_label = rng.random(n), rng.random(n), rng.random(n)

    terms = {name: np.empty(n) for name in TERMS}
    prob, label = np.empty(n), np.zeros(n, np.int64)
    bounds = np.flatnonzero(np.r_[True, ev["day"][1:] != ev["day"][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):  # one day at a time: its buys feed later days
        day = int(ev["day"][a])
        user = ev["user"][a:b]
        lo, hi = history.ranges(user)
        again = (hi > lo) & ~ev["search"][a:b] & (u_again[a:b] < BUY_AGAIN_SHARE) & (cfg.replenish > 0)
        pick = np.minimum(lo + (u_pick[a:b] * (hi - lo)).astype(np.int64), max(history.key.size - 1, 0))
        if history.key.size:
            ev["item"][a:b] = np.where(again, history.key[pick] - user.astype(np.int64) * history.n_items,
                                       ev["item"][a:b])
        ev["lag"][a:b] = day - history.last_day(user, ev["item"][a:b])
        part = logit_terms(cfg, world, {k: v[a:b] for k, v in ev.items()})
        for name in TERMS:
            terms[name][a:b] = part[name]
        prob[a:b] = sigmoid(world.intercept + sum(part.values()))
        label[a:b] = u_label[a:b] < prob[a:b]
        bought = label[a:b] == 1
        history.add(user[bought], ev["item"][a:b][bought], day)
    return ChunkDraw(first=first, ev=ev, terms=terms, prob=prob, label=label)


def generate_chunk(cfg: GenerateConfig, world: World, chunk: int,
                   history: PurchaseHistory | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chunk number ``chunk`` as (clean canonical frame, truth frame), before corruption.

    The frame has the canonical columns with ``event_timestamp`` as a UTC datetime. Pass the
    same ``history`` to chunks 0, 1, ... in turn so that repeat purchases span chunks.
    """
    draw = simulate_chunk(cfg, world, chunk, history)
    ev, n = draw.ev, draw.prob.size
    start, _ = cfg.window
    offset = ev["day"] * 86_400 + ev["hour"] * 3_600 + ev["second"]      # seconds since start
    event_id = format_ids(f"ev{cfg.seed}-", draw.first + np.arange(n), 10)
    leaf = world.item_leaf[ev["item"]]
    names = np.array(world.leaf_names, dtype=object)                     # (L, 3)
    query = np.where(ev["query"] >= 0, world.query_text[np.maximum(ev["query"], 0)], "")
    frame = pd.DataFrame({
        "event_id": event_id,
        "event_timestamp": start + pd.to_timedelta(offset, unit="s"),
        "user_id": world.user_ids[ev["user"]],
        "item_id": world.item_ids[ev["item"]],
        "query": query,
        "category_l1": names[leaf, 0],
        "category_l2": names[leaf, 1],
        "category_l3": names[leaf, 2],
        "brand": world.brand_names[world.item_brand[ev["item"]]],
        "price": np.round(world.item_price[ev["item"]] * ev["price_mult"], 2).astype("float64"),
        "position": ev["position"].astype("int64"),
        "device": np.array(DEVICES, dtype=object)[ev["device"]],
        "country": np.array(COUNTRIES, dtype=object)[ev["country"]],
        "purchased": draw.label,
    })
    truth = pd.DataFrame({"event_id": event_id, "purchase_prob": draw.prob.astype("float64")})
    return frame, truth


def build_world(cfg: GenerateConfig) -> World:
    """The world of ``cfg`` with its intercept calibrated to ``cfg.base_rate``."""
    world = draw_world(cfg)
    world.intercept = _calibrate(cfg, world)
    return world


def _calibrate(cfg: GenerateConfig, world: World) -> float:
    """Intercept c with mean(sigmoid(c + z)) == base_rate on a calibration sample (offers
    without drift and without repeat purchases)."""
    rng = np.random.default_rng([cfg.seed, 1])
    day = rng.choice(cfg.days, size=50_000, p=_day_weights(cfg))
    z = sum(logit_terms(cfg, world, _offers(cfg, world, rng, day, drift_on=False)).values())
    lo, hi = -20.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sigmoid(mid + z).mean() > cfg.base_rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2
