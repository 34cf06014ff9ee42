"""What the validity gates share: the primary statistic's data, the primary test and its batched form, rates,
the placebo's split draws, resampling of known members and nonmembers, and the context every gate receives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.stats.core import clopper_pearson
from audit.stats.results import CrossfitResult, GateResult, TestResult
from audit.stats.settests import SET_TESTS, crossfit_folds, crossfit_null, crossfit_pvalues_from_null
from audit.stats.settests.crossfit import _standardise

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.plan import AnalysisPlan


PLACEBO_ALPHAS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)

@dataclass
class PrimaryData:
    """Inputs of the primary statistic per role: 1-D scores (one attack) or ``[n, d]`` (a feature set)."""

    label: str
    names: tuple[str, ...]
    values: dict[str, np.ndarray]
    ids: dict[str, list[str]]

    @property
    def multi(self) -> bool:
        return next(iter(self.values.values())).ndim == 2

    def n(self, role: str) -> int:
        v = self.values.get(role)
        return 0 if v is None else int(v.shape[0])

def _fmt(p: float, alpha: float | None = None) -> str:
    from audit.stats.core import format_p

    return format_p(p, alpha)


def _gate(name: str, status: str, summary: str, **details: Any) -> GateResult:
    from audit.stats.gates import GATE_TITLES  # the registry (this module is imported while it is built)

    return GateResult(name, GATE_TITLES[name], status, summary, details)


# ---------------------------------------------------------------------------------------------- primary test
def _strata_list(strata: dict[str, str] | None, ids: list[str] | None, what: str) -> list[str] | None:
    if strata is None or ids is None:
        return None
    missing = [i for i in ids if i not in strata]
    if missing:
        raise ValueError(f"{len(missing)} {what} works have no stratum value (e.g. {missing[0][:12]}); every work "
                         "needs one when the plan is stratified")
    return [strata[i] for i in ids]


def run_primary(plan: "AnalysisPlan", s: np.ndarray, c: np.ndarray, names: tuple[str, ...] = (),
                seed_offset: int = 0, s_ids: list[str] | None = None, c_ids: list[str] | None = None,
                strata: dict[str, str] | None = None) -> tuple[TestResult, CrossfitResult | None]:
    """The plan's set-level test (:data:`audit.stats.settests.SET_TESTS` ``[plan.test]``) of ``s`` (suspect-side)
    vs ``c`` (controls). A feature set is combined with non-negative weights (every attack score is
    member-oriented) and folded in image-id order. With a stratified plan (``strata``: image id → stratum) works
    are compared within their stratum only."""
    seed = plan.seed + seed_offset
    st = strata if plan.strata else None
    return SET_TESTS[plan.test].run(plan, s, c, names, seed, s_ids, c_ids, _strata_list(st, s_ids, "suspect-side"),
                                    _strata_list(st, c_ids, "control"))


def _batch_pvalues(plan: "AnalysisPlan", S: np.ndarray, C: np.ndarray, seed: int | None = None,
                   s_strata: np.ndarray | None = None, c_strata: np.ndarray | None = None) -> np.ndarray:
    """Primary-test p-values of single-feature rows (``S`` [R, n_s] vs ``C`` [R, n_c] or [n_c]); for a
    stratified plan with the strata of those works (same shapes). Each row's p-value is exactly the value the
    primary test (:func:`run_primary`: same test, ``plan.n_permutations``, seed ``plan.seed``) gives that row."""
    spec = SET_TESTS[plan.test]
    if spec.batch is None:
        raise ValueError(f"test {plan.test!r} has no batched form")
    return spec.batch(plan, S, C, plan.seed if seed is None else seed, s_strata, c_strata)


def _rate(pvals: np.ndarray, alpha: float, level: float) -> dict[str, float]:
    k = int((np.asarray(pvals) <= alpha).sum())
    lo, hi = clopper_pearson(k, len(pvals), level)
    return {"alpha": float(alpha), "k": k, "n": int(len(pvals)), "rate": k / len(pvals), "lo": lo, "hi": hi}

# ---------------------------------------------------------------------------------------------- blind baseline
def _primary_score_1d(data: PrimaryData, role: str) -> np.ndarray:
    """One number per work for the primary statistic: the score itself, or for a feature set the mean of its
    z-scored features (standardised on all works together, label-free)."""
    v = data.values[role]
    if v.ndim == 1:
        return v
    allv = np.vstack([x for x in data.values.values() if x is not None and x.size])
    mu, sd = allv.mean(axis=0), allv.std(axis=0)
    return ((v - mu) / np.where(sd > 0, sd, 1.0)).mean(axis=1)

# ---------------------------------------------------------------------------------------------- placebo
def _strata_of(strata: dict[str, str] | None, ids: list[str]) -> list[str] | None:
    if not strata:
        return None
    out = [strata.get(i) for i in ids]
    return None if any(v is None for v in out) else [str(v) for v in out]

def _split_draws(rng: np.random.Generator, M: int, n_c: int, n_s: int, c_strata: list[str] | None,
                 s_strata: list[str] | None) -> np.ndarray:
    """``[M, n_c]`` orders of the controls whose first ``n_s`` entries are the pseudo-suspects. With strata, the
    pseudo-suspects of each split have the suspects' per-stratum counts (capped so that every stratum keeps at
    least one control), so the split mimics the design the primary test is run on."""
    if c_strata is None or s_strata is None:
        return np.argsort(rng.random((M, n_c)), axis=1)
    cs = np.asarray(c_strata, dtype=str)
    want = pd.Series(list(s_strata)).value_counts()
    out = np.empty((M, n_c), dtype=int)
    picks, rest = [], []
    for g in np.unique(cs):
        idx = np.flatnonzero(cs == g)
        k = int(min(want.get(g, 0), idx.size - 1))
        order = idx[np.argsort(rng.random((M, idx.size)), axis=1)]
        picks.append(order[:, :k])
        rest.append(order[:, k:])
    out[:] = np.concatenate(picks + rest, axis=1)
    return out

def _crossfit_rows(Xs: np.ndarray, Y: np.ndarray, folds: int, fold_seed: int, codes: np.ndarray | None) -> np.ndarray:
    from audit.stats.settests.crossfit import _crossfit_batch

    return _crossfit_batch(Xs, Y, folds, fold_seed, 1.0, True, codes)[0]

def resampled_pvalues(plan: "AnalysisPlan", data: PrimaryData, pool: np.ndarray, pool_strata: list[str] | None,
                      c: np.ndarray, c_strata: list[str] | None, k: int, R: int, seed: int
                      ) -> tuple[np.ndarray, str]:
    """Primary-test p-values of ``R`` draws of ``k`` works from ``pool`` (known members, or known nonmembers)
    against the controls ``c``, without replacement. One attack: every draw is tested exactly as the suspects
    are. A feature set: every draw's cross-fitted statistic is computed exactly as for the suspects, and its
    p-value read off one null of ``plan.crossfit_permutations`` relabellings of the pooled controls with ``k``
    pseudo-suspects (within strata for a stratified plan) — the same statistic, its null estimated once rather
    than per draw. Returns (p-values, how they were obtained, in words)."""
    rng = np.random.default_rng(seed)
    n_pool = pool.shape[0]
    idx = np.argsort(rng.random((R, n_pool)), axis=1)[:, :k]
    if not data.multi:
        ps = None if pool_strata is None else np.asarray(pool_strata, dtype=str)
        pv = _batch_pvalues(plan, pool[idx], c, None, None if ps is None else ps[idx], c_strata)
        return pv, "each draw tested exactly as the suspects are"
    n_c = c.shape[0]
    folds = crossfit_folds(k, n_c, plan.crossfit_folds)
    if folds < 2:
        raise ValueError("too few works for a cross-fitted resample")
    stats_ = np.empty(R)
    for r in range(R):
        X = np.vstack([pool[idx[r]], c])
        Xs, _, _ = _standardise(X, list(data.names))
        codes = None
        if plan.strata and pool_strata is not None and c_strata is not None:
            lab = np.r_[np.asarray(pool_strata, dtype=str)[idx[r]], np.asarray(c_strata, dtype=str)]
            codes = np.unique(lab, return_inverse=True)[1]
        y = np.r_[np.ones(k, dtype=int), np.zeros(n_c, dtype=int)]
        stats_[r] = _crossfit_rows(Xs, y[None], folds, plan.seed, codes)[0]
    Cs, _, _ = _standardise(c, list(data.names))
    codes_c, lab_c = None, None
    if plan.strata and pool_strata is not None and c_strata is not None:
        order = _split_draws(rng, 1, n_c, k, c_strata, list(np.asarray(pool_strata, dtype=str)[idx[0]]))[0]
        lab_c = np.zeros(n_c, dtype=int)
        lab_c[order[:k]] = 1
        codes_c = np.unique(np.asarray(c_strata, dtype=str), return_inverse=True)[1]
    kk = int(lab_c.sum()) if lab_c is not None else k
    ref = crossfit_null(Cs, kk, plan.crossfit_permutations, crossfit_folds(kk, n_c - kk, plan.crossfit_folds),
                        seed + 1, nonneg=True, fold_seed=plan.seed, labels=lab_c, strata=codes_c)
    pv = crossfit_pvalues_from_null(stats_, ref, plan.alternative)
    return pv, (f"each draw's cross-fitted statistic compared with one null of {plan.crossfit_permutations} "
                "relabellings of the controls")

def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from audit.stats.core import auc_rows

    return float(auc_rows(np.asarray(pos, float)[None], np.asarray(neg, float)[None])[0])

# ---------------------------------------------------------------------------------------------- registry
@dataclass
class GateContext:
    """Everything a gate may look at: the plan, the primary statistic's data, the model-free features, the
    image table, the plan's strata map, the placebo's stratum column, and the gates already run (in order)."""

    plan: "AnalysisPlan"
    data: PrimaryData
    features: pd.DataFrame | None = None
    images: pd.DataFrame | None = None
    plan_strata: dict[str, str] | None = None
    placebo_strata: dict[str, str] | None = None
    placebo_column: str | None = None
    done: dict[str, GateResult] = field(default_factory=dict)
