"""Binary-classification metrics of click/purchase models: AUC, log loss, NE, calibration.

All take numpy arrays (labels in {0, 1}, scores or probabilities); AUC, ROC and log loss
are scikit-learn's, behind checks that name what is wrong with the input.
"""

from __future__ import annotations

import numpy as np

# Named quality targets: the MLPerf Training recommendation benchmarks' AUC targets.
MLPERF_TARGETS: dict[str, float] = {
    "mlperf_dlrm_criteo_1tb": 0.8025,
    "mlperf_dcnv2_criteo_multihot": 0.80275,
}

_EPS = 1e-7  # probability clipping of the log loss (keeps log() finite)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (scikit-learn's ``roc_auc_score``); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, s = _check(labels, scores)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, s))


def roc_curve(labels: np.ndarray, scores: np.ndarray,
              max_points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of scikit-learn's ``roc_curve`` at every distinct threshold,
    thinned to about ``max_points`` points (first and last kept).

    Point k counts a score as positive when it is >= thresholds[k]; the first point (0, 0)
    has threshold +inf.
    """
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, s = _check(labels, scores)
    if y.size == 0 or y.min() == y.max():
        # one class: scikit-learn warns and returns NaN rates; keep the (0, 0) start only
        return np.zeros(1), np.zeros(1), np.full(1, np.inf)
    fpr, tpr, thresholds = sk_roc_curve(y, s, drop_intermediate=False)
    if fpr.size > max_points:
        keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, max_points).astype(np.int64), fpr.size - 1])
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return fpr, tpr, thresholds


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log, scikit-learn's ``log_loss``), probabilities
    clipped to [1e-7, 1 - 1e-7]."""
    from sklearn.metrics import log_loss as sk_log_loss

    y, p = _check(labels, probs)
    if y.size == 0:
        return float("nan")
    return float(sk_log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0.0, 1.0]))


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Log loss divided by the entropy of the base rate (He et al., ADKDD 2014); < 1 beats
    always predicting the mean label."""
    y, _ = _check(labels, probs)
    base = float(np.clip(y.mean(), _EPS, 1 - _EPS))
    h = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return log_loss(labels, probs) / h


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean prediction / mean label (1.0 is calibrated on average; NaN without positives)."""
    y, p = _check(labels, probs)
    return float(p.mean() / y.mean()) if y.sum() > 0 else float("nan")


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """auc, logloss, ne, calibration and the row/positive counts in one dict."""
    y, p = _check(labels, probs)
    return {
        "auc": auc(y, p),
        "logloss": log_loss(y, p),
        "ne": normalized_entropy(y, p),
        "calibration": calibration(y, p),
        "rows": int(y.size),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
    }
