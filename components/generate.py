"""`robeflow generate`: synthetic shop transactions with a planted purchase probability.

One row is one product offered to one user (schema in :mod:`components.schema`). Every
row's purchase probability is planted by a known model and written beside the data
(``--truth``: ``event_id, purchase_prob``), never as a feature; its AUC is the best any
model can reach on the data (the "oracle AUC").

The planted model (logit of the purchase probability, summed per row):
  - user x item affinity: latent user vectors (d=8) dotted with item vectors, which sit
    near their category's vector in a hierarchy l1 > l2 > l3 (beauty > hair care >
    men's shampoo); users also search and browse mostly in categories they like;
  - per-user propensity and per-item quality (popular items tend to be the good ones);
  - price: relative to the category's median price, scaled by the user's price
    sensitivity (doubled by a "cheap" query, halved by "premium");
  - position bias (-log position), query-item match (same l3 / l2 / brand as the query),
    hour-of-day, day-of-week, device and country effects;
  - an intercept calibrated so the mean rate is ``base_rate`` (a few percent).
Users, items, brands (within an l1) and query phrasings are drawn with Zipf-distributed
popularity. All of it is learnable from the canonical columns plus per-user/per-item
history (ids, categories, brand, price, position, hour, weekday, query text).

Drift (``drift`` in 0..1, applied to rows on the last ``drift_days`` days) shifts:
  - ``category_l1/l2/l3`` (and so ``query``): two l1 categories gain weight exp(2.5 * drift);
  - ``item_id``/``brand``: item popularity moves to a different Zipf ranking (share ``drift``);
  - ``price``: all prices are multiplied by 1 + 0.5 * drift;
  - ``purchased`` follows (dearer items sell less).
Other columns keep their distributions.

Corruption (``corrupt_fraction`` of rows, every kind in :data:`CORRUPTIONS` in turn):
nulls in key columns, negative prices, labels outside {0, 1}, unparseable timestamps,
timestamps outside the data window, unknown devices and countries, positions < 1, and
exact duplicates of another row (duplicate ``event_id``). The truth holds one row per
distinct event id (a duplicate's replaced row is dropped from it).

Raw layout (``--out``): ``part-NNNNN.parquet`` (or ``.csv``) per chunk of ``chunk_rows``,
canonical columns, ``event_timestamp`` as ISO-8601 text (``2026-10-03T14:22:05Z``) as raw
logs have it, plus ``_generate.json`` (parameters and counts). Timestamps are sorted
within a chunk, not across chunks. ``--format criteo`` writes ``part-NNNNN.tsv`` Criteo
files instead (see :func:`to_criteo`; no corruption), truth rows in the files' row order.
Output is deterministic for a given configuration (seed, sizes and ``chunk_rows``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from components.common import StepError, atomic_dir, log, write_json
from components.params import add_params_args, as_dict, load_config
from components.schema import COLUMNS, COUNTRIES, DEVICES, KEY_COLUMNS

# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class GenerateConfig:
    rows: int = 200_000              # transactions (offers) to generate
    users: int = 20_000
    items: int = 5_000
    days: int = 28                   # window: [start_date, start_date + days)
    start_date: str = "2026-10-01"   # UTC
    seed: int = 7
    corrupt_fraction: float = 0.005  # share of rows broken on purpose
    drift: float = 0.0               # 0..1, strength of the shift on the last drift_days days
    drift_days: int = 4
    format: Literal["parquet", "csv", "criteo"] = "parquet"
    chunk_rows: int = 100_000        # rows per chunk and part file (bounds memory)
    base_rate: float = 0.03          # mean planted purchase probability

    def __post_init__(self) -> None:
        for name in ("rows", "users", "items", "days", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"generate.{name} = {getattr(self, name)}; expected >= 1")
        if not 0.0 <= self.corrupt_fraction <= 0.5:
            raise ValueError(f"generate.corrupt_fraction = {self.corrupt_fraction}; expected 0..0.5")
        if not 0.0 <= self.drift <= 1.0:
            raise ValueError(f"generate.drift = {self.drift}; expected 0..1")
        if not 0 <= self.drift_days <= self.days:
            raise ValueError(f"generate.drift_days = {self.drift_days}; expected 0..days ({self.days})")
        if not 0.001 <= self.base_rate <= 0.5:
            raise ValueError(f"generate.base_rate = {self.base_rate}; expected 0.001..0.5")
        try:
            pd.Timestamp(self.start_date)
        except ValueError:
            raise ValueError(f"generate.start_date = {self.start_date!r}; expected a date like 2026-10-01") from None

    @property
    def window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The data window [start, end) in UTC."""
        start = pd.Timestamp(self.start_date, tz="UTC").normalize()
        return start, start + pd.Timedelta(days=self.days)


@dataclass
class GenerateResult:
    rows: int
    files: list[Path]
    truth_files: list[Path]
    positive_rate: float                   # share of purchased == 1 among generated labels
    mean_purchase_prob: float
    corrupted: dict[str, int] = field(default_factory=dict)  # kind -> rows
    window: tuple[str, str] = ("", "")     # [start, end) ISO dates
    seconds: float = 0.0


# ---------------------------------------------------------------------------- world

TAXONOMY: dict[str, dict[str, tuple[str, ...]]] = {
    "beauty": {"hair care": ("men's shampoo", "conditioner", "hair dryers"),
               "skin care": ("face cream", "sunscreen", "cleanser"),
               "fragrance": ("perfume", "aftershave", "body mist")},
    "electronics": {"phones": ("smartphones", "phone cases", "chargers"),
                    "audio": ("headphones", "speakers", "earbuds"),
                    "computers": ("laptops", "monitors", "keyboards")},
    "home": {"kitchen": ("coffee makers", "knives", "cookware"),
             "furniture": ("sofas", "desks", "shelves"),
             "bedding": ("pillows", "duvets", "bed sheets")},
    "fashion": {"shoes": ("sneakers", "boots", "sandals"),
                "clothing": ("t-shirts", "jeans", "jackets"),
                "accessories": ("watches", "sunglasses", "backpacks")},
    "sports": {"fitness": ("yoga mats", "dumbbells", "resistance bands"),
               "outdoor": ("tents", "hiking boots", "sleeping bags"),
               "cycling": ("bike helmets", "bike lights", "cycling gloves")},
    "toys": {"games": ("board games", "puzzles", "card games"),
             "building": ("building blocks", "model kits", "marble runs"),
             "baby": ("rattles", "soft toys", "play mats")},
    "grocery": {"drinks": ("coffee beans", "green tea", "sparkling water"),
                "snacks": ("chocolate", "crisps", "nuts"),
                "pantry": ("olive oil", "pasta", "spices")},
    "books": {"fiction": ("crime novels", "fantasy", "romance"),
              "non-fiction": ("cookbooks", "biographies", "travel guides"),
              "children": ("picture books", "early readers", "activity books")},
}
# log of the typical price per l1 (EUR): electronics dear, grocery cheap
L1_LOG_PRICE = {"beauty": 3.0, "electronics": 4.6, "home": 4.0, "fashion": 3.7,
                "sports": 3.6, "toys": 3.2, "grocery": 1.9, "books": 2.7}
MODIFIERS = ("best", "cheap", "new", "sale", "gift", "premium", "small", "large")
SYLLABLES = ("lu", "mo", "ra", "ve", "ko", "ti", "na", "sel", "dor", "vin", "ar", "qu",
             "zen", "pol", "mir", "ca", "bel", "fi", "ro", "sta")
BRANDS_PER_L1 = 24
DIM = 8  # latent factor dimension

DEVICE_EFFECT = {"mobile": -0.15, "desktop": 0.1, "tablet": 0.0, "app_ios": 0.25, "app_android": 0.15}
DEVICE_SHARE = {"mobile": 0.38, "desktop": 0.27, "tablet": 0.07, "app_ios": 0.14, "app_android": 0.14}
COUNTRY_SHARE = np.array([0.22, 0.14, 0.16, 0.09, 0.08, 0.06, 0.06, 0.04, 0.1, 0.05])
# traffic by hour of day (UTC, a European shop): quiet nights, evening peak
HOUR_TRAFFIC = np.array([3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 7, 8, 7, 7, 7, 7, 8, 9, 11, 12, 11, 8, 5], float)
HOUR_EFFECT = np.array([-0.3] * 6 + [-0.1] * 3 + [0.0] * 9 + [0.15, 0.3, 0.35, 0.3, 0.1, -0.1])
WEEKDAY_TRAFFIC = np.array([0.95, 0.95, 0.97, 1.0, 1.05, 1.12, 1.1])  # Monday = 0
WEEKDAY_EFFECT = np.array([-0.1, -0.05, 0.0, 0.0, 0.05, 0.2, 0.25])

CORRUPTIONS: tuple[str, ...] = (
    "null_key", "negative_price", "bad_label", "bad_timestamp", "unknown_device",
    "duplicate_event_id", "bad_position", "unknown_country", "timestamp_out_of_window",
)


def _zipf(n: int, a: float) -> np.ndarray:
    """(n,) probabilities proportional to 1 / rank**a, rank 1..n."""
    w = 1.0 / np.arange(1, n + 1, dtype=float) ** a
    return w / w.sum()


@dataclass
class _World:
    """Everything fixed for a seed: catalogue, users, queries and the planted model's factors."""

    leaf_names: list[tuple[str, str, str]]  # (l1, l2, l3) per leaf
    leaf_l1: np.ndarray        # (L,) l1 index
    leaf_l2: np.ndarray        # (L,) global l2 index
    leaf_vec: np.ndarray       # (L, DIM)
    leaf_prior: np.ndarray     # (L,) log popularity of the leaf
    leaf_median_price: np.ndarray  # (L,)
    l2_leaf_table: np.ndarray  # (n_l2, max leaves per l2) leaves of each l2, padded
    l2_size: np.ndarray        # (n_l2,) leaves per l2
    drift_boost: np.ndarray    # (L,) 1 for leaves whose l1 gains weight under drift
    brand_names: np.ndarray    # (B,) object
    item_leaf: np.ndarray      # (I,)
    item_brand: np.ndarray     # (I,)
    item_vec: np.ndarray       # (I, DIM)
    item_quality: np.ndarray   # (I,)
    item_price: np.ndarray     # (I,) list price
    item_ids: np.ndarray       # (I,) object
    item_cdf: np.ndarray       # (I,) global popularity cdf over items
    item_cdf_drift: np.ndarray  # (I,) the popularity cdf under drift
    leaf_item_key: np.ndarray  # (I,) sorted keys leaf + cdf-within-leaf, for sampling in a leaf
    leaf_item_order: np.ndarray  # (I,) item index for each key
    user_vec: np.ndarray       # (U, DIM)
    user_bias: np.ndarray      # (U,)
    user_price_sens: np.ndarray  # (U,)
    user_device: np.ndarray    # (U,) index into DEVICES
    user_country: np.ndarray   # (U,) index into COUNTRIES
    user_ids: np.ndarray       # (U,) object
    user_cdf: np.ndarray       # (U,)
    query_text: np.ndarray     # (Q,) object
    query_leaf: np.ndarray     # (Q,) leaf, -1 for an l2-wide query
    query_l2: np.ndarray       # (Q,)
    query_brand: np.ndarray    # (Q,) brand, -1 if none
    query_price_mult: np.ndarray  # (Q,) multiplies the user's price sensitivity
    query_terms: np.ndarray    # (Q,) number of terms
    leaf_query_key: np.ndarray  # (Q,) sorted keys leaf + cdf-within-leaf
    leaf_query_order: np.ndarray
    intercept: float = 0.0


def _brand_name(rng: np.random.Generator) -> str:
    k = rng.integers(2, 4)
    return "".join(rng.choice(SYLLABLES, size=k)).capitalize()


def _keyed_cdf(group: np.ndarray, weight: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort members by group; key = group + cumulative weight share within the group.

    Sampling a member of group g is then ``order[searchsorted(key, g + u)]`` for u ~ U(0,1).
    """
    order = np.lexsort((np.arange(len(group)), group))
    g, w = group[order], weight[order]
    key = np.empty(len(group))
    for k in range(n_groups):
        sel = g == k
        if sel.any():
            c = np.cumsum(w[sel])
            key[sel] = k + c / c[-1]
    return key, order


def _sample_in_group(key: np.ndarray, order: np.ndarray, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(key, groups + np.minimum(u, 1 - 1e-12), side="right")
    return order[np.minimum(idx, len(order) - 1)]


def build_world(cfg: GenerateConfig) -> _World:
    """Draws the catalogue, users, queries and factors for ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 0])
    leaf_names, leaf_l1, leaf_l2, l2_names = [], [], [], []
    for i1, (l1, subs) in enumerate(TAXONOMY.items()):
        for l2, leaves in subs.items():
            l2_names.append(l2)
            for l3 in leaves:
                leaf_names.append((l1, l2, l3))
                leaf_l1.append(i1)
                leaf_l2.append(len(l2_names) - 1)
    leaf_l1, leaf_l2 = np.array(leaf_l1), np.array(leaf_l2)
    n_l1, n_l2, n_leaf = len(TAXONOMY), len(l2_names), len(leaf_names)

    # category vectors: children sit near their parent
    l1_vec = rng.normal(0, 1, (n_l1, DIM))
    l2_vec = l1_vec[[leaf_l1[leaf_l2 == k][0] for k in range(n_l2)]] + rng.normal(0, 0.5, (n_l2, DIM))
    leaf_vec = l2_vec[leaf_l2] + rng.normal(0, 0.4, (n_leaf, DIM))
    leaf_prior = np.log(_zipf(n_leaf, 0.8)[rng.permutation(n_leaf)])
    l1_price = np.array([L1_LOG_PRICE[l1] for l1 in TAXONOMY])
    leaf_median_price = np.exp(l1_price[leaf_l1] + rng.normal(0, 0.4, n_leaf))
    l2_size = np.bincount(leaf_l2, minlength=n_l2)
    l2_table = np.zeros((n_l2, l2_size.max()), dtype=np.int64)
    for k in range(n_l2):
        l2_table[k, :l2_size[k]] = np.flatnonzero(leaf_l2 == k)
    boosted_l1 = rng.choice(n_l1, size=2, replace=False)
    drift_boost = np.isin(leaf_l1, boosted_l1).astype(float)

    # brands: a pool per l1, Zipf-popular within it
    brand_names, brand_l1 = [], []
    seen: set[str] = set()
    for i1 in range(n_l1):
        while sum(1 for b in brand_l1 if b == i1) < BRANDS_PER_L1:
            name = _brand_name(rng)
            if name not in seen:
                seen.add(name)
                brand_names.append(name)
                brand_l1.append(i1)
    brand_premium = rng.normal(0, 0.25, len(brand_names))

    # items
    n_items = cfg.items
    item_leaf = rng.choice(n_leaf, size=n_items, p=np.exp(leaf_prior) / np.exp(leaf_prior).sum())
    brand_zipf = _zipf(BRANDS_PER_L1, 1.1)
    item_brand = leaf_l1[item_leaf] * BRANDS_PER_L1 + rng.choice(BRANDS_PER_L1, size=n_items, p=brand_zipf)
    item_vec = leaf_vec[item_leaf] + rng.normal(0, 0.6, (n_items, DIM))
    item_quality = rng.normal(0, 0.5, n_items)
    list_price = leaf_median_price[item_leaf] * np.exp(brand_premium[item_brand] + rng.normal(0, 0.35, n_items))
    item_price = np.maximum(np.floor(list_price) + 0.99, 0.49)
    pop_rank = np.argsort(np.argsort(-(item_quality + rng.normal(0, 0.5, n_items))))
    item_pop = _zipf(n_items, 0.9)[pop_rank]
    item_pop_drift = _zipf(n_items, 0.9)[rng.permutation(n_items)]
    leaf_item_key, leaf_item_order = _keyed_cdf(item_leaf, item_pop, n_leaf)

    # users
    n_users = cfg.users
    user_vec = rng.normal(0, 1, (n_users, DIM))
    user_bias = rng.normal(0, 0.5, n_users)
    user_price_sens = rng.lognormal(0, 0.4, n_users)
    user_device = rng.choice(len(DEVICES), size=n_users, p=[DEVICE_SHARE[d] for d in DEVICES])
    user_country = rng.choice(len(COUNTRIES), size=n_users, p=COUNTRY_SHARE / COUNTRY_SHARE.sum())
    user_pop = _zipf(n_users, 0.7)[rng.permutation(n_users)]

    # queries: per leaf, phrasings from the specific to the vague, Zipf-popular in that order
    q_text, q_leaf, q_l2, q_brand, q_mult, q_terms = [], [], [], [], [], []
    for leaf, (l1, l2, l3) in enumerate(leaf_names):
        i1 = leaf_l1[leaf]
        top_brands = i1 * BRANDS_PER_L1 + np.arange(3)
        forms = [(l3, leaf, -1, 1.0)]
        forms += [(f"{brand_names[b].lower()} {l3}", leaf, b, 1.0) for b in top_brands]
        forms += [(f"{m} {l3}", leaf, -1, {"cheap": 2.0, "premium": 0.5}.get(m, 1.0)) for m in MODIFIERS]
        forms += [(l2, -1, -1, 1.0), (f"{rng.choice(MODIFIERS)} {l2}", -1, -1, 1.0)]
        for text, ql, qb, mult in forms:
            q_text.append(text)
            q_leaf.append(ql)
            q_l2.append(leaf_l2[leaf])
            q_brand.append(qb)
            q_mult.append(mult)
            q_terms.append(len(text.split()))
    q_owner = np.repeat(np.arange(n_leaf), len(q_text) // n_leaf)
    per_leaf = len(q_text) // n_leaf
    q_weight = np.tile(_zipf(per_leaf, 1.0), n_leaf)
    leaf_query_key, leaf_query_order = _keyed_cdf(q_owner, q_weight, n_leaf)

    world = _World(
        leaf_names=leaf_names, leaf_l1=leaf_l1, leaf_l2=leaf_l2, leaf_vec=leaf_vec,
        leaf_prior=leaf_prior, leaf_median_price=leaf_median_price,
        l2_leaf_table=l2_table, l2_size=l2_size, drift_boost=drift_boost,
        brand_names=np.array(brand_names, dtype=object), item_leaf=item_leaf, item_brand=item_brand,
        item_vec=item_vec, item_quality=item_quality, item_price=item_price,
        item_ids=np.array([f"i{k:06d}" for k in range(n_items)], dtype=object),
        item_cdf=np.cumsum(item_pop), item_cdf_drift=np.cumsum(item_pop_drift),
        leaf_item_key=leaf_item_key, leaf_item_order=leaf_item_order,
        user_vec=user_vec, user_bias=user_bias, user_price_sens=user_price_sens,
        user_device=user_device, user_country=user_country,
        user_ids=np.array([f"u{k:07d}" for k in range(n_users)], dtype=object),
        user_cdf=np.cumsum(user_pop),
        query_text=np.array(q_text, dtype=object), query_leaf=np.array(q_leaf),
        query_l2=np.array(q_l2), query_brand=np.array(q_brand), query_price_mult=np.array(q_mult),
        query_terms=np.array(q_terms), leaf_query_key=leaf_query_key, leaf_query_order=leaf_query_order,
    )
    world.intercept = _calibrate(cfg, world)
    return world


def _calibrate(cfg: GenerateConfig, world: _World) -> float:
    """Intercept c with mean(sigmoid(c + z)) == base_rate on a calibration sample."""
    rng = np.random.default_rng([cfg.seed, 1])
    z = _events(cfg, world, rng, 50_000, drift_on=False)["logit"]
    lo, hi = -20.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(mid + z).mean() > cfg.base_rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _cdf_sample(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)


# ---------------------------------------------------------------------------- events


def _events(cfg: GenerateConfig, world: _World, rng: np.random.Generator, n: int,
            drift_on: bool = True) -> dict[str, np.ndarray]:
    """Draws ``n`` offers as arrays of indices and the planted logit (without intercept)."""
    n_leaf = len(world.leaf_names)
    user = _cdf_sample(world.user_cdf, rng.random(n))

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
    query = _sample_in_group(world.leaf_query_key, world.leaf_query_order, intent, rng.random(n))
    query = np.where(search, query, -1)

    # which item is shown: mostly from the intent leaf (or its l2), else a popular item
    r = rng.random(n)
    p_leaf = np.where(search, 0.65, 0.4)
    p_l2 = np.where(search, 0.2, 0.0)
    l2 = world.leaf_l2[intent]
    pick = (rng.random(n) * world.l2_size[l2]).astype(np.int64)
    sibling = world.l2_leaf_table[l2, pick]                            # a random leaf of the same l2
    shown_leaf = np.where(r < p_leaf, intent, sibling)
    in_leaf = _sample_in_group(world.leaf_item_key, world.leaf_item_order, shown_leaf, rng.random(n))
    popular = _cdf_sample(world.item_cdf, rng.random(n))
    if drift > 0:
        use_drift = drifted & (rng.random(n) < drift)
        popular = np.where(use_drift, _cdf_sample(world.item_cdf_drift, rng.random(n)), popular)
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


def generate_chunk(cfg: GenerateConfig, world: _World, chunk: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chunk number ``chunk`` as (clean canonical frame, truth frame), before corruption.

    The frame has the canonical columns with ``event_timestamp`` as a UTC datetime.
    """
    first = chunk * cfg.chunk_rows
    n = min(cfg.chunk_rows, cfg.rows - first)
    rng = np.random.default_rng([cfg.seed, 2, chunk])
    ev = _events(cfg, world, rng, n)
    prob = _sigmoid(world.intercept + ev["logit"])
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


# ---------------------------------------------------------------------------- corruption


def corrupt(frame: pd.DataFrame, truth: pd.DataFrame, fraction: float, rng: np.random.Generator,
            kind_offset: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Breaks ``round(len * fraction)`` rows, the kinds of :data:`CORRUPTIONS` in turn.

    Takes the clean frame (datetime timestamps) and returns the raw frame
    (``event_timestamp`` as ISO text, nullable ints), the truth without the ids of rows
    overwritten by duplicates, and the number of rows per kind.
    """
    n = len(frame)
    raw = frame.copy()
    secs = raw["event_timestamp"].dt.tz_convert(None).to_numpy().astype("datetime64[s]")
    raw["event_timestamp"] = np.char.add(np.datetime_as_string(secs), "Z").astype(object)
    for c in ("position", "purchased"):
        raw[c] = raw[c].astype("Int64")
    for c in ("event_id", "user_id", "item_id", "device", "country"):
        raw[c] = raw[c].astype(object)
    counts = {k: 0 for k in CORRUPTIONS}
    n_bad = int(round(n * fraction))
    if n_bad == 0 or n < 2:
        return raw, truth, counts
    rows = rng.choice(n, size=min(n_bad, n - 1), replace=False)
    clean = np.setdiff1d(np.arange(n), rows)
    dup_rows: list[int] = []
    dup_srcs: list[int] = []
    for j, row in enumerate(rows):
        kind = CORRUPTIONS[(kind_offset + j) % len(CORRUPTIONS)]
        counts[kind] += 1
        if kind == "null_key":
            raw.iat[row, raw.columns.get_loc(KEY_COLUMNS[(kind_offset + j) // len(CORRUPTIONS) % len(KEY_COLUMNS)])] = None
        elif kind == "negative_price":
            raw.iat[row, raw.columns.get_loc("price")] = -round(float(rng.uniform(0.5, 50)), 2)
        elif kind == "bad_label":
            raw.iat[row, raw.columns.get_loc("purchased")] = int(rng.choice([2, -1, 7]))
        elif kind == "bad_timestamp":
            raw.iat[row, raw.columns.get_loc("event_timestamp")] = str(
                rng.choice(["not-a-timestamp", "2026-13-45T99:00:00Z", "yesterday", "1700000000x"]))
        elif kind == "timestamp_out_of_window":
            raw.iat[row, raw.columns.get_loc("event_timestamp")] = str(
                rng.choice(["2019-03-14T09:26:53Z", "2031-01-01T00:00:00Z"]))
        elif kind == "unknown_device":
            raw.iat[row, raw.columns.get_loc("device")] = str(rng.choice(["smart_fridge", "console", "MOBILE"]))
        elif kind == "unknown_country":
            raw.iat[row, raw.columns.get_loc("country")] = str(rng.choice(["XX", "ZZ", "de"]))
        elif kind == "bad_position":
            raw.iat[row, raw.columns.get_loc("position")] = int(rng.choice([0, -3]))
        elif kind == "duplicate_event_id":
            # the same event logged twice: an exact copy of a clean row replaces this one
            dup_rows.append(row)
            dup_srcs.append(int(rng.choice(clean)))
    if dup_rows:
        dropped_ids = raw["event_id"].to_numpy()[dup_rows]
        for c in raw.columns:
            raw.loc[raw.index[dup_rows], c] = raw[c].iloc[dup_srcs].to_numpy()
        truth = truth[~truth["event_id"].isin(dropped_ids)].reset_index(drop=True)
    return raw, truth, counts


# ---------------------------------------------------------------------------- criteo


def to_criteo(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The clean canonical frame as Criteo columns (label, I1..I13, C1..C26).

    I1 price (rounded), I2 position, I3 hour, I4 weekday, I5 query terms, I6 day of
    window, I7..I13 uninformative counts (30% missing); C1 user, C2 item, C3..C5
    category l1..l3, C6 brand, C7 device, C8 country, C9 query (missing when empty),
    C10..C26 uninformative low-cardinality hashes (some missing). Categoricals are 32-bit
    hashes of ``column=value`` as 8 hex digits.
    """
    from features.criteo import CAT_COLUMNS, INT_COLUMNS

    n = len(frame)
    ts = frame["event_timestamp"]
    start = ts.min().normalize() if n else pd.Timestamp(0, tz="UTC")
    out = {"label": frame["purchased"].astype("int64").to_numpy()}
    ints = [frame["price"].round().to_numpy(), frame["position"].to_numpy(), ts.dt.hour.to_numpy(),
            ts.dt.weekday.to_numpy(), frame["query"].str.split().str.len().fillna(0).to_numpy(),
            (ts - start).dt.days.to_numpy()]
    for _ in range(7):
        noise = rng.poisson(rng.uniform(1, 30), n).astype(float)
        noise[rng.random(n) < 0.3] = np.nan
        ints.append(noise)
    for c, v in zip(INT_COLUMNS, ints):
        out[c] = np.asarray(v, dtype="float64")
    cats = [frame[c].astype(object).to_numpy() for c in
            ("user_id", "item_id", "category_l1", "category_l2", "category_l3", "brand", "device", "country")]
    cats.append(np.where(frame["query"].to_numpy() == "", None, frame["query"].to_numpy()))
    for k in range(len(CAT_COLUMNS) - len(cats)):
        noise = rng.integers(0, [3, 10, 50, 200][k % 4], n).astype(object)
        noise[rng.random(n) < 0.1 * (k % 3)] = None
        cats.append(noise)
    for c, v in zip(CAT_COLUMNS, cats):
        out[c] = _hex_hash(c, v)
    return pd.DataFrame(out)


def _hex_hash(column: str, values: np.ndarray) -> pd.Series:
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    keys = np.array([f"{column}={u}" for u in uniques], dtype=object)
    hashed = pd.util.hash_array(keys) & np.uint64(0xFFFFFFFF) if len(keys) else np.array([], np.uint64)
    hexes = np.array([f"{int(h):08x}" for h in hashed] + [None], dtype=object)
    return pd.Series(hexes[codes], dtype="string")  # code -1 (missing) picks the trailing None


# ---------------------------------------------------------------------------- core


def generate(cfg: GenerateConfig, out_dir: Path, truth_dir: Path) -> GenerateResult:
    """Generates ``cfg.rows`` transactions into ``out_dir`` and their truth into ``truth_dir``.

    Writes one part file per chunk (so memory stays bounded by ``chunk_rows``); both
    directories are replaced atomically. See the module docstring for the layout.
    """
    t0 = time.perf_counter()
    world = build_world(cfg)
    n_chunks = -(-cfg.rows // cfg.chunk_rows)
    files, truth_files = [], []
    totals = {k: 0 for k in CORRUPTIONS}
    n_pos, prob_sum, kind_offset = 0, 0.0, 0
    with atomic_dir(out_dir) as out_tmp, atomic_dir(truth_dir) as truth_tmp:
        for chunk in range(n_chunks):
            frame, truth = generate_chunk(cfg, world, chunk)
            n_pos += int(frame["purchased"].sum())
            prob_sum += float(truth["purchase_prob"].sum())
            name = f"part-{chunk:05d}"
            if cfg.format == "criteo":
                from features.criteo import write_criteo

                crit = to_criteo(frame, np.random.default_rng([cfg.seed, 4, chunk]))
                write_criteo(crit, out_tmp / f"{name}.tsv")
                files.append(out_dir / f"{name}.tsv")
            else:
                rng = np.random.default_rng([cfg.seed, 3, chunk])
                raw, truth, counts = corrupt(frame, truth, cfg.corrupt_fraction, rng, kind_offset)
                kind_offset += sum(counts.values())
                for k, v in counts.items():
                    totals[k] += v
                if cfg.format == "csv":
                    raw.to_csv(out_tmp / f"{name}.csv", index=False)
                    files.append(out_dir / f"{name}.csv")
                else:
                    raw.to_parquet(out_tmp / f"{name}.parquet", index=False)
                    files.append(out_dir / f"{name}.parquet")
            truth.astype({"event_id": "string", "purchase_prob": "float64"}).to_parquet(
                truth_tmp / f"{name}.parquet", index=False)
            truth_files.append(truth_dir / f"{name}.parquet")
            if n_chunks > 1:
                log("generate", f"chunk {chunk + 1}/{n_chunks}")
        start, end = cfg.window
        result = GenerateResult(
            rows=cfg.rows, files=files, truth_files=truth_files,
            positive_rate=n_pos / cfg.rows, mean_purchase_prob=prob_sum / cfg.rows,
            corrupted=totals, window=(start.date().isoformat(), end.date().isoformat()),
            seconds=time.perf_counter() - t0,
        )
        write_json(out_tmp / "_generate.json", {
            "params": as_dict(cfg), "rows": result.rows, "positive_rate": result.positive_rate,
            "mean_purchase_prob": result.mean_purchase_prob, "corrupted": totals,
            "window": list(result.window), "columns": list(COLUMNS),
        })
    return result


# ---------------------------------------------------------------------------- CLI


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(GenerateConfig, "generate", args.params, args.overrides)
    if args.format:
        cfg = replace(cfg, format=args.format)
    if args.out.resolve() == args.truth.resolve():
        raise StepError(f"--out and --truth are the same directory ({args.out}); the truth must sit beside the data")
    res = generate(cfg, args.out, args.truth)
    bad = sum(res.corrupted.values())
    log("generate", f"{res.rows} rows ({cfg.format}) in {res.seconds:.1f}s -> {args.out}; "
                    f"truth -> {args.truth}; purchase rate {res.positive_rate:.4f}; "
                    f"{bad} corrupted rows; window {res.window[0]}..{res.window[1]} (end exclusive)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate synthetic shop transactions with planted purchase probabilities")
    p.add_argument("--out", type=Path, required=True, help="directory for the raw part files (data/raw)")
    p.add_argument("--truth", type=Path, required=True, help="directory for event_id, purchase_prob (data/truth)")
    p.add_argument("--format", choices=("parquet", "csv", "criteo"), default=None,
                   help="output format (default: generate.format)")
    add_params_args(p)
    p.set_defaults(func=_main)
