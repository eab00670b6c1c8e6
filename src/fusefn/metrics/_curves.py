"""Rank statistics of a binary score over many weighted resamples at once.

Scores are sorted once (descending) and grouped into tie blocks. A resample is a
row of sample multiplicities; its positive / negative counts per tie block,
``P`` and ``N`` of shape ``(B, G)``, are enough for ROC AUC, ROC points, partial
AUC and average precision. The full data set is the single row of ones.
"""

from __future__ import annotations

import numpy as np

# rows of the (B, N) weight matrix processed at once: bounds memory to ~160 MB of float64
_CELLS = 20_000_000
# positive x negative pairs up to which AUC resamples use the pairwise matrix product
PAIRWISE_MAX = 1_000_000


def tie_blocks(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``order`` (descending score), ``starts`` of each tie block in it, and the block thresholds."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]])) if s.size else np.array([], dtype=np.int64)
    return order, starts, s[starts]


def block_counts(pos: np.ndarray, order: np.ndarray, starts: np.ndarray, weights: np.ndarray | None = None):
    """Positive and negative weight per tie block: two ``(B, G)`` arrays (``B = 1`` when unweighted)."""
    pos_sorted = pos[order]
    if weights is None:
        sizes = np.diff(np.append(starts, pos.size)).astype(np.float64)
        p = np.add.reduceat(pos_sorted.astype(np.float64), starts) if starts.size else np.zeros(0)
        return p[None, :], (sizes - p)[None, :]
    w = weights[:, order].astype(np.float64, copy=False)
    wp = w * pos_sorted
    p = np.add.reduceat(wp, starts, axis=1)
    tot = np.add.reduceat(w, starts, axis=1)
    return p, tot - p


def row_chunks(num_rows: int, num_cols: int):
    step = max(1, _CELLS // max(1, num_cols))
    for lo in range(0, num_rows, step):
        yield slice(lo, min(num_rows, lo + step))


def auc(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count one half) per row; NaN where a class is absent."""
    n1, n0 = p.sum(axis=1), n.sum(axis=1)
    below = n0[:, None] - np.cumsum(n, axis=1)  # negatives scored strictly lower
    num = (p * (below + 0.5 * n)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), num / (n1 * n0), np.nan)


def auc_sorted(score: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC of one unweighted score column (ties one half); NaN where a class is absent.

    Sorts the positive and the negative scores by value (numpy's vectorised sort; an argsort
    and the gathers it needs cost more) and counts, for every positive, the negatives below it
    and tied with it by binary search over the sorted negatives. The sums are exact integers.
    """
    sp, sn = np.sort(score[pos]), np.sort(score[~pos])
    if sp.size == 0 or sn.size == 0:
        return float("nan")
    below = np.searchsorted(sn, sp, "left")
    upto = np.searchsorted(sn, sp, "right")
    lo, hi = int(below.sum(dtype=np.int64)), int(upto.sum(dtype=np.int64))
    return (lo + 0.5 * (hi - lo)) / (sp.size * sn.size)


def roc_points(p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and TPR per row, starting at (0, 0), one point per tie block (descending threshold)."""
    tps = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p, axis=1)], axis=1)
    fps = np.concatenate([np.zeros((n.shape[0], 1)), np.cumsum(n, axis=1)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return fps / fps[:, -1:], tps / tps[:, -1:]


def partial_auc_fpr(p: np.ndarray, n: np.ndarray, max_fpr: float) -> np.ndarray:
    """Area for FPR <= ``max_fpr``, McClish-standardized (0.5 = chance, 1 = perfect) as scikit-learn."""
    fpr, tpr = roc_points(p, n)
    f0, f1, t0, t1 = fpr[:, :-1], fpr[:, 1:], tpr[:, :-1], tpr[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        t_at = t0 + (t1 - t0) * (max_fpr - f0) / (f1 - f0)
    full = np.where(f1 <= max_fpr, (f1 - f0) * (t0 + t1) / 2, 0.0)
    cut = np.where((f0 < max_fpr) & (f1 > max_fpr), (max_fpr - f0) * (t0 + t_at) / 2, 0.0)
    area = (full + cut).sum(axis=1)
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    out = 0.5 * (1 + (area - min_area) / (max_area - min_area))
    return np.where(np.isfinite(fpr[:, -1]) & np.isfinite(tpr[:, -1]), out, np.nan)


def partial_auc_tpr(p: np.ndarray, n: np.ndarray, min_tpr: float) -> np.ndarray:
    """Area between the ROC curve and the TPR floor ``min_tpr`` (range 0 .. 1 - min_tpr)."""
    fpr, tpr = roc_points(p, n)
    f0, f1, t0, t1 = fpr[:, :-1], fpr[:, 1:], tpr[:, :-1], tpr[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        f_cross = f0 + (f1 - f0) * (min_tpr - t0) / (t1 - t0)
    above = np.where(t0 >= min_tpr, (f1 - f0) * ((t0 + t1) / 2 - min_tpr), 0.0)
    cross = np.where((t0 < min_tpr) & (t1 > min_tpr), (f1 - f_cross) * (t1 - min_tpr) / 2, 0.0)
    out = (above + cross).sum(axis=1)
    return np.where(np.isfinite(fpr[:, -1]) & np.isfinite(tpr[:, -1]), out, np.nan)


def average_precision(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Average precision (step-wise area under the precision-recall curve, as scikit-learn)."""
    tps, fps = np.cumsum(p, axis=1), np.cumsum(n, axis=1)
    n1 = tps[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(p > 0, tps / (tps + fps), 0.0)
        return np.where(n1 > 0, (p * precision).sum(axis=1) / n1, np.nan)


def auc_pairwise(s_pos: np.ndarray, s_neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """ROC AUC per resample as ``w_pos @ K @ w_neg`` with ``K[i, j] = [s_i > s_j] + [s_i == s_j] / 2``.

    For small samples (the usual clinical study) one matrix product beats sorting per resample.
    """
    k = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])
    w_pos, w_neg = w_pos.astype(np.float64), w_neg.astype(np.float64)
    out = np.empty(w_pos.shape[0])
    for rows in row_chunks(w_pos.shape[0], max(k.shape[1], 1)):
        num = ((w_pos[rows] @ k) * w_neg[rows]).sum(axis=1)
        den = w_pos[rows].sum(axis=1) * w_neg[rows].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out
