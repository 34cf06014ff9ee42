"""Permutation test on the difference in mean score (one attack)."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from audit.stats.results import TestResult
from audit.stats.settests.base import SetTest
from audit.stats.settests._common import Alternative, _as_scores, _check_alternative

__all__ = ["permutation_test", "permutation_pvalues_batch", "SET_TEST"]


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)

def permutation_test(
    suspect: np.ndarray,
    control: np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
    alternative: Alternative = "greater",
) -> TestResult:
    """Permutation test on mean(suspect) − mean(control) (``scipy.stats.permutation_test``), one-sided by default.

    Labels are permuted between the two sets. With more distinct splits than ``n_resamples``: ``n_resamples``
    seeded relabellings drawn as :func:`permutation_pvalues_batch` draws them (so the batched form gives the
    same value), p = (1 + #{≥}) / (1 + n_resamples), never below 1/(n_resamples+1); otherwise every split is
    enumerated (``scipy.stats.permutation_test``, exact).
    """
    s = _as_scores(suspect, "suspect")
    c = _as_scores(control, "control")
    if min(s.size, c.size) == 1:  # scipy refuses a one-work sample; its exact null has only n_s + n_c splits
        return _permutation_test_one(s, c, alternative, n_resamples)
    if math.comb(s.size + c.size, s.size) > n_resamples:
        # random relabellings, drawn exactly as permutation_pvalues_batch draws them (same seed: same value)
        p = float(permutation_pvalues_batch(s[None], c, n_resamples, seed, alternative)[0])
        return TestResult("permutation", float(s.mean() - c.mean()), p, int(s.size), int(c.size),
                          alternative=alternative, n_resamples=n_resamples, method="permutation")
    r = stats.permutation_test(
        (s, c),
        _mean_difference,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=_check_alternative(alternative),
        rng=np.random.default_rng(seed),
    )
    return TestResult(
        "permutation", float(r.statistic), float(r.pvalue), int(s.size), int(c.size), alternative=alternative,
        n_resamples=n_resamples, method="permutation",
    )

def _permutation_test_one(s: np.ndarray, c: np.ndarray, alternative: Alternative, n_resamples: int) -> TestResult:
    """Exact permutation test on the mean difference when one side holds a single work (e.g. one suspect
    against its controls): every one of the n_s + n_c relabellings is enumerated, as scipy does for small
    samples, with the same relative tolerance for ties."""
    pooled = np.concatenate([s, c])
    n, k = pooled.size, s.size
    total = pooled.sum()
    if k == 1:  # the single suspect is each work in turn
        null = pooled - (total - pooled) / (n - 1)
    else:  # the single control is each work in turn
        null = (total - pooled) / (n - 1) - pooled
    observed = float(s.mean() - c.mean())
    tol = 1e-14 * max(abs(observed), 1e-300)
    alt = _check_alternative(alternative)
    if alt == "greater":
        p = np.mean(null >= observed - tol)
    elif alt == "less":
        p = np.mean(null <= observed + tol)
    else:
        p = min(1.0, 2 * min(np.mean(null >= observed - tol), np.mean(null <= observed + tol)))
    return TestResult("permutation", observed, float(p), int(s.size), int(c.size), alternative=alternative,
                      n_resamples=n_resamples)

def permutation_pvalues_batch(
    suspects: np.ndarray,
    controls: np.ndarray,
    n_resamples: int = 999,
    seed: int = 0,
    alternative: Alternative = "greater",
) -> np.ndarray:
    """Permutation p-values (mean difference, +1 correction) for each row of ``suspects`` ``[R, n_s]`` vs the
    matching row of ``controls`` (``[R, n_c]`` or a shared ``[n_c]``).

    Every row gets ``n_resamples`` random relabellings of its own pooled data. The relabelling index sets
    are drawn once and shared across rows (all pools have the same size), which keeps each row's p-value
    exactly a permutation p-value while costing one gather per row. Same formula as scipy's
    ``permutation_test`` with random resamples: (1 + #{resampled ≥ observed}) / (1 + n_resamples); the
    two-sided p-value is twice the smaller one-sided one, capped at 1, as in scipy.
    """
    _check_alternative(alternative)
    S = np.atleast_2d(np.asarray(suspects, dtype=float))
    C = np.asarray(controls, dtype=float)
    C = np.broadcast_to(C, (S.shape[0], C.shape[-1])) if C.ndim == 1 else C
    n_s, n_c = S.shape[1], C.shape[1]
    n = n_s + n_c
    rng = np.random.default_rng(seed)
    idx = np.argpartition(rng.random((n_resamples, n)), n_s - 1, axis=1)[:, :n_s]  # random n_s-subsets
    pooled = np.concatenate([S, C], axis=1)
    obs_sum = S.sum(axis=1)
    out = np.empty(S.shape[0])
    chunk = max(1, int(5e6 // max(1, n_resamples * n_s)))  # ≤ 40 MB of gathered scores at a time
    for a in range(0, S.shape[0], chunk):
        sums = pooled[a:a + chunk][:, idx].sum(axis=2)  # [chunk, n_resamples]
        # mean difference is increasing in the suspect-group sum (fixed group sizes), so compare sums;
        # a relative tolerance keeps float noise from breaking exact ties (scipy does the same).
        tol = 1e-12 * np.maximum(1.0, np.abs(obs_sum[a:a + chunk]))[:, None]
        ge = ((sums >= obs_sum[a:a + chunk, None] - tol).sum(axis=1) + 1.0) / (n_resamples + 1.0)
        if alternative == "greater":
            out[a:a + chunk] = ge
        else:
            le = ((sums <= obs_sum[a:a + chunk, None] + tol).sum(axis=1) + 1.0) / (n_resamples + 1.0)
            out[a:a + chunk] = np.minimum(1.0, 2.0 * np.minimum(ge, le))
    return out


def _run(plan, s, c, names=(), seed=0, s_ids=None, c_ids=None, s_strata=None, c_strata=None):
    return permutation_test(s, c, plan.n_permutations, seed, plan.alternative), None


def _batch(plan, S, C, seed, s_strata=None, c_strata=None):
    S2 = np.atleast_2d(S)
    n_s, n_c = S2.shape[1], np.asarray(C).shape[-1]
    if math.comb(n_s + n_c, n_s) > plan.n_permutations and min(n_s, n_c) > 1:
        return permutation_pvalues_batch(S2, C, plan.n_permutations, seed, plan.alternative)
    Cb = np.broadcast_to(np.asarray(C, float), (S2.shape[0], n_c))
    return np.array([permutation_test(S2[r], Cb[r], plan.n_permutations, seed, plan.alternative).p_value
                     for r in range(S2.shape[0])])


def _method(plan) -> str:
    return (f"Permutation test on the difference in mean score, {plan.n_permutations} random relabellings, "
            f"p = (1 + #resampled ≥ observed) / (1 + {plan.n_permutations}).")


SET_TEST = SetTest("permutation", "one-sided permutation test on the difference in means", _run, _batch, _method)
