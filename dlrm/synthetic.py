"""Small model-ready data with a planted, learnable signal (for tests and quick checks).

The label of every row is Bernoulli(sigmoid(planted logit)); the planted probability is
returned beside it (column ``_prob``), so the best reachable AUC is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contract.model_input import write_model_input
from contract.spec import DenseFeature, FeatureSpec, SparseFeature

PLANTED_SPEC = FeatureSpec(
    dense=(DenseFeature("price", "log1p"), DenseFeature("position")),
    sparse=(SparseFeature("user", 300), SparseFeature("item", 120),
            SparseFeature("query", 40, multi_hot=True)),
)


def planted_frame(n: int, seed: int, start: str = "2026-10-01") -> pd.DataFrame:
    """n model-ready rows of :data:`PLANTED_SPEC` plus ``event_id``, ``event_timestamp``,
    the label ``purchased`` and the planted probability ``_prob``.

    The planted logit uses user and item effects, the query terms and both dense
    features. The per-id effects come from a fixed seed (the same "world" for every
    call); ``seed`` draws the rows.
    """
    world = np.random.default_rng(12345)
    w_user, w_item = world.normal(0, 1.5, 300), world.normal(0, 1.5, 120)
    w_query = world.normal(0, 1.0, 40)
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 300, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, 119)
    n_terms = rng.integers(0, 4, n)
    query = [rng.integers(0, 40, k).astype(np.int64) for k in n_terms]
    price = np.log1p(rng.exponential(20.0, n)).astype(np.float32)
    position = rng.integers(1, 11, n).astype(np.float32)
    logit = (w_user[user] + w_item[item] + np.array([w_query[q].sum() for q in query])
             - 0.6 * (price - 3.0) - 0.25 * (position - 5) - 1.0)
    prob = 1 / (1 + np.exp(-logit))
    label = (rng.random(n) < prob).astype(np.int64)
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 86400 * 7, n)), unit="s")
    return pd.DataFrame({
        "event_id": [f"e{seed}-{i}" for i in range(n)], "event_timestamp": ts,
        "price": price, "position": position, "user": user.astype(np.int64),
        "item": item.astype(np.int64), "query": query, "purchased": label, "_prob": prob,
    })


def write_planted_dir(out_dir, truth_dir, sizes: dict[str, int] | None = None) -> None:
    """A model-ready dir like ``data/model_input`` (train/valid/test parquet +
    feature_spec.json) and the planted probabilities in ``truth_dir`` (event_id,
    purchase_prob), as the generator writes them."""
    from pathlib import Path

    out_dir, truth_dir = Path(out_dir), Path(truth_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {"train": 4000, "valid": 1500, "test": 1500}
    tables = {}
    for seed, (split, n) in enumerate(sizes.items(), start=1):
        f = planted_frame(n, seed)
        tables[split] = f.drop(columns="_prob")
        f[["event_id"]].assign(purchase_prob=f["_prob"]).to_parquet(truth_dir / f"{split}.parquet")
    write_model_input(out_dir, tables, PLANTED_SPEC)
