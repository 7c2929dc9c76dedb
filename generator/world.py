"""The generated shop's world: the category taxonomy, users, items, brands and queries with
their latent factors and Zipf popularity, and the planted model's constants."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.schema import COUNTRIES, DEVICES
from generator.config import GenerateConfig

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
# replenishment: how much more likely an item bought REPEAT_LAG days ago is bought again, per
# l1 (consumables run out; a second copy of a book or a laptop is rarely wanted)
REPLENISH_L1 = {"beauty": 0.8, "electronics": -0.6, "home": -0.2, "fashion": -0.2,
                "sports": 0.1, "toys": 0.0, "grocery": 1.0, "books": -0.8}
REPEAT_LAG = (20, 60)  # days since the last purchase of the same item
BUY_AGAIN_SHARE = 0.3  # share of a buyer's browse offers that show one of their earlier purchases



EAGER_IDS = 1_000_000  # id lists up to this length are formatted once; longer ones per lookup


def format_ids(prefix: str, idx: np.ndarray, width: int) -> np.ndarray:
    """``np.array([f"{prefix}{k:0{width}d}" for k in idx], dtype=object)``, built as bytes
    digit by digit where every number fits ``width`` digits (twice as fast as formatting
    each one)."""
    idx = np.asarray(idx, dtype=np.int64).ravel()
    if not idx.size or idx.min() < 0 or idx.max() >= 10 ** width:
        fmt = f"{prefix}{{:0{width}d}}".format
        return np.array([fmt(k) for k in idx.tolist()], dtype=object)
    head = np.frombuffer(prefix.encode(), np.uint8)
    chars = np.empty((idx.size, head.size + width), np.uint8)
    chars[:, :head.size] = head
    rest = idx.copy()
    for j in range(head.size + width - 1, head.size - 1, -1):
        chars[:, j] = 48 + rest % 10
        rest //= 10
    return chars.view(f"S{chars.shape[1]}").ravel().astype(f"U{chars.shape[1]}").astype(object)


class IdNames:
    """The ids ``f"{prefix}{k:0{width}d}"``, k = 0 .. n-1, as a read-only sequence.

    Up to :data:`EAGER_IDS` names are held as one object array (a gather per lookup); a longer
    list formats the names a lookup asks for (10M user ids held as Python strings take ~650 MB
    and 5 s to build).
    """

    def __init__(self, prefix: str, width: int, n: int) -> None:
        self.prefix, self.width, self.n = prefix, width, n
        self._table = format_ids(prefix, np.arange(n), width) if n <= EAGER_IDS else None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for a in range(0, self.n, 1 << 16):
            yield from self[np.arange(a, min(a + (1 << 16), self.n))]

    def __getitem__(self, idx):
        """The name of index ``idx`` (an int), or an object array of names for an index array."""
        if np.isscalar(idx):
            return str(self[np.array([idx])][0])
        idx = np.asarray(idx)
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise IndexError(f"id index out of range 0..{self.n - 1}")
        if self._table is not None:
            return self._table[idx]
        return format_ids(self.prefix, idx % self.n, self.width).reshape(idx.shape)


def _zipf(n: int, a: float) -> np.ndarray:
    """(n,) probabilities proportional to 1 / rank**a, rank 1..n."""
    w = 1.0 / np.arange(1, n + 1, dtype=float) ** a
    return w / w.sum()


@dataclass
class World:
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
    item_vec: np.ndarray       # (I, DIM) the item's own deviation from its leaf's vector
    item_quality: np.ndarray   # (I,)
    item_price: np.ndarray     # (I,) list price
    item_ids: IdNames          # (I,) "i000042"
    item_cdf: np.ndarray       # (I,) global popularity cdf over items
    item_cdf_drift: np.ndarray  # (I,) the popularity cdf under drift
    leaf_item_key: np.ndarray  # (I,) sorted keys leaf + cdf-within-leaf, for sampling in a leaf
    leaf_item_order: np.ndarray  # (I,) item index for each key
    user_vec: np.ndarray       # (U, DIM) taste that also steers what the user browses
    user_taste: np.ndarray     # (U, DIM) taste that browsing does not reveal
    l1_replenish: np.ndarray   # (n_l1,) REPLENISH_L1 in taxonomy order
    user_bias: np.ndarray      # (U,)
    user_price_sens: np.ndarray  # (U,)
    user_device: np.ndarray    # (U,) index into DEVICES
    user_country: np.ndarray   # (U,) index into COUNTRIES
    user_ids: IdNames          # (U,) "u0000042"
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


SORTED_PROBES_FROM = 1 << 15  # table length from which searchsorted visits the needles in sorted order


def searchsorted(a: np.ndarray, v: np.ndarray, side: str = "left") -> np.ndarray:
    """``np.searchsorted(a, v, side)``; on a long ``a`` the needles are searched in sorted
    order (the same answer, ~2.5x faster on a 1M-entry table, 4x on 10M: each probe then
    walks the cache lines the previous one loaded instead of a random path down the table)."""
    if len(a) < SORTED_PROBES_FROM or v.size < 2:
        return np.searchsorted(a, v, side=side)
    order = np.argsort(v, kind="stable")
    out = np.empty(v.shape, np.intp)
    out[order] = np.searchsorted(a, v[order], side=side)
    return out


def sample_in_group(key: np.ndarray, order: np.ndarray, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
    idx = searchsorted(key, groups + np.minimum(u, 1 - 1e-12), side="right")
    return order[np.minimum(idx, len(order) - 1)]


def draw_world(cfg: GenerateConfig) -> World:
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
    item_vec = rng.normal(0, 1.0, (n_items, DIM))  # its deviation from leaf_vec[item_leaf]
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
    user_pop = _zipf(n_users, cfg.user_zipf)[rng.permutation(n_users)]
    user_taste = rng.normal(0, 1, (n_users, DIM))

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

    world = World(
        leaf_names=leaf_names, leaf_l1=leaf_l1, leaf_l2=leaf_l2, leaf_vec=leaf_vec,
        leaf_prior=leaf_prior, leaf_median_price=leaf_median_price,
        l2_leaf_table=l2_table, l2_size=l2_size, drift_boost=drift_boost,
        brand_names=np.array(brand_names, dtype=object), item_leaf=item_leaf, item_brand=item_brand,
        item_vec=item_vec, item_quality=item_quality, item_price=item_price,
        item_ids=IdNames("i", 6, n_items),
        item_cdf=np.cumsum(item_pop), item_cdf_drift=np.cumsum(item_pop_drift),
        leaf_item_key=leaf_item_key, leaf_item_order=leaf_item_order,
        user_vec=user_vec, user_taste=user_taste,
        l1_replenish=np.array([REPLENISH_L1[l1] for l1 in TAXONOMY]), user_bias=user_bias, user_price_sens=user_price_sens,
        user_device=user_device, user_country=user_country,
        user_ids=IdNames("u", 7, n_users),
        user_cdf=np.cumsum(user_pop),
        query_text=np.array(q_text, dtype=object), query_leaf=np.array(q_leaf),
        query_l2=np.array(q_l2), query_brand=np.array(q_brand), query_price_mult=np.array(q_mult),
        query_terms=np.array(q_terms), leaf_query_key=leaf_query_key, leaf_query_order=leaf_query_order,
    )
    return world


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cdf_sample(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)
