"""The retrieval oracle: which item a purchase was, by the planted model, over the whole catalogue.

A purchase event shows its user, query (or none: a browse), hour, weekday, device, country
and position, not the item. Under the generator's model (:mod:`generator.events`) the
probability that the bought item was ``i`` is

    P(i | event, bought) ∝ P(i offered | user, query, day) * sigmoid(c + planted logit(i, event))

The first factor is the offer process of :func:`generator.events._offers`: an intent leaf
drawn from the user's taste (for a search, its posterior given the query text), then an
item of that leaf, of a sibling leaf of the same l2 (searches) or a globally popular one,
and for a browse by a user with earlier purchases, a "buy again" offer of one of them (30%).
The second is the planted purchase probability, including the repeat term of items bought
20-60 days before. Ranking every item by this product is the best any model can do with
what the event shows; :func:`oracle_top_k` gives that ranking.

The user's purchase history (for buy-again offers and the repeat term) is the warm history
the generator starts from (:func:`generator.events.warm_history`, rebuilt from the seed)
plus the purchases of the data's own earlier days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.schema import COUNTRIES, DEVICES
from generator.config import GenerateConfig
from generator.events import logit_terms
from generator.world import BUY_AGAIN_SHARE, DIM, World, sigmoid

# the mixture weights of _offers: (intent leaf, sibling leaf of the same l2, popular item)
SEARCH_MIX = (0.65, 0.2, 0.15)
BROWSE_MIX = (0.4, 0.0, 0.6)


@dataclass
class PurchaseEvents:
    """n purchase events as the generator's index arrays (all ``(n,)``).

    ``query`` is the query text ("" for a browse); ``day`` counts days from the window's start.
    """

    user: np.ndarray
    query: np.ndarray
    day: np.ndarray
    hour: np.ndarray
    weekday: np.ndarray
    device: np.ndarray
    country: np.ndarray
    position: np.ndarray

    @classmethod
    def from_frame(cls, frame, cfg: GenerateConfig, world: World) -> "PurchaseEvents":
        """Canonical rows (``user_id``, ``query``, ``event_timestamp`` UTC, ``device``, ``country``,
        ``position``) of the world ``world`` -> index arrays; ValueError on a value the world lacks."""
        import pandas as pd

        users = {u: k for k, u in enumerate(world.user_ids)}
        user = frame["user_id"].astype(str).map(users)
        if user.isna().any():
            raise ValueError(f"user ids not in the generated world: {frame['user_id'][user.isna()].head(3).tolist()}")
        ts = pd.to_datetime(frame["event_timestamp"], utc=True)
        day = ((ts - cfg.window[0]) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)
        codes = {}
        for col, values in (("device", DEVICES), ("country", COUNTRIES)):
            idx = pd.Categorical(frame[col].astype(str), categories=list(values)).codes
            if (idx < 0).any():
                raise ValueError(f"{col} values not in the generated world: "
                                 f"{sorted(set(frame[col].astype(str)) - set(values))[:3]}")
            codes[col] = idx.astype(np.int64)
        return cls(user=user.to_numpy(dtype=np.int64), query=frame["query"].fillna("").astype(str).to_numpy(),
                   day=day, hour=ts.dt.hour.to_numpy(dtype=np.int64), weekday=ts.dt.weekday.to_numpy(dtype=np.int64),
                   device=codes["device"], country=codes["country"],
                   position=frame["position"].to_numpy(dtype=np.int64))

    def __len__(self) -> int:
        return int(self.user.size)


def _group_shares(key: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, share within the group) of each member of a ``_keyed_cdf`` (key = group + cdf)."""
    group = np.empty(order.size, np.int64)
    share = np.empty(order.size)
    g = np.ceil(key).astype(np.int64) - 1                        # key in (g, g + 1]
    prev = np.where(np.r_[True, g[1:] != g[:-1]], g, np.r_[0.0, key[:-1]])
    group[order], share[order] = g, key - prev
    return group, share


class OfferModel:
    """P(item offered | user, query, day) of every item, from the world's offer process."""

    def __init__(self, cfg: GenerateConfig, world: World):
        self.cfg, self.world = cfg, world
        pop = np.diff(world.item_cdf, prepend=0.0)
        pop_drift = np.diff(world.item_cdf_drift, prepend=0.0)
        leaf_total = np.bincount(world.item_leaf, weights=pop, minlength=len(world.leaf_names))
        self.in_leaf = pop / leaf_total[world.item_leaf]           # (I,) P(i | its leaf shown)
        # a leaf without items: the generator's in-leaf draw lands on the first item of the
        # next leaf that has some (the last item after the last one)
        before = np.searchsorted(np.sort(world.item_leaf), np.arange(len(world.leaf_names)))
        order = world.leaf_item_order
        self.empty_leaves = np.flatnonzero(leaf_total == 0)
        self.empty_leaf_item = order[np.minimum(before[self.empty_leaves], order.size - 1)]
        self.popular = pop / pop.sum()                            # (I,)
        self.popular_drift = pop_drift / pop_drift.sum()
        q_leaf, q_share = _group_shares(world.leaf_query_key, world.leaf_query_order)
        texts, self.q_text = np.unique(world.query_text.astype(str), return_inverse=True)
        self.text_index = {t: k for k, t in enumerate(texts)}
        # (texts, L): P(query text | intent leaf)
        self.text_given_leaf = np.zeros((texts.size, len(world.leaf_names)))
        np.add.at(self.text_given_leaf, (self.q_text, q_leaf), q_share)

    def leaf_probs(self, user: np.ndarray, drifted: np.ndarray) -> np.ndarray:
        """(n, L) P(intent leaf | user)."""
        w, drift = self.world, self.cfg.drift
        logit = 1.5 * w.user_vec[user] @ w.leaf_vec.T / np.sqrt(DIM) + w.leaf_prior
        logit = logit + (2.5 * drift * drifted)[:, None] * w.drift_boost[None, :]
        p = np.exp(logit - logit.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def drifted(self, day: np.ndarray) -> np.ndarray:
        return (day >= self.cfg.days - self.cfg.drift_days) & (self.cfg.drift > 0)

    def probs(self, ev: PurchaseEvents, history: dict[int, dict[int, list[int]]] | None = None) -> np.ndarray:
        """(n, I) P(item offered) for each event (rows sum to 1).

        ``history``: user -> item -> purchase days (:func:`purchase_history`); a browse by a
        user who bought anything before its day is a buy-again offer (one of those items,
        uniformly) with probability :data:`~generator.world.BUY_AGAIN_SHARE`.
        """
        w = self.world
        drifted = self.drifted(ev.day)
        intent = self.leaf_probs(ev.user, drifted)                                 # (n, L)
        search = ev.query != ""
        if search.any():
            t = np.array([self.text_index.get(q, -1) for q in ev.query[search]])
            if (t < 0).any():
                raise ValueError(f"query texts not in the generated world: {ev.query[search][t < 0][:3].tolist()}")
            post = intent[search] * self.text_given_leaf[t]                        # P(leaf | user, text)
            intent[search] = post / post.sum(axis=1, keepdims=True)
        n_l2 = int(w.leaf_l2.max()) + 1
        l2_mass = np.zeros((len(ev), n_l2))
        for l2 in range(n_l2):
            l2_mass[:, l2] = intent[:, w.leaf_l2 == l2].sum(axis=1)
        sibling = l2_mass / w.l2_size                                               # (n, n_l2) per leaf of it
        mix = np.where(search[:, None], np.array(SEARCH_MIX), np.array(BROWSE_MIX))  # (n, 3)
        popular = np.where(drifted[:, None] & (self.cfg.drift > 0),
                           (1 - self.cfg.drift) * self.popular + self.cfg.drift * self.popular_drift,
                           self.popular)
        leaf = w.item_leaf
        p = (mix[:, :1] * intent[:, leaf] + mix[:, 1:2] * sibling[:, w.leaf_l2[leaf]]) * self.in_leaf \
            + mix[:, 2:] * popular                                                  # (n, I)
        for l, item in zip(self.empty_leaves.tolist(), self.empty_leaf_item.tolist()):
            p[:, item] += mix[:, 0] * intent[:, l] + mix[:, 1] * sibling[:, w.leaf_l2[l]]
        if history is not None and self.cfg.replenish > 0:
            for r in np.flatnonzero(~search):
                bought = history_before(history, int(ev.user[r]), int(ev.day[r]))
                if bought:
                    p[r] *= 1 - BUY_AGAIN_SHARE
                    p[r, list(bought)] += BUY_AGAIN_SHARE / len(bought)
        return p


def history_before(history: dict[int, dict[int, list[int]]], user: int, day: int) -> dict[int, int]:
    """{item: latest purchase day} of ``user``'s purchases before ``day``."""
    out = {}
    for item, days in history.get(user, {}).items():
        earlier = [d for d in days if d < day]
        if earlier:
            out[item] = max(earlier)
    return out


def purchase_history(users: np.ndarray, items: np.ndarray, days: np.ndarray,
                     keep: set[int] | None = None) -> dict[int, dict[int, list[int]]]:
    """user -> item -> the days it was bought (only the users in ``keep`` when given)."""
    out: dict[int, dict[int, list[int]]] = {}
    for u, i, d in zip(users.tolist(), items.tolist(), days.tolist()):
        if keep is None or u in keep:
            out.setdefault(u, {}).setdefault(i, []).append(d)
    return out


def log_scores(cfg: GenerateConfig, world: World, ev: PurchaseEvents, offers: OfferModel,
               history: dict[int, dict[int, list[int]]] | None = None) -> np.ndarray:
    """(n, I) log P(item offered) + log P(bought | offered): the oracle's score of every item."""
    n, n_items = len(ev), len(world.item_ids)
    p_offer = offers.probs(ev, history)
    lag = np.full((n, n_items), np.inf)
    if history is not None:
        for r in range(n):
            for item, d in history_before(history, int(ev.user[r]), int(ev.day[r])).items():
                lag[r, item] = ev.day[r] - d
    rep = lambda a: np.repeat(a, n_items)                                           # noqa: E731
    drifted = offers.drifted(ev.day)
    q_index = np.full(n, -1)
    search = ev.query != ""
    if search.any():  # any form with the text: the query's own terms depend only on its leaf/l2/brand
        first = {t: k for k, t in reversed(list(enumerate(world.query_text.astype(str))))}
        q_index[search] = [first[q] for q in ev.query[search]]
    grid = {"user": rep(ev.user), "item": np.tile(np.arange(n_items), n), "query": rep(q_index),
            "search": rep(search), "day": rep(ev.day), "hour": rep(ev.hour), "weekday": rep(ev.weekday),
            "position": rep(ev.position), "device": rep(ev.device), "country": rep(ev.country),
            "price_mult": rep(np.where(drifted, 1.0 + 0.5 * cfg.drift, 1.0)), "lag": lag.reshape(-1)}
    logit = world.intercept + sum(logit_terms(cfg, world, grid).values())
    p_buy = sigmoid(logit).reshape(n, n_items)
    with np.errstate(divide="ignore"):
        return np.log(p_offer) + np.log(p_buy)


def oracle_top_k(cfg: GenerateConfig, world: World, ev: PurchaseEvents, k: int,
                 catalogue: np.ndarray | None = None, history: dict | None = None,
                 chunk_cells: int = 500_000) -> np.ndarray:
    """``(n, k)`` world item indices, best first, of each event by the oracle's score.

    ``catalogue``: the world items that may be ranked (default: all); ``chunk_cells`` bounds
    the events x items evaluated at once.
    """
    offers = OfferModel(cfg, world)
    n_items = len(world.item_ids)
    allowed = np.arange(n_items) if catalogue is None else np.asarray(catalogue, dtype=np.int64)
    k = min(k, allowed.size)
    step = max(1, chunk_cells // n_items)
    out = np.empty((len(ev), k), dtype=np.int64)
    for s in range(0, len(ev), step):
        part = PurchaseEvents(**{f: getattr(ev, f)[s:s + step] for f in PurchaseEvents.__dataclass_fields__})
        scores = log_scores(cfg, world, part, offers, history)[:, allowed]          # (c, |catalogue|)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        out[s:s + step] = allowed[np.take_along_axis(top, order, 1)]
    return out
