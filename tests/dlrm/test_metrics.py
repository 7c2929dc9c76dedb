import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score, roc_curve as sk_roc_curve

from dlrm.metrics import (
    MLPERF_TARGETS,
    _auc_from_draws,
    _count_bins,
    auc,
    bootstrap_auc,
    bootstrap_auc_samples,
    calibration,
    classification_metrics,
    log_loss,
    normalized_entropy,
    paired_auc_difference,
    roc_curve,
)
from scipy.stats import norm


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 400), levels=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_auc_equals_sklearn_with_ties(n, levels, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    s = rng.integers(0, levels, n) / levels  # few levels -> many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_on_a_large_random_input_and_edge_cases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200_000)
    s = np.round(rng.normal(size=y.size) + 0.5 * y, 2).astype(np.float32)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(auc([1, 1], [0.1, 0.2]))
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])


def test_roc_curve_matches_sklearn_points():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 1)
    fpr, tpr, thresholds = roc_curve(y, s, max_points=10_000)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds, sk_thresholds)
    thin_f, _, _ = roc_curve(y, rng.random(500), max_points=50)
    assert len(thin_f) <= 51 and thin_f[0] == 0 and thin_f[-1] == 1


def test_log_loss_ne_and_calibration():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    p = np.clip(rng.random(1000), 0.01, 0.99)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p))
    base = np.full(1000, y.mean())
    assert normalized_entropy(y, base) == pytest.approx(1.0)   # the base rate scores NE = 1
    assert calibration(y, base) == pytest.approx(1.0)
    assert calibration(y, base * 2) == pytest.approx(2.0)
    m = classification_metrics(y, p)
    assert set(m) >= {"auc", "logloss", "ne", "calibration"} and m["rows"] == 1000


def test_mlperf_targets():
    assert MLPERF_TARGETS == {"mlperf_dlrm_criteo_1tb": 0.8025, "mlperf_dcnv2_criteo_multihot": 0.80275}


@settings(max_examples=30, deadline=None)
@given(n_pos=st.integers(1, 60), n_neg=st.integers(1, 60), levels=st.integers(1, 8),
       seed=st.integers(0, 2**31 - 1))
def test_resample_auc_from_counts_equals_sklearn_on_the_drawn_rows(n_pos, n_neg, levels, seed):
    rng = np.random.default_rng(seed)
    s_pos = rng.integers(0, levels, n_pos) / levels  # few levels -> ties within and across classes
    s_neg = rng.integers(0, levels, n_neg) / levels
    pos_group, neg_bin, n_groups = _count_bins(s_pos, s_neg)
    ip = rng.integers(0, n_pos, size=(4, n_pos))
    ineg = rng.integers(0, n_neg, size=(4, n_neg))
    got = _auc_from_draws(pos_group[ip], neg_bin[ineg], n_groups)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    for b in range(4):
        want = roc_auc_score(y, np.r_[s_pos[ip[b]], s_neg[ineg[b]]])
        assert got[b] == pytest.approx(want, abs=1e-12)


def _binormal(rng: np.random.Generator, n_pos: int, n_neg: int, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Positives N(d, 1), negatives N(0, 1): the population AUC is Phi(d / sqrt(2))."""
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    return y, rng.normal(size=y.size) + d * y


def test_bootstrap_interval_covers_the_true_auc_at_the_stated_rate():
    d, reps, level = 1.0, 200, 0.95
    true_auc = float(norm.cdf(d / np.sqrt(2)))
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for rep in range(reps):
        y, s = _binormal(rng, 100, 200, d)
        r = bootstrap_auc(y, s, n_boot=200, seed=rep, level=level)
        assert r["lo"] <= r["auc"] <= r["hi"] and r["n_boot"] == 200
        covered += r["lo"] <= true_auc <= r["hi"]
        widths.append(r["hi"] - r["lo"])
    # coverage within 3 binomial standard errors of the stated level (an interval that
    # always covers, 1.0, fails as well as one that is too narrow)
    tol = 3 * np.sqrt(level * (1 - level) / reps)
    assert abs(covered / reps - level) <= tol, covered / reps
    # and its width matches the AUC's sampling spread across the repetitions
    spread = np.std([auc(*_binormal(np.random.default_rng(10_000 + k), 100, 200, d)) for k in range(200)])
    assert np.mean(widths) == pytest.approx(2 * norm.ppf(0.975) * spread, rel=0.2)


def test_paired_difference_is_narrower_than_unpaired_for_correlated_models():
    rng = np.random.default_rng(1)
    n = 3000
    y = (rng.random(n) < 0.2).astype(np.int64)
    latent = rng.normal(size=n) + 1.0 * y
    a = latent + 0.3 * rng.normal(size=n)  # two models that share most of their signal
    b = latent + 0.3 * rng.normal(size=n)
    paired = paired_auc_difference(y, a, b, n_boot=400, seed=3)
    assert paired["diff"] == pytest.approx(auc(y, a) - auc(y, b), abs=1e-12)
    assert paired["lo"] <= paired["diff"] <= paired["hi"]
    ra = bootstrap_auc(y, a, n_boot=400, seed=4)
    rb = bootstrap_auc(y, b, n_boot=400, seed=5)
    unpaired_width = np.hypot(ra["hi"] - ra["lo"], rb["hi"] - rb["lo"])
    assert paired["hi"] - paired["lo"] < 0.5 * unpaired_width
    # a model that is clearly better: the paired interval excludes 0
    better = latent + 0.5 * y + 0.3 * rng.normal(size=n)
    assert paired_auc_difference(y, better, b, n_boot=400, seed=3)["lo"] > 0
    # same seed, same answer; a model against itself differs by exactly 0
    assert paired_auc_difference(y, a, b, n_boot=400, seed=3) == paired
    same = paired_auc_difference(y, a, a, n_boot=50)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0
    # the samples behind it: the same resamples for every model
    boots = bootstrap_auc_samples(y, [a, b], n_boot=400, seed=3)
    assert boots.shape == (2, 400)
    d = boots[0] - boots[1]
    assert np.quantile(d, [0.025, 0.975]) == pytest.approx([paired["lo"], paired["hi"]])
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_auc_samples(y, [])


@pytest.mark.parametrize("kwargs, match", [
    ({"n_boot": 0}, "n_boot"),
    ({"n_boot": 2.5}, "n_boot"),
    ({"level": 1.5}, "level"),
    ({"level": 0.0}, "level"),
])
def test_bootstrap_rejects_bad_settings(kwargs, match):
    y, s = np.array([0, 1, 0, 1]), np.array([0.1, 0.8, 0.3, 0.6])
    with pytest.raises(ValueError, match=match):
        bootstrap_auc(y, s, **kwargs)
    with pytest.raises(ValueError, match=match):
        paired_auc_difference(y, s, s, **kwargs)


def test_bootstrap_rejects_bad_inputs():
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        bootstrap_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_auc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        paired_auc_difference([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        paired_auc_difference([0, 1, 1], [0.1, 0.2, 0.3], [0.1, np.inf, 0.3])
    with pytest.raises(TypeError, match="seed"):
        bootstrap_auc([0, 1, 1], [0.1, 0.2, 0.3], seed=1.5)
