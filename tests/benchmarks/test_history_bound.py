"""The history ceiling: per-user Bayesian logistic regression on the true item side."""

from __future__ import annotations

import numpy as np
import pytest

from dlrm.metrics import auc
from generator.config import GenerateConfig


@pytest.fixture(scope="module")
def bound(benchmark_module):
    return benchmark_module("history_bound")


def test_fit_user_recovers_a_planted_user_and_stays_finite_when_separable(bound):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 5))
    theta = np.array([1.0, -0.5, 0.3, 0.0, 0.8])
    off = rng.normal(size=20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(off + x @ theta)))).astype(float)
    est, cov = bound.fit_user(x, y, off, np.ones(5))
    assert np.abs(est - theta).max() < 0.06
    assert np.all(np.diag(cov) > 0) and np.all(np.diag(cov) < 1e-3)
    # every event bought: the likelihood alone has no mode; the prior keeps the fit finite
    est, cov = bound.fit_user(x[:10], np.ones(10), off[:10], np.ones(5))
    assert np.all(np.isfinite(est)) and np.abs(est).max() < 10
    # no events' worth of evidence: the prior's mean and covariance
    est, cov = bound.fit_user(x[:0], np.ones(0), off[:0], np.full(5, 4.0))
    assert np.allclose(est, 0) and np.allclose(cov, np.eye(5) / 4)


def test_ceilings_use_only_events_before_the_test_window_and_more_history_helps(bound):
    cfg = GenerateConfig(rows=40_000, users=150, items=200, chunk_rows=20_000, seed=3)
    sim = bound.simulate(cfg)
    test = sim["day"] >= cfg.days - 3
    x = bound.design(cfg, sim["world"], sim["item"])
    y = sim["y"][test]
    score = {n: bound.ceiling(sim, x, test, n, False) for n in (5, None)}
    given = bound.ceiling(sim, x, test, None, True)
    # the design reproduces the planted user-latent logit from the true values
    w = sim["world"]
    truth = np.hstack([w.user_vec[sim["user"]], w.user_taste[sim["user"]], w.user_bias[sim["user"]][:, None]])
    assert np.allclose(sim["offset"] + np.einsum("nd,nd->n", x, truth), sim["z"])
    assert auc(y, score[None]) > auc(y, score[5]) > auc(y, sim["offset"][test])
    assert auc(y, given) > auc(y, score[None])
    # the test window's own labels never enter the fit
    flipped = dict(sim, y=np.where(test, 1 - sim["y"], sim["y"]))
    assert np.array_equal(bound.ceiling(flipped, x, test, None, False), score[None])


def test_learned_item_vecs_reads_the_bundles_item_rows(bound, tmp_path):
    import torch

    from contract.spec import DenseFeature, FeatureSpec, SparseFeature
    from dlrm import DLRM, EmbeddingConfig, ModelConfig, save_model
    from features.categorize import hash_ids
    from generator.events import build_world

    world = build_world(GenerateConfig(rows=1_000, users=50, items=300, chunk_rows=1_000, seed=3))
    spec = FeatureSpec(dense=(DenseFeature("x"),), sparse=(SparseFeature("user", 64), SparseFeature("item", 1 << 18)))
    cfg = ModelConfig(embedding=EmbeddingConfig(backend="full", dim=12), bottom_mlp=(8,), top_mlp=(8,))
    rows = torch.from_numpy(hash_ids(np.asarray(list(world.item_ids), dtype=object), "item", 1 << 18))
    assert rows.unique().numel() == rows.numel()   # no two items share a row
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(world.item_vec.shape[1], 12))
    for name, planted, lo, hi in (("linear", world.item_vec @ mix, 0.99, 1.0), ("noise", None, -0.1, 0.1)):
        torch.manual_seed(0)
        model = DLRM(cfg, 1, spec.table_sizes)
        if planted is not None:
            with torch.no_grad():
                model.embedding.tables[1].weight[rows] = torch.from_numpy(planted).float()
        save_model(model, tmp_path / name, spec=spec, config={})
        est, corr = bound.learned_item_vecs(tmp_path / name, world)
        assert est.shape == world.item_vec.shape
        assert lo <= corr <= hi, (name, corr)


def test_factorisation_learns_the_ids_it_is_given(bound):
    cfg = GenerateConfig(rows=40_000, users=150, items=200, chunk_rows=20_000, seed=3)
    sim = bound.simulate(cfg)
    test = sim["day"] >= cfg.days - 3
    valid = (sim["day"] >= cfg.days - 6) & ~test
    score, facts = bound.factorisation(sim, test, valid, epochs=8, patience=8)
    y = sim["y"][test]
    assert score.shape == (int(test.sum()),) and facts["epochs"] == 8 and 1 <= facts["best_epoch"] <= 8
    # it learns the user-latent terms from the ids: above the true offset alone
    assert auc(y, score) > auc(y, sim["offset"][test]) + 0.02
