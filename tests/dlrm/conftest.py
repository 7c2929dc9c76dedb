"""Tiny model-ready data with a planted, learnable signal, shared by the dlrm tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from features.spec import DenseFeature, FeatureSpec, SparseFeature

SPEC = FeatureSpec(
    dense=(DenseFeature("price", "log1p"), DenseFeature("position")),
    sparse=(SparseFeature("user", 300), SparseFeature("item", 120),
            SparseFeature("query", 40, multi_hot=True)),
)


def planted_frame(n: int, seed: int, start: str = "2026-10-01") -> pd.DataFrame:
    """n rows of model-ready data; the label is Bernoulli(sigmoid(planted logit)).

    The planted logit uses user and item effects, the query terms and both dense
    features, so every part of the model has something to learn. The per-id effects
    come from a fixed seed (the same "world" for every split); ``seed`` draws the rows.
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


@pytest.fixture
def spec() -> FeatureSpec:
    return SPEC


@pytest.fixture
def make_frame() -> Callable[[int, int], pd.DataFrame]:
    return planted_frame


@pytest.fixture
def model_input_dir(tmp_path: Path) -> Path:
    """data/model_input-like dir: train/valid/test parquet + feature_spec.json, and the
    planted probabilities of the test rows in truth/ (as the generator writes them)."""
    d = tmp_path / "model_input"
    d.mkdir()
    truth = tmp_path / "truth"
    truth.mkdir()
    for split, n, seed in (("train", 4000, 1), ("valid", 1500, 2), ("test", 1500, 3)):
        f = planted_frame(n, seed)
        f.drop(columns="_prob").to_parquet(d / f"{split}.parquet")
        f[["event_id"]].assign(purchase_prob=f["_prob"]).to_parquet(truth / f"{split}.parquet")
    SPEC.save(d / "feature_spec.json")
    return d
