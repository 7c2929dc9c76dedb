"""Binary-classification metrics of click/purchase models: AUC, log loss, NE, calibration.

All take numpy arrays (labels in {0, 1}, scores or probabilities) and run in
O(N log N) vectorised numpy, so they stay fast on millions of rows.
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
    """Exact ROC AUC by the rank-sum (Mann-Whitney) formula; tied scores get their mean rank.

    Returns NaN when only one class is present.
    """
    y, s = _check(labels, scores)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # Ranks 1..N; a run of equal scores shares the mean of its ranks.
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])   # (G,) first index per tie group
    ends = np.r_[starts[1:], s.size]                                        # (G,) one past the last
    mean_rank = (starts + ends + 1) / 2.0                                   # (G,) mean of ranks starts+1..ends
    ranks = np.repeat(mean_rank, ends - starts)                             # (N,) in sorted order
    rank_sum = float(ranks[y[order] == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def roc_curve(labels: np.ndarray, scores: np.ndarray,
              max_points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct threshold, thinned to about ``max_points`` points.

    As in scikit-learn, point k counts a score as positive when it is >= thresholds[k];
    the first point (0, 0) has threshold +inf.
    """
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]   # last index of each tie group
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1.0)] if s.size else np.zeros(1)
    fpr = np.r_[0.0, fps / max(fps[-1], 1.0)] if s.size else np.zeros(1)
    thresholds = np.r_[np.inf, s[last]] if s.size else np.full(1, np.inf)
    if fpr.size > max_points:
        keep = np.unique(np.r_[np.linspace(0, fpr.size - 1, max_points).astype(np.int64), fpr.size - 1])
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return fpr, tpr, thresholds


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _check(labels, probs)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


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
