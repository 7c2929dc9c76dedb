"""Offers drawn from the world: who saw which item when, where, at which position and price,
and the planted purchase probability of each."""

from __future__ import annotations

import numpy as np
import pandas as pd

from contract.schema import COUNTRIES, DEVICES
from generator.config import GenerateConfig
from generator.world import (DEVICE_EFFECT, DEVICE_SHARE, DIM, HOUR_EFFECT, HOUR_TRAFFIC, WEEKDAY_EFFECT,
                             WEEKDAY_TRAFFIC, World, cdf_sample, draw_world, sample_in_group, sigmoid)


def _events(cfg: GenerateConfig, world: World, rng: np.random.Generator, n: int,
            drift_on: bool = True) -> dict[str, np.ndarray]:
    """Draws ``n`` offers as arrays of indices and the planted logit (without intercept)."""
    n_leaf = len(world.leaf_names)
    user = cdf_sample(world.user_cdf, rng.random(n))

    # when: day (weekend a bit busier), hour (evening peak), second within the hour
    start, _ = cfg.window
    first_weekday = start.weekday()
    day_w = WEEKDAY_TRAFFIC[(first_weekday + np.arange(cfg.days)) % 7]
    day = rng.choice(cfg.days, size=n, p=day_w / day_w.sum())
    hour = rng.choice(24, size=n, p=HOUR_TRAFFIC / HOUR_TRAFFIC.sum())
    second = rng.integers(0, 3600, size=n)
    weekday = (first_weekday + day) % 7
    drift = cfg.drift if drift_on else 0.0
    drifted = (day >= cfg.days - cfg.drift_days) & (drift > 0)

    # intent: the leaf the user searches or browses in, ~ softmax(leaf logits) per row
    uvec = world.user_vec[user]                                        # (n, DIM)
    leaf_logit = 1.5 * uvec @ world.leaf_vec.T / np.sqrt(DIM) + world.leaf_prior  # (n, L)
    leaf_logit += (2.5 * drift * drifted)[:, None] * world.drift_boost[None, :]
    leaf_logit -= leaf_logit.max(axis=1, keepdims=True)
    cum = np.cumsum(np.exp(leaf_logit), axis=1)                        # (n, L) unnormalised cdf
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
    item_leaf = world.item_leaf[item]

    # where the item was shown and on what
    position = np.where(search, 1 + rng.geometric(0.12, n), rng.geometric(0.2, n))
    position = np.minimum(position, np.where(search, 48, 24))
    device = np.where(rng.random(n) < 0.8, world.user_device[user],
                      rng.choice(len(DEVICES), size=n, p=[DEVICE_SHARE[d] for d in DEVICES]))
    country = world.user_country[user]
    price = world.item_price[item] * np.where(drifted, 1.0 + 0.5 * drift, 1.0)
    price = np.round(price, 2)

    # the planted logit, term by term
    q = np.maximum(query, 0)
    q_leaf, q_l2, q_brand = world.query_leaf[q], world.query_l2[q], world.query_brand[q]
    same_leaf = item_leaf == q_leaf
    same_l2 = world.leaf_l2[item_leaf] == q_l2
    match = np.where(q_leaf >= 0, np.where(same_leaf, 1.0, np.where(same_l2, 0.4, 0.0)),
                     np.where(same_l2, 0.7, 0.0))
    match += np.where(q_brand >= 0, np.where(world.item_brand[item] == q_brand, 0.6, -0.4), 0.0)
    match = np.where(search, match, 0.0)

    affinity = np.einsum("nd,nd->n", uvec, world.item_vec[item]) / np.sqrt(DIM)
    sens = world.user_price_sens[user] * np.where(search, world.query_price_mult[q], 1.0)
    rel_price = np.log(price / world.leaf_median_price[item_leaf])
    device_eff = np.array([DEVICE_EFFECT[d] for d in DEVICES])[device]
    country_eff = np.linspace(-0.1, 0.1, len(COUNTRIES))[country]
    logit = (0.9 * affinity
             + world.user_bias[user] + world.item_quality[item]
             - 0.8 * sens * rel_price - 0.1 * np.log(price / 20.0)
             - 0.45 * np.log(position)
             + 1.6 * match - 0.4 * (~search)
             + HOUR_EFFECT[hour] + WEEKDAY_EFFECT[weekday] + device_eff + country_eff)
    return {"user": user, "item": item, "query": query, "day": day, "hour": hour, "second": second,
            "weekday": weekday, "position": position, "device": device, "country": country,
            "price": price, "logit": logit}


def generate_chunk(cfg: GenerateConfig, world: World, chunk: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chunk number ``chunk`` as (clean canonical frame, truth frame), before corruption.

    The frame has the canonical columns with ``event_timestamp`` as a UTC datetime.
    """
    first = chunk * cfg.chunk_rows
    n = min(cfg.chunk_rows, cfg.rows - first)
    rng = np.random.default_rng([cfg.seed, 2, chunk])
    ev = _events(cfg, world, rng, n)
    prob = sigmoid(world.intercept + ev["logit"])
    label = (rng.random(n) < prob).astype("int64")

    start, _ = cfg.window
    offset = ev["day"] * 86_400 + ev["hour"] * 3_600 + ev["second"]      # seconds since start
    order = np.argsort(offset, kind="stable")
    ev = {k: v[order] for k, v in ev.items()}
    prob, label, offset = prob[order], label[order], offset[order]

    event_id = np.array([f"ev{cfg.seed}-{first + k:010d}" for k in range(n)], dtype=object)
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
        "price": ev["price"].astype("float64"),
        "position": ev["position"].astype("int64"),
        "device": np.array(DEVICES, dtype=object)[ev["device"]],
        "country": np.array(COUNTRIES, dtype=object)[ev["country"]],
        "purchased": label,
    })
    truth = pd.DataFrame({"event_id": event_id, "purchase_prob": prob.astype("float64")})
    return frame, truth


def build_world(cfg: GenerateConfig) -> World:
    """The world of ``cfg`` with its intercept calibrated to ``cfg.base_rate``."""
    world = draw_world(cfg)
    world.intercept = _calibrate(cfg, world)
    return world


def _calibrate(cfg: GenerateConfig, world: World) -> float:
    """Intercept c with mean(sigmoid(c + z)) == base_rate on a calibration sample."""
    rng = np.random.default_rng([cfg.seed, 1])
    z = _events(cfg, world, rng, 50_000, drift_on=False)["logit"]
    lo, hi = -20.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sigmoid(mid + z).mean() > cfg.base_rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2
