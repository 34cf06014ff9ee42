"""Per-work analysis: conformal p-values, multiplicity (Holm, Hommel = closed testing, BH), the "at least k of
n" bound, Storey's estimate of the number of members, and the controls a per-work claim needs.

Per-artwork p-values are conformal (Vovk et al.; Bates et al., "Testing for outliers with conformal p-values",
2023): valid for each suspect that is exchangeable with the controls, whatever the score distribution. They are
floored at 1/(n_control+1), which is why :func:`min_controls_for` exists.
"""
from __future__ import annotations

import math

import numpy as np

from audit.stats import core as _core
from audit.stats.results import StoreyEstimate
from audit.stats.settests._common import _as_scores

__all__ = ["conformal_pvalues", "stratified_conformal_pvalues", "holm", "hommel", "benjamini_hochberg",
           "true_discovery_bound", "hommel_h", "min_controls_for", "storey_pi0", "storey_estimate", "clopper_pearson"]

clopper_pearson = _core.clopper_pearson


def conformal_pvalues(suspect_scores: np.ndarray, control_scores: np.ndarray) -> np.ndarray:
    """p_i = (1 + #{controls with score ≥ s_i}) / (n_control + 1), one per suspect, in input order
    (:func:`audit.stats.core.conformal_pvalues`, after checking the inputs)."""
    return _core.conformal_pvalues(_as_scores(suspect_scores, "suspect"), _as_scores(control_scores, "control"))

def stratified_conformal_pvalues(suspect_scores: np.ndarray, control_scores: np.ndarray,
                                 suspect_strata: list[str], control_strata: list[str]) -> np.ndarray:
    """Conformal p-value of each suspect against the controls of its own stratum only:
    (1 + #{controls of stratum g with score ≥ s_i}) / (n_g + 1). NaN for a suspect whose stratum has no
    control (no valid comparison exists). Floored at 1/(n_g + 1)."""
    s = _as_scores(suspect_scores, "suspect")
    c = _as_scores(control_scores, "control")
    gs, gc = np.asarray(suspect_strata, dtype=str), np.asarray(control_strata, dtype=str)
    out = np.full(s.size, np.nan)
    for st in np.unique(gs):
        cs = c[gc == st]
        if cs.size:
            sel = gs == st
            out[sel] = conformal_pvalues(s[sel], cs)
    return out

def hommel_h(pvals: np.ndarray, alpha: float) -> int:
    """Size of the largest set of hypotheses that Simes' test does not reject at ``alpha`` (Hommel 1988): the
    largest i such that the i largest p-values satisfy p_(m−i+k) > k·α/i for every k = 1…i (0 if none)."""
    p = np.sort(_check_pvals(pvals))
    m = p.size
    for i in range(m, 0, -1):
        tail = p[m - i:]
        if (tail > np.arange(1, i + 1) * alpha / i).all():
            return i
    return 0

def true_discovery_bound(pvals: np.ndarray, alpha: float) -> int:
    """Lower (1 − α) confidence bound on how many of these hypotheses are false ("at least k of the n
    suspects were in the training data"): closed testing with Simes local tests (Goeman & Solari 2011), in
    the closed form of Goeman, Meijer, Krebs & Solari (2019): d = max_{1≤u≤n} (1 − u + #{i : h·p_i ≤ u·α}),
    with h from :func:`hommel_h`. Valid when the p-values are PRDS, which conformal p-values against shared
    controls are (Bates et al. 2023), and simultaneously over every subset a reader might pick."""
    p = _check_pvals(pvals)
    n = p.size
    if n == 0:
        return 0
    h = hommel_h(p, alpha)
    if h == 0:
        return int(n)
    ps = np.sort(p)
    u = np.arange(1, n + 1)
    counts = np.searchsorted(ps, u * alpha / h, side="right")  # #{p_i ≤ uα/h}
    return int(max(0, (1 - u + counts).max()))

def _check_pvals(pvals: np.ndarray) -> np.ndarray:
    p = np.asarray(pvals, dtype=float).ravel()
    if p.size and not ((p >= 0).all() and (p <= 1).all()):
        raise ValueError("p-values must lie in [0, 1]")
    return p

def _adjust(pvals: np.ndarray, method: str) -> np.ndarray:
    """Adjusted p-values by the formulas of statsmodels' ``multipletests`` (``holm``, ``fdr_bh``, ``hommel``),
    written out: ``multipletests`` runs ``gc.collect()`` on every call (0.4 s each in a full audit process),
    and the analysis adjusts hundreds of p-value sets. ``tests/test_stats.py`` checks equality with it."""
    p = _check_pvals(pvals)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(ps * np.arange(m, 0, -1))
    elif method == "fdr_bh":
        adj = np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]
    elif method == "hommel":
        # Wright (1992)'s algorithm, as R's p.adjust(method = "hommel")
        i = np.arange(1, m + 1)
        q = np.full(m, (m * ps / i).min())
        adj = q.copy()
        for k in range(m - 1, 1, -1):
            i1 = np.arange(m - k + 1)
            i2 = np.arange(m - k + 1, m)
            q1 = (k * ps[i2] / np.arange(2, k + 1)).min()
            q[i1] = np.minimum(k * ps[i1], q1)
            q[i2] = q[m - k]
            adj = np.maximum(adj, q)
        adj = np.maximum(adj, ps)
    else:
        raise ValueError(f"unknown method {method!r}")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out

def holm(pvals: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control); reject where adjusted ≤ α."""
    return _adjust(pvals, "holm")

def hommel(pvals: np.ndarray) -> np.ndarray:
    """Hommel adjusted p-values: closed testing with Simes local tests (Hommel 1988), the *same* procedure
    as the "at least k of n" bound of :func:`true_discovery_bound`. A work with adjusted p ≤ α is named
    individually by that procedure, so the bound is never smaller than the number of works it names
    (family-wise error control under PRDS; never fewer names than Holm)."""
    return _adjust(pvals, "hommel")

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

def storey_pi0(pvals: np.ndarray, lam: float = 0.5) -> float:
    """π̂₀(λ) = #{p > λ} / (m · (1 − λ)), capped at 1 (Storey 2002)."""
    p = _check_pvals(pvals)
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lambda must be in [0, 1), got {lam}")
    if p.size == 0:
        return 1.0
    return float(min(1.0, (p > lam).sum() / (p.size * (1.0 - lam))))

def storey_estimate(
    suspect_scores: np.ndarray,
    control_scores: np.ndarray,
    lam: float = 0.5,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> StoreyEstimate:
    """Estimated number of member suspects from their conformal p-values against the controls.

    Conformal p-values of non-member suspects are super-uniform, so π̂₀ (before the cap at 1) is conservative
    and the member count biased downwards; the cap (count ≥ 0) biases it upwards when there are few or no
    members. The interval resamples suspects and controls separately
    (with replacement) and recomputes the conformal p-values and π̂₀ in each replicate (percentile
    interval); it reflects sampling variability, not the bias of λ.
    """
    s = _as_scores(suspect_scores, "suspect")
    c = _as_scores(control_scores, "control")
    m = s.size
    pi0 = storey_pi0(conformal_pvalues(s, c), lam)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        bs = s[rng.integers(0, m, m)]
        bc = c[rng.integers(0, c.size, c.size)]
        reps[b] = m * (1.0 - storey_pi0(conformal_pvalues(bs, bc), lam))
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(reps, [tail, 100.0 - tail])
    return StoreyEstimate(float(pi0), int(m), float(m * (1.0 - pi0)), float(lo), float(hi), float(lam), level, n_boot)
