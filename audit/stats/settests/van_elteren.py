"""Van Elteren's stratified rank test (one attack, works compared within their stratum only)."""
from __future__ import annotations

import numpy as np
from scipy import stats

from audit.stats.results import TestResult
from audit.stats.settests.base import SetTest
from audit.stats.settests._common import Alternative, _as_scores, _check_alternative

__all__ = ["van_elteren_test", "van_elteren_batch", "SET_TEST"]


def _stratum_perms(seed: int, stratum: str, size: int, n_resamples: int) -> np.ndarray:
    """``[n_resamples, size]`` random orders of one stratum's works, a fixed function of (seed, stratum, size):
    the single test and its batched form draw exactly the same relabellings, and strata stay independent."""
    import zlib

    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(stratum).encode()), int(size)])
    return np.argsort(rng.random((n_resamples, size)), axis=1)

def van_elteren_test(suspect: np.ndarray, control: np.ndarray, suspect_strata: list[str], control_strata: list[str],
                     n_resamples: int = 10000, seed: int = 0, alternative: Alternative = "greater") -> TestResult:
    """Stratified rank test (van Elteren 1960): Σ_g R_g / (N_g + 1) over strata g, where R_g is the suspects'
    mid-rank sum among the N_g works of stratum g. Each stratum's Wilcoxon statistic is weighted so that
    strata count by their information (locally most powerful for a common shift), and a suspect is only ever
    compared with controls of its own stratum. p-value: ``n_resamples`` seeded relabellings *within strata*,
    (1 + #{≥}) / (1 + B) — exact under H0 (exchangeability within each stratum) whatever the ties. The
    relabellings of each stratum are a fixed function of (seed, stratum, size) (:func:`_stratum_perms`), so
    :func:`van_elteren_batch` gives every row exactly this test's p-value.

    Strata without a suspect or without a control carry no information and are left out; ``n_suspect`` and
    ``n_control`` count the works that were used.
    """
    _check_alternative(alternative)
    s = _as_scores(suspect, "suspect")
    c = _as_scores(control, "control")
    gs, gc = np.asarray(suspect_strata, dtype=str), np.asarray(control_strata, dtype=str)
    if gs.size != s.size or gc.size != c.size:
        raise ValueError("one stratum per suspect and per control is needed")
    usable = sorted(set(gs) & set(gc))
    if not usable:
        raise ValueError("no stratum has both suspects and controls, so no stratified comparison is possible")
    obs, p, n_s, n_c = _van_elteren_row(s, c, gs, gc, n_resamples, seed, alternative, {})
    return TestResult("van_elteren", obs, float(p), n_s, n_c, alternative=alternative,
                      n_resamples=n_resamples, method="permutation within strata")

def _van_elteren_row(s: np.ndarray, c: np.ndarray, gs: np.ndarray, gc: np.ndarray, n_resamples: int, seed: int,
                     alternative: str, perms: dict[tuple[str, int], np.ndarray]) -> tuple[float, float, int, int]:
    usable = np.intersect1d(gs, gc)
    if usable.size == 0:
        return 0.0, 1.0, 0, 0
    obs = 0.0
    null = np.zeros(n_resamples)
    n_s = n_c = 0
    for st in usable:
        xs, xc = s[gs == st], c[gc == st]
        w = stats.rankdata(np.r_[xs, xc]) / (xs.size + xc.size + 1.0)
        obs += w[:xs.size].sum()
        n_s += xs.size
        n_c += xc.size
        key = (str(st), w.size)
        if key not in perms:
            perms[key] = _stratum_perms(seed, str(st), w.size, n_resamples)
        null += w[perms[key][:, :xs.size]].sum(axis=1)
    tol = 1e-12 * max(1.0, abs(obs))
    if alternative == "greater":
        n_ge = int((null >= obs - tol).sum())
    else:
        # E[T] under H0: each suspect's within-stratum rank averages (N_g + 1)/2, so every suspect contributes ½
        centre = n_s / 2.0
        n_ge = int((np.abs(null - centre) >= abs(obs - centre) - tol).sum())
    return float(obs), (1.0 + n_ge) / (1.0 + n_resamples), int(n_s), int(n_c)

def van_elteren_batch(S: np.ndarray, C: np.ndarray, s_strata: np.ndarray, c_strata: np.ndarray,
                      n_resamples: int = 10000, seed: int = 0, alternative: Alternative = "greater") -> np.ndarray:
    """p-values of :func:`van_elteren_test` (same ``n_resamples`` and ``seed``: identical values) for each row of
    ``S`` ``[R, n_s]`` against ``C`` (``[n_c]`` shared or ``[R, n_c]``), with strata ``s_strata`` (``[n_s]`` or
    ``[R, n_s]``) and ``c_strata`` (``[n_c]`` or ``[R, n_c]``)."""
    _check_alternative(alternative)
    S = np.atleast_2d(np.asarray(S, dtype=float))
    R = S.shape[0]
    C = np.asarray(C, dtype=float)
    C = np.broadcast_to(C, (R, C.shape[-1])) if C.ndim == 1 else C
    gs = np.asarray(s_strata, dtype=str)
    gs = np.broadcast_to(gs, S.shape) if gs.ndim == 1 else gs
    gc = np.asarray(c_strata, dtype=str)
    gc = np.broadcast_to(gc, C.shape) if gc.ndim == 1 else gc
    perms: dict[tuple[str, int], np.ndarray] = {}
    return np.array([_van_elteren_row(S[r], C[r], gs[r], gc[r], n_resamples, seed, alternative, perms)[1]
                     for r in range(R)])


def _run(plan, s, c, names=(), seed=0, s_ids=None, c_ids=None, s_strata=None, c_strata=None):
    if s_strata is None or c_strata is None:
        raise ValueError("a stratified plan needs each work's stratum (the image table's "
                         f"{plan.strata[0] if plan.strata else 'stratum'} column)")
    return van_elteren_test(s, c, s_strata, c_strata, plan.n_permutations, seed, plan.alternative), None


def _batch(plan, S, C, seed, s_strata=None, c_strata=None):
    return van_elteren_batch(S, C, s_strata, c_strata, plan.n_permutations, seed, plan.alternative)


def _method(plan) -> str:
    col = plan.strata[0] if plan.strata else "stratum"
    return (f"Van Elteren's stratified rank test: each suspect is ranked only among the works of its own {col}, "
            f"strata weighted by 1/(n + 1); p from {plan.n_permutations} relabellings within strata.")


SET_TEST = SetTest("van_elteren", "one-sided stratified rank test (van Elteren; permutation within strata)", _run,
                   _batch, _method, needs_strata=True)
