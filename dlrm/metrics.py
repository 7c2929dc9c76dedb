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


# --- bootstrap confidence intervals --------------------------------------------------------
#
# Stratified bootstrap (positives and negatives resampled separately, so every resample
# keeps the observed class counts and its AUC is defined), percentile intervals. The AUC
# of a resample is the Mann-Whitney statistic from counts: each model's positives are
# grouped by distinct score (Gp groups) and its negatives into the 2*Gp + 1 bins those
# scores cut the line into (below, tied with, between, above them). A block of resamples
# is drawn as row ids once, mapped to each model's groups and bins, counted with one
# bincount, and the statistic is a cumulative sum over the bins: O(B * (n + Gp)) per
# block, no sort per resample.

_BOOT_BLOCK_CELLS = 4_000_000  # cells of a (block, rows) draw; bounds the memory of one block


def _check_boot(labels: np.ndarray, scores: list[np.ndarray], n_boot: int, level: float,
                seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if isinstance(level, bool) or not isinstance(level, (float, int)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    checked = [_check(labels, s) for s in scores]
    y = checked[0][0]
    if y.size == 0 or y.min() == y.max():
        raise ValueError(f"labels need both classes for an AUC interval, got {int(y.sum())} "
                         f"positives in {y.size} rows")
    out = []
    for _, s in checked:
        if not np.isfinite(s).all():
            raise ValueError(f"scores must be finite, got {int((~np.isfinite(s)).sum())} NaN/inf values")
        out.append(s)
    return y, out


def _count_bins(s_pos: np.ndarray, s_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Positive group (by distinct score) of each positive and bin of each negative.

    Returns (pos_group (n_pos,), neg_bin (n_neg,), Gp): bin 2k holds negatives strictly
    between positive scores k-1 and k, bin 2k+1 those tied with positive score k, bin 2Gp
    those above every positive.
    """
    u = np.unique(s_pos)  # (Gp,)
    pos_group = np.searchsorted(u, s_pos).astype(np.int32)
    k = np.searchsorted(u, s_neg, side="left")
    tied = u[np.minimum(k, u.size - 1)] == s_neg
    neg_bin = (2 * k + tied).astype(np.int32)
    return pos_group, neg_bin, int(u.size)


def _block_counts(ids: np.ndarray, n_ids: int) -> np.ndarray:
    """(B, n_ids) counts of each id in each row of ids (B, m)."""
    b = ids.shape[0]
    flat = ids + (np.arange(b, dtype=np.int64) * n_ids)[:, None]  # (B, m)
    return np.bincount(flat.ravel(), minlength=b * n_ids).reshape(b, n_ids)


def _auc_from_draws(pos_group: np.ndarray, neg_bin: np.ndarray, n_groups: int) -> np.ndarray:
    """(B,) Mann-Whitney AUCs from the drawn positives' groups (B, n_pos) and the drawn
    negatives' bins (B, n_neg); ties count one half."""
    cp = _block_counts(pos_group, n_groups)  # (B, Gp)
    cn = _block_counts(neg_bin, 2 * n_groups + 1)  # (B, 2Gp + 1)
    below = np.cumsum(cn, axis=1)[:, 0:-1:2]  # (B, Gp) negatives strictly below group k
    ties = cn[:, 1::2]  # (B, Gp)
    wins = (cp * (below + 0.5 * ties)).sum(axis=1)  # (B,)
    return wins / (float(pos_group.shape[1]) * float(neg_bin.shape[1]))


def _bootstrap_aucs(y: np.ndarray, scores: list[np.ndarray], n_boot: int,
                    seed: int) -> list[np.ndarray]:
    """(n_boot,) bootstrap AUCs of each score vector, all on the same resampled rows."""
    pos = y == 1.0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    maps = [_count_bins(s[pos], s[~pos]) for s in scores]
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _BOOT_BLOCK_CELLS // y.size))
    out: list[list[np.ndarray]] = [[] for _ in scores]
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        ip = rng.integers(0, n_pos, size=(b, n_pos), dtype=np.int32)  # (B, n_pos) drawn positives
        ineg = rng.integers(0, n_neg, size=(b, n_neg), dtype=np.int32)  # (B, n_neg) drawn negatives
        for k, (pos_group, neg_bin, n_groups) in enumerate(maps):
            out[k].append(_auc_from_draws(pos_group[ip], neg_bin[ineg], n_groups))
        done += b
    return [np.concatenate(parts) for parts in out]


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, float]:
    """ROC AUC with a stratified percentile-bootstrap confidence interval.

    Args:
        labels: (N,) 0/1 labels, both classes present.
        scores: (N,) finite scores (higher = more likely positive).
        n_boot: number of resamples.
        seed: seed of the resampling.
        level: coverage of the interval, e.g. 0.95.

    Returns:
        ``{"auc", "lo", "hi", "n_boot"}``: the AUC on all rows and the interval's bounds.

    Example:
        >>> r = bootstrap_auc([0, 1, 0, 1, 1, 0], [0.1, 0.8, 0.4, 0.6, 0.3, 0.2], n_boot=200)
        >>> r["lo"] <= r["auc"] <= r["hi"]
        True
    """
    y, (s,) = _check_boot(labels, [scores], n_boot, level, seed)
    (boots,) = _bootstrap_aucs(y, [s], int(n_boot), int(seed))
    lo, hi = _percentiles(boots, level)
    return {"auc": auc(y, s), "lo": lo, "hi": hi, "n_boot": int(n_boot)}


def paired_auc_difference(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *,
                          n_boot: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict[str, float]:
    """AUC of model a minus AUC of model b on the same rows, with a paired bootstrap interval.

    Both models are scored on the same resampled rows in every resample, so what the two
    share (the hard and easy rows of this test window) cancels out of the difference.

    Args:
        labels: (N,) 0/1 labels, both classes present.
        scores_a, scores_b: (N,) finite scores of the two models on the same rows.
        n_boot, seed, level: as in :func:`bootstrap_auc`.

    Returns:
        ``{"diff", "lo", "hi", "n_boot"}`` with ``diff = auc(a) - auc(b)``; an interval that
        excludes 0 says the difference is larger than the resampling noise of these rows.
    """
    y, (sa, sb) = _check_boot(labels, [scores_a, scores_b], n_boot, level, seed)
    boot_a, boot_b = _bootstrap_aucs(y, [sa, sb], int(n_boot), int(seed))
    lo, hi = _percentiles(boot_a - boot_b, level)
    return {"diff": auc(y, sa) - auc(y, sb), "lo": lo, "hi": hi, "n_boot": int(n_boot)}


def bootstrap_auc_samples(labels: np.ndarray, scores: list[np.ndarray], *, n_boot: int = 1000,
                          seed: int = 0) -> np.ndarray:
    """(len(scores), n_boot) AUCs of several models on the same stratified resamples.

    For comparisons beyond two models (a mean over seeds against another mean, say):
    any function of the models' AUCs computed per column is paired across them.
    """
    if not len(scores):
        raise ValueError("scores must hold at least one score vector")
    y, checked = _check_boot(labels, list(scores), n_boot, 0.5, seed)
    return np.stack(_bootstrap_aucs(y, checked, int(n_boot), int(seed)))
