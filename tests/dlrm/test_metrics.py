import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score, roc_curve as sk_roc_curve

from dlrm.metrics import MLPERF_TARGETS, auc, calibration, classification_metrics, log_loss, normalized_entropy, roc_curve


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
