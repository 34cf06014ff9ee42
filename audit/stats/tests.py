"""Hypothesis tests: set-level (suspects vs controls), per-artwork conformal p-values, multiplicity.

H0 of the set-level tests: no suspect work was in the training data, so suspect and control scores are
exchangeable. The alternative is one-sided — members score *higher* (every attack's score is oriented
that way) — because a suspect set that scores lower than the controls is no evidence of membership.

Per-artwork p-values are conformal (Vovk et al.; Bates et al., "Testing for outliers with conformal
p-values", 2023): valid for each suspect that is exchangeable with the controls, whatever the score
distribution. They are floored at 1/(n_control+1), which is why :func:`min_controls_for` exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "TestResult",
    "mann_whitney",
    "permutation_test",
    "conformal_pvalues",
    "holm",
    "benjamini_hochberg",
    "min_controls_for",
]


@dataclass(frozen=True)
class TestResult:
    """One set-level test. ``alternative`` is always "greater": suspects score higher than controls."""

    # Tell pytest this is not a test class despite the name.
    __test__ = False

    name: str
    statistic: float
    p_value: float
    n_suspect: int
    n_control: int
    alternative: str = "greater"
    n_resamples: int | None = None


def _as_scores(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        raise ValueError(f"no {what} scores")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} scores contain NaN or infinite values")
    return a


def mann_whitney(suspect: np.ndarray, control: np.ndarray) -> TestResult:
    """One-sided Mann–Whitney U test (scipy, ``alternative='greater'``).

    ``statistic`` is U of the suspects, i.e. AUC · n_suspect · n_control. scipy picks the exact null
    distribution for small samples without ties and the tie-corrected normal approximation otherwise.
    """
    s = _as_scores(suspect, "suspect")
    c = _as_scores(control, "control")
    r = stats.mannwhitneyu(s, c, alternative="greater")
    return TestResult("mann_whitney", float(r.statistic), float(r.pvalue), int(s.size), int(c.size))


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def permutation_test(
    suspect: np.ndarray, control: np.ndarray, n_resamples: int = 10000, seed: int = 0
) -> TestResult:
    """One-sided permutation test on mean(suspect) − mean(control) (``scipy.stats.permutation_test``).

    Labels are permuted between the two sets (``permutation_type='independent'``). scipy counts the
    observed statistic among the resamples, so a randomized p-value is never below 1/(n_resamples+1);
    when ``n_resamples`` exceeds the number of distinct splits scipy enumerates them exactly instead.
    """
    s = _as_scores(suspect, "suspect")
    c = _as_scores(control, "control")
    r = stats.permutation_test(
        (s, c),
        _mean_difference,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return TestResult(
        "permutation", float(r.statistic), float(r.pvalue), int(s.size), int(c.size), n_resamples=n_resamples
    )


def conformal_pvalues(suspect_scores: np.ndarray, control_scores: np.ndarray) -> np.ndarray:
    """p_i = (1 + #{controls with score ≥ s_i}) / (n_control + 1), one per suspect, in input order.

    Ties count against the suspect (≥, not >), which keeps the p-value valid (conservative) with ties.
    """
    s = _as_scores(suspect_scores, "suspect")
    c = np.sort(_as_scores(control_scores, "control"))
    n_ge = c.size - np.searchsorted(c, s, side="left")
    return (1.0 + n_ge) / (c.size + 1.0)


def _check_pvals(pvals: np.ndarray) -> np.ndarray:
    p = np.asarray(pvals, dtype=float).ravel()
    if p.size and not ((p >= 0).all() and (p <= 1).all()):
        raise ValueError("p-values must lie in [0, 1]")
    return p


def _adjust(pvals: np.ndarray, method: str) -> np.ndarray:
    p = _check_pvals(pvals)
    if p.size == 0:
        return p
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:  # statsmodels is a dependency; the fallback keeps stats usable in slim installs
        return _adjust_fallback(p, method)
    return np.asarray(multipletests(p, method=method)[1], dtype=float)


def _adjust_fallback(p: np.ndarray, method: str) -> np.ndarray:
    """Same formulas as statsmodels' ``holm`` and ``fdr_bh``."""
    m = p.size
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(ps * np.arange(m, 0, -1))
    elif method == "fdr_bh":
        adj = np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]
    else:
        raise ValueError(f"unknown method {method!r}")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def holm(pvals: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control); reject where adjusted ≤ α."""
    return _adjust(pvals, "holm")


def benjamini_hochberg(pvals: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false-discovery-rate control, for screening)."""
    return _adjust(pvals, "fdr_bh")


def min_controls_for(alpha: float, n_tests: int) -> int:
    """Smallest number of controls with which one conformal p-value can survive Holm at ``alpha``.

    The smallest conformal p-value is 1/(n+1) and Holm multiplies the smallest p-value by ``n_tests``,
    so we need n_tests/(n+1) ≤ α, i.e. n ≥ n_tests/α − 1. The search below evaluates exactly the
    floating-point expression :func:`holm` applies, so the answer agrees with it at the boundary.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_tests < 1:
        raise ValueError(f"n_tests must be ≥ 1, got {n_tests}")
    n = max(0, math.ceil(n_tests / alpha - 1.0) - 2)
    while (1.0 / (n + 1.0)) * n_tests > alpha:
        n += 1
    return n
