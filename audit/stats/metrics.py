"""Effect sizes and error rates of a membership score: AUC, TPR at a fixed low FPR, ROC points.

Convention throughout: ``pos`` are the scores of works that should score high (members, or suspects),
``neg`` the scores of works that should not (nonmembers, or controls); higher = more member-like.

Point estimates come from scikit-learn (``roc_auc_score``, ``roc_curve``). Confidence intervals are
stratified percentile bootstraps: positives and negatives are resampled *separately*, so every replicate
keeps the observed class sizes (the design is fixed by the evidence, not random). The bootstrap
replicates use closed forms that are algebraically identical to the sklearn estimates (AUC = Mann–Whitney
U / (n_pos · n_neg); TPR at FPR ≤ f = share of positives above the (⌊f·n_neg⌋+1)-th largest negative)
because calling sklearn a thousand times per interval costs seconds per attack; tests check the two
agree, ties included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["AucCI", "TprAtFpr", "RocPoints", "auc_with_ci", "tpr_at_fpr", "roc_points"]


@dataclass(frozen=True)
class AucCI:
    """AUC of ``pos`` vs ``neg`` with a stratified percentile-bootstrap CI at ``level``."""

    auc: float
    lo: float
    hi: float
    n_pos: int
    n_neg: int
    level: float = 0.95
    n_boot: int = 1000


@dataclass(frozen=True)
class TprAtFpr:
    """Largest TPR whose empirical FPR is ≤ ``fpr``, with a stratified bootstrap CI.

    ``threshold``: scores ≥ threshold are called members (sklearn's convention; ``inf`` when no finite
    threshold keeps the FPR low enough). ``n_neg_above_threshold``: negatives at or above it, i.e. the
    number of false positives the FPR estimate rests on. ``achievable`` is False when
    ``n_neg < 1/fpr``: then the only admissible threshold lies above every negative, the empirical FPR
    is 0 and the data cannot tell an FPR of ``fpr`` from one of ``1/n_neg``.
    """

    fpr: float
    tpr: float
    lo: float
    hi: float
    threshold: float
    n_pos: int
    n_neg: int
    n_neg_above_threshold: int
    achievable: bool
    level: float = 0.95
    n_boot: int = 1000


@dataclass(frozen=True)
class RocPoints:
    """sklearn ``roc_curve`` output (all points kept) plus the AUC, for plotting."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def _check(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(pos, dtype=float).ravel()
    neg = np.asarray(neg, dtype=float).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need at least one positive and one negative score (got {pos.size} and {neg.size})")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores contain NaN or infinite values")
    return pos, neg


def _labels_scores(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.ones(pos.size, dtype=int), np.zeros(neg.size, dtype=int)])
    return y, np.concatenate([pos, neg])


def _stratified_resample(
    pos: np.ndarray, neg: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[n_boot, n_pos]`` and ``[n_boot, n_neg]`` resamples, each class drawn with replacement from itself."""
    rng = np.random.default_rng(seed)
    bp = pos[rng.integers(0, pos.size, size=(n_boot, pos.size))]
    bn = neg[rng.integers(0, neg.size, size=(n_boot, neg.size))]
    return bp, bn


def _auc_rows(bp: np.ndarray, bn: np.ndarray) -> np.ndarray:
    """Row-wise AUC via mid-ranks: (rank-sum of positives − n_pos(n_pos+1)/2) / (n_pos·n_neg).

    Mid-ranks count a tied (pos, neg) pair as 1/2, exactly as ``roc_auc_score`` does.
    """
    n_pos, n_neg = bp.shape[1], bn.shape[1]
    ranks = rankdata(np.concatenate([bp, bn], axis=1), axis=1)
    u = ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _tpr_rows(bp: np.ndarray, bn: np.ndarray, fpr: float) -> np.ndarray:
    """Row-wise largest TPR with empirical FPR ≤ ``fpr``.

    At most k = ⌊fpr·n_neg⌋ negatives may score at or above the threshold, so the threshold must lie
    strictly above v = the (k+1)-th largest negative, and the best such threshold calls every positive
    with score > v a member. With k ≥ n_neg every threshold is allowed and TPR = 1.
    """
    n_neg = bn.shape[1]
    k = _allowed_false_positives(fpr, n_neg)
    if k >= n_neg:
        return np.ones(bp.shape[0])
    v = -np.sort(-bn, axis=1)[:, k]
    return (bp > v[:, None]).mean(axis=1)


def _allowed_false_positives(fpr: float, n_neg: int) -> int:
    # A small tolerance so that e.g. fpr = 0.01 with n_neg = 300 allows 3 (0.01*300 = 3.0000000000000004).
    return int(math.floor(fpr * n_neg + 1e-9))


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def auc_with_ci(
    pos_scores: np.ndarray,
    neg_scores: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> AucCI:
    """AUC (probability that a random positive outscores a random negative, ties count ½).

    The CI is a stratified percentile bootstrap with ``n_boot`` replicates drawn from
    ``numpy.random.default_rng(seed)``, so the same inputs and seed give the same interval.
    """
    pos, neg = _check(pos_scores, neg_scores)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be ≥ 1, got {n_boot}")
    y, s = _labels_scores(pos, neg)
    auc = float(roc_auc_score(y, s))
    bp, bn = _stratified_resample(pos, neg, n_boot, seed)
    lo, hi = _percentile_ci(_auc_rows(bp, bn), level)
    return AucCI(auc=auc, lo=lo, hi=hi, n_pos=int(pos.size), n_neg=int(neg.size), level=level, n_boot=n_boot)


def tpr_at_fpr(
    pos_scores: np.ndarray,
    neg_scores: np.ndarray,
    fpr: float,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> TprAtFpr:
    """TPR at the largest ROC point whose FPR is ≤ ``fpr`` (sklearn ``roc_curve``), with a bootstrap CI.

    With fewer than ``1/fpr`` negatives the threshold rests on zero negatives (it sits above all of
    them); the value is still returned but ``achievable`` is False and callers should say so.
    """
    pos, neg = _check(pos_scores, neg_scores)
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    y, s = _labels_scores(pos, neg)
    f, t, thr = roc_curve(y, s, drop_intermediate=False)
    ok = np.flatnonzero(f <= fpr + 1e-12)
    # Highest admissible TPR; argmax takes the first such point, i.e. (points run by decreasing
    # threshold) the strictest threshold reaching it, the one with the fewest false positives.
    best = ok[np.argmax(t[ok])]
    threshold = float(thr[best])
    n_above = int((neg >= threshold).sum())
    bp, bn = _stratified_resample(pos, neg, n_boot, seed)
    lo, hi = _percentile_ci(_tpr_rows(bp, bn, fpr), level)
    return TprAtFpr(
        fpr=float(fpr),
        tpr=float(t[best]),
        lo=lo,
        hi=hi,
        threshold=threshold,
        n_pos=int(pos.size),
        n_neg=int(neg.size),
        n_neg_above_threshold=n_above,
        achievable=bool(neg.size * fpr >= 1.0 - 1e-9),
        level=level,
        n_boot=n_boot,
    )


def roc_points(pos_scores: np.ndarray, neg_scores: np.ndarray) -> RocPoints:
    """Full ROC curve (sklearn ``roc_curve``, no points dropped) and its AUC."""
    pos, neg = _check(pos_scores, neg_scores)
    y, s = _labels_scores(pos, neg)
    f, t, thr = roc_curve(y, s, drop_intermediate=False)
    return RocPoints(fpr=f, tpr=t, thresholds=thr, auc=float(roc_auc_score(y, s)))
