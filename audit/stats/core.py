"""The few quantities every part of the tool computes, defined once.

Used by the analysis (:mod:`audit.stats.analysis`, :mod:`audit.stats.gates`, :mod:`audit.stats.metrics`,
:mod:`audit.stats.tests`), the reconstruction tests (:mod:`audit.reconstruction.runner`), the benchmark
(:mod:`audit.benchmark`) and the report:

- :func:`auc` / :func:`auc_rows` — P(a positive outscores a negative), ties counting ½ (mid-ranks; the same
  number as ``sklearn.metrics.roc_auc_score`` and U / (n_pos·n_neg) of the Mann–Whitney test);
- :func:`conformal_pvalues` — the per-work p-value (1 + #{controls ≥ s}) / (n_control + 1);
- :func:`clopper_pearson` — the exact binomial interval for a rate;
- :func:`format_p` — a p-value as text, never rounded across α.

This module imports nothing else from the package, so any module can use it without an import cycle.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

__all__ = ["auc", "auc_rows", "clopper_pearson", "conformal_pvalues", "format_p"]


def auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Row-wise AUC of ``pos`` ``[R, n_pos]`` against ``neg`` ``[R, n_neg]``:
    (rank-sum of positives − n_pos(n_pos+1)/2) / (n_pos·n_neg), mid-ranks (a tied pair counts ½)."""
    pos, neg = np.atleast_2d(np.asarray(pos, float)), np.atleast_2d(np.asarray(neg, float))
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    u = ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(random positive outscores random negative), ties ½; None when a side is empty."""
    pos, neg = np.asarray(pos, float).ravel(), np.asarray(neg, float).ravel()
    if pos.size == 0 or neg.size == 0:
        return None
    return float(auc_rows(pos[None], neg[None])[0])


def conformal_pvalues(scores: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """p_i = (1 + #{controls with score ≥ s_i}) / (n_control + 1), one per score, in input order.

    Ties count against the work (≥, not >), which keeps the p-value valid (conservative) with ties.
    """
    c = np.sort(np.asarray(controls, dtype=float).ravel())
    s = np.asarray(scores, dtype=float)
    n_ge = c.size - np.searchsorted(c, s, side="left")
    return (1.0 + n_ge) / (c.size + 1.0)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) binomial interval for k successes in n trials (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(int(k), int(n), alpha=1.0 - level, method="beta")
    return float(lo), float(hi)


def format_p(p: float | None, alpha: float | None = None) -> str:
    """p-value text used in verdicts and reports: 3 significant figures (``g`` format).

    With ``alpha`` given, more digits are used if rounding would put p on the wrong side of α
    (0.04996 must not read "0.05" next to "rejected").
    """
    if p is None or not math.isfinite(p):
        return "–"
    for digits in range(3, 10):
        s = f"{p:.{digits}g}"
        if alpha is None or (float(s) <= alpha) == (p <= alpha):
            return s
    return repr(p)
