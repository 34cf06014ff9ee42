"""Cross-fitted aggregation of several attack scores (a feature set): out-of-fold AUC, permutation null.

A logistic regression is trained on K−1 folds of suspect-vs-control labels and scores the held-out fold; the
statistic is the AUC of the out-of-fold scores (within strata for a stratified plan), and its null distribution
comes from re-running the whole cross-fitted procedure on permuted labels. Because the procedure is a fixed
function of (features, labels), the permutation p-value is exactly valid under exchangeability whatever the
classifier learns (cf. CDI, Dubiński et al. 2025; LLM dataset inference, Maini et al. 2024).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from audit.stats import core as _core
from audit.stats.results import CrossfitResult, TestResult
from audit.stats.settests.base import SetTest
from audit.stats.settests._common import Alternative, _check_alternative, strata_permutations

__all__ = ["crossfit_test", "crossfit_auc", "crossfit_null", "crossfit_folds", "crossfit_pvalues_from_null",
           "within_strata_auc", "SET_TEST"]


def _fast_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC via mid-ranks (ties count ½), as ``sklearn.metrics.roc_auc_score``."""
    return float(_core.auc_rows(s[y == 1][None], s[y == 0][None])[0])

def _standardise(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Centre and scale every column on all rows (label-free, so it does not break the permutation
    argument); drop columns that are constant or contain non-finite values."""
    X = np.asarray(X, dtype=float)
    finite = np.isfinite(X).all(axis=0)
    Xf = np.where(np.isfinite(X), X, 0.0)
    sd = np.where(finite, Xf.std(axis=0), 0.0)
    keep = finite & (sd > 1e-12 * np.maximum(1.0, np.abs(Xf.mean(axis=0))))
    Xk = X[:, keep]
    Xs = (Xk - Xk.mean(axis=0)) / Xk.std(axis=0) if Xk.shape[1] else Xk
    return Xs, [n for n, k in zip(names, keep) if k], [n for n, k in zip(names, keep) if not k]

def _logistic_batch(X: np.ndarray, Y: np.ndarray, W: np.ndarray, C: float, nonneg: bool,
                    max_iter: int = 50, tol: float = 1e-9) -> np.ndarray:
    """Solve many weighted L2 logistic regressions on the same rows at once (projected Newton).

    ``X`` ``[n, d]``; ``Y`` ``[B, n]`` labels in {0, 1}; ``W`` ``[B, n]`` sample weights (0 = not in this
    problem's training set). Each problem minimises ½‖β‖² + C · Σᵢ wᵢ log(1 + exp(−ỹᵢ(xᵢβ + b))), ỹ = ±1,
    with an unpenalised intercept b and, when ``nonneg``, β ≥ 0. The objective is strictly convex in β, so
    the solution is unique; Newton steps on the free variables (those not held at 0 by a positive
    gradient: Bertsekas' projected Newton) with a backtracking line search converge in a few iterations.
    Returns ``[B, d + 1]`` (β, then b).
    """
    from scipy.special import expit

    B, n = Y.shape
    d = X.shape[1]
    Xa = np.hstack([X, np.ones((n, 1))])
    ys = np.where(Y == 1, 1.0, -1.0)
    reg = np.r_[np.ones(d), 0.0]
    eye = np.eye(d + 1)

    def objective(th: np.ndarray) -> np.ndarray:
        z = ys * (th @ Xa.T)
        return 0.5 * (reg * th * th).sum(axis=1) + C * (W * np.logaddexp(0.0, -z)).sum(axis=1)

    theta = np.zeros((B, d + 1))
    f = objective(theta)
    todo = np.ones(B, dtype=bool)
    for _ in range(max_iter):
        if not todo.any():
            break
        th = theta[todo]
        z = ys[todo] * (th @ Xa.T)
        s = expit(-z)
        g = reg * th + C * ((W[todo] * -ys[todo] * s) @ Xa)
        H = np.einsum("bn,ni,nj->bij", C * W[todo] * s * (1.0 - s), Xa, Xa) + np.diag(reg)
        free = np.ones_like(th, dtype=bool)
        if nonneg:
            free[:, :d] = ~((th[:, :d] <= 0.0) & (g[:, :d] > 0.0))
        pg = np.where(free, g, 0.0)
        conv = np.abs(pg).max(axis=1) <= tol * np.maximum(1.0, np.abs(f[todo]))
        Hf = np.where(free[:, :, None] & free[:, None, :], H, eye)
        step = np.linalg.solve(Hf, pg[..., None])[..., 0]
        t = np.ones(th.shape[0])
        new = th.copy()
        accepted = conv.copy()
        f_old = f[todo]
        # backtracking line search (Armijo on the projected step)
        for _ls in range(30):
            cand = th - t[:, None] * step
            if nonneg:
                cand[:, :d] = np.maximum(cand[:, :d], 0.0)
            zc = ys[todo] * (cand @ Xa.T)
            fc = 0.5 * (reg * cand * cand).sum(axis=1) + C * (W[todo] * np.logaddexp(0.0, -zc)).sum(axis=1)
            ok = ~accepted & (fc <= f_old - 1e-4 * (g * (th - cand)).sum(axis=1))
            new[ok] = cand[ok]
            f_old = np.where(ok, fc, f_old)
            accepted |= ok
            if accepted.all():
                break
            t = np.where(accepted, t, t * 0.5)
        idx = np.flatnonzero(todo)
        moved = ~conv & accepted
        theta[idx] = np.where(moved[:, None], new, th)
        f[idx] = f_old
        # done: converged, or no decrease possible any more (at the optimum up to rounding)
        todo[idx[conv | ~accepted]] = False
    return theta

def _fold_patterns(n_pos: int, n_neg: int, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fold labels: the j-th positive row (in row order) goes to fold ``pos[j]``, the j-th negative
    to ``neg[j]``. A fixed function of the class sizes and ``seed``, so a relabelled data set is folded by
    exactly the same rule as the observed one."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n_pos) % folds), rng.permutation(np.arange(n_neg) % folds)

def within_strata_auc(scores: np.ndarray, Y: np.ndarray, codes: np.ndarray | None) -> np.ndarray:
    """Row-wise AUC of ``scores`` ``[P, n]`` with labels ``Y`` ``[P, n]`` (1 = suspect side). With stratum
    ``codes`` ``[n]``: the stratum-weighted within-stratum AUC Σ_g U_g / Σ_g n_pos,g·n_neg,g — the probability
    that a suspect outscores a control *of its own stratum* (ties ½), each stratum weighted by its number of
    suspect–control pairs; strata without a suspect or without a control carry no pair. Its null mean is
    exactly ½ whatever the stratum mix, so a classifier that only tells strata apart cannot raise it."""
    scores = np.atleast_2d(np.asarray(scores, float))
    Y = np.atleast_2d(np.asarray(Y))
    is_pos = Y == 1
    if codes is None:
        groups = [np.arange(scores.shape[1])]
    else:
        codes = np.asarray(codes)
        groups = [np.flatnonzero(codes == g) for g in np.unique(codes)]
    u = np.zeros(scores.shape[0])
    pairs = np.zeros(scores.shape[0])
    for idx in groups:
        pos = is_pos[:, idx]
        n_pos = pos.sum(axis=1)
        n_neg = idx.size - n_pos
        r = stats.rankdata(scores[:, idx], axis=1)
        u += np.where(pos, r, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
        pairs += n_pos * n_neg
    return np.where(pairs > 0, u / np.where(pairs > 0, pairs, 1.0), 0.5)

def _crossfit_batch(X: np.ndarray, Y: np.ndarray, folds: int, seed: int, C: float, nonneg: bool,
                    codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross-fitted out-of-fold scores for each labelling row of ``Y`` ``[P, n]``: (AUCs ``[P]``, scores
    ``[P, n]``, fold-averaged coefficients ``[P, d]``). With stratum ``codes`` the AUC is the within-stratum
    AUC of :func:`within_strata_auc`."""
    P, n = Y.shape
    d = X.shape[1]
    n_pos = int(Y[0].sum())
    pos_pat, neg_pat = _fold_patterns(n_pos, n - n_pos, folds, seed)
    fold = np.empty((P, n), dtype=int)
    is_pos = Y == 1
    rank_pos = np.cumsum(is_pos, axis=1) - 1
    rank_neg = np.cumsum(~is_pos, axis=1) - 1
    fold[is_pos] = pos_pat[rank_pos[is_pos]]
    fold[~is_pos] = neg_pat[rank_neg[~is_pos]]
    # one problem per (labelling, fold): train on the other folds with balanced class weights
    train = fold[:, None, :] != np.arange(folds)[None, :, None]  # [P, K, n]
    Yk = np.broadcast_to(Y[:, None, :], train.shape)
    n_tr = train.sum(axis=2, keepdims=True)
    n_tr_pos = (train & (Yk == 1)).sum(axis=2, keepdims=True)
    w = np.where(Yk == 1, n_tr / (2.0 * n_tr_pos), n_tr / (2.0 * (n_tr - n_tr_pos))) * train
    theta = _logistic_batch(X, Yk.reshape(P * folds, n), w.reshape(P * folds, n), C, nonneg)
    beta = theta[:, :d].reshape(P, folds, d)
    # held-out score: the linear part x·β of the model that did not see the row (no intercept: it would only
    # shift whole folds against each other)
    per_fold = np.einsum("pkd,nd->pkn", beta, X)
    oof = np.take_along_axis(per_fold, fold[:, None, :], axis=1)[:, 0, :]
    return within_strata_auc(oof, Y, codes), oof, beta.mean(axis=1)

def crossfit_auc(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, C: float = 1.0,
                 nonneg: bool = True, codes: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Out-of-fold AUC of an L2 logistic regression with balanced class weights.

    Rows are split into ``folds`` stratified folds (:func:`_fold_patterns`, ``seed``); a model trained on
    K−1 folds scores the held-out fold with its linear part x·β (the fold's intercept is left out: it does
    not change the order within a fold and would only add fold-to-fold noise to the pooled scores).
    Returns (AUC of the pooled out-of-fold scores, the scores, the fold-averaged coefficients). ``X``
    should already be standardised (see :func:`crossfit_test`).

    ``nonneg=True`` (attack feature sets): every weight is constrained to be ≥ 0, so the combined score can
    only increase with each member-oriented feature — a suspect set that scores *lower* than the controls
    cannot produce a large AUC. ``nonneg=False`` (model-free features, where any direction matters):
    unconstrained.

    ``codes`` (stratum per row): the AUC is taken within strata (:func:`within_strata_auc`).
    """
    y = np.asarray(y, dtype=int)
    if X.shape[1] == 0:
        return 0.5, np.zeros(y.size), np.zeros(0)
    aucs, oof, coef = _crossfit_batch(np.asarray(X, float), y[None], folds, seed, C, nonneg, codes)
    return float(aucs[0]), oof[0], coef[0]

def crossfit_null(X: np.ndarray, n_pos: int, n_draws: int, folds: int = 5, seed: int = 0, C: float = 1.0,
                  nonneg: bool = True, fold_seed: int | None = None, chunk: int = 100,
                  labels: np.ndarray | None = None, strata: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold AUCs of :func:`crossfit_auc` for ``n_draws`` random labellings of the rows of the
    (standardised) ``X`` with ``n_pos`` positives: the permutation null of the cross-fitted statistic.

    ``seed`` draws the labellings; ``fold_seed`` (default ``seed``) splits the folds — pass the observed
    statistic's fold seed so that the null re-runs exactly the same procedure. With ``strata`` the rows are
    relabelled within their stratum and the statistic is the within-stratum AUC."""
    X = np.asarray(X, float)
    rng = np.random.default_rng(seed)
    fs = seed if fold_seed is None else fold_seed
    base = np.r_[np.ones(n_pos, dtype=int), np.zeros(X.shape[0] - n_pos, dtype=int)]
    codes = None
    if strata is not None:
        # relabel within strata only: the observed labels' count per stratum is kept
        codes = np.unique(np.asarray(strata), return_inverse=True)[1]
        lab = base if labels is None else np.asarray(labels, dtype=int)
        Y = strata_permutations(lab, codes, n_draws, rng)
    else:
        Y = np.stack([rng.permutation(base) for _ in range(n_draws)]) if n_draws else np.zeros((0, base.size), int)
    if X.shape[1] == 0:
        return np.full(n_draws, 0.5)
    out = [_crossfit_batch(X, Y[a:a + chunk], folds, fs, C, nonneg, codes)[0] for a in range(0, n_draws, chunk)]
    return np.concatenate(out) if out else np.zeros(0)

def crossfit_folds(n_suspect: int, n_control: int, folds: int) -> int:
    """Folds actually used: at most one suspect (and control) per fold is needed, so K ≤ min(n_s, n_c)."""
    return int(min(folds, n_suspect, n_control))

def _canonical_order(X: np.ndarray, ids: list[str] | None) -> np.ndarray:
    """Row order that does not depend on how the rows were given: by id when known, else by the values."""
    if ids is not None:
        if len(ids) != X.shape[0]:
            raise ValueError(f"{len(ids)} ids for {X.shape[0]} rows")
        return np.array(sorted(range(len(ids)), key=lambda i: str(ids[i])), dtype=int)
    if X.shape[0] == 0:
        return np.zeros(0, dtype=int)
    return np.lexsort(X.T[::-1]) if X.shape[1] else np.arange(X.shape[0])

def crossfit_test(
    suspect_X: np.ndarray,
    control_X: np.ndarray,
    n_permutations: int = 999,
    folds: int = 5,
    seed: int = 0,
    alternative: Alternative = "greater",
    feature_names: list[str] | None = None,
    C: float = 1.0,
    nonneg: bool = True,
    suspect_ids: list[str] | None = None,
    control_ids: list[str] | None = None,
    suspect_strata: list[str] | None = None,
    control_strata: list[str] | None = None,
) -> CrossfitResult:
    """Cross-fitted aggregation test of suspects vs controls on several features.

    Statistic: out-of-fold AUC of :func:`crossfit_auc`. p-value: (1 + #{null ≥ observed}) /
    (1 + n_permutations), where each null value re-runs the whole cross-fitted procedure (the same fold
    split, ``seed``; the same standardisation) on a random permutation of the suspect/control labels
    (drawn with ``seed + 1``). Exactly valid when suspects and controls are exchangeable.

    Direction: with ``nonneg=True`` (the default, for attack scores that are all oriented so that members
    score higher) the weights are constrained to be ≥ 0, so ``greater`` tests that the suspects score
    higher on a non-negative combination of the features — a set that scores lower on every feature is
    not evidence. ``two-sided`` uses |AUC − ½| (AUC < ½ then means the suspects score lower).
    ``nonneg=False`` fits an unconstrained model (model-free features, where any separation matters).

    Rows are put in a canonical order before folding — by ``suspect_ids`` / ``control_ids`` when given,
    else by their values — so the p-value does not depend on the order the works were listed in.
    ``oof_scores`` are returned in the input order.

    ``suspect_strata`` / ``control_strata`` (e.g. artist per work): the statistic is the stratum-weighted
    within-stratum out-of-fold AUC (:func:`within_strata_auc`, null mean ½) and the null relabels works only
    within their stratum, so the test asks whether suspects outscore the controls *of their own stratum*.
    """
    _check_alternative(alternative)
    S = np.atleast_2d(np.asarray(suspect_X, dtype=float))
    Cx = np.atleast_2d(np.asarray(control_X, dtype=float))
    if S.shape[1] != Cx.shape[1]:
        raise ValueError(f"suspects have {S.shape[1]} features but controls {Cx.shape[1]}")
    n_s, n_c = S.shape[0], Cx.shape[0]
    k = crossfit_folds(n_s, n_c, folds)
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 suspects and 2 controls (got {n_s} and {n_c})")
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(S.shape[1])]
    os_, oc = _canonical_order(S, suspect_ids), _canonical_order(Cx, control_ids)
    order = np.r_[os_, n_s + oc]
    Xs, kept, dropped = _standardise(np.vstack([S, Cx])[order], names)
    y = np.r_[np.ones(n_s, dtype=int), np.zeros(n_c, dtype=int)]
    codes = None
    if suspect_strata is not None and control_strata is not None:
        codes = np.unique(np.r_[np.asarray(suspect_strata, dtype=str), np.asarray(control_strata, dtype=str)],
                          return_inverse=True)[1][order]
    auc, oof_sorted, coef = crossfit_auc(Xs, y, k, seed, C, nonneg, codes)
    if codes is not None:
        null = crossfit_null(Xs, n_s, n_permutations, k, seed + 1, C, nonneg, fold_seed=seed, labels=y, strata=codes)
    else:
        null = crossfit_null(Xs, n_s, n_permutations, k, seed + 1, C, nonneg, fold_seed=seed)
    if alternative == "greater":
        n_ge = int((null >= auc - 1e-12).sum())
    else:
        n_ge = int((np.abs(null - 0.5) >= abs(auc - 0.5) - 1e-12).sum())
    p = (1.0 + n_ge) / (1.0 + n_permutations)
    oof = np.empty_like(oof_sorted)
    oof[order] = oof_sorted
    test = TestResult("crossfit", float(auc), float(p), n_s, n_c, alternative=alternative, n_resamples=n_permutations,
                      method="permutation")
    return CrossfitResult(test, float(auc), null, oof, coef, tuple(kept), tuple(dropped), k)

def crossfit_pvalues_from_null(stats_: np.ndarray, null: np.ndarray, alternative: Alternative = "greater") -> np.ndarray:
    """(1 + #{null ≥ t}) / (1 + len(null)) for each statistic t (|t − ½| for two-sided)."""
    null = np.asarray(null, dtype=float)
    t = np.asarray(stats_, dtype=float)
    if alternative == "two-sided":
        null, t = np.abs(null - 0.5), np.abs(t - 0.5)
    ref = np.sort(null)
    n_ge = ref.size - np.searchsorted(ref, t - 1e-12, side="left")
    return (1.0 + n_ge) / (1.0 + ref.size)


def _run(plan, s, c, names=(), seed=0, s_ids=None, c_ids=None, s_strata=None, c_strata=None):
    r = crossfit_test(s, c, plan.crossfit_permutations, plan.crossfit_folds, seed, plan.alternative,
                      feature_names=list(names), nonneg=True, suspect_ids=s_ids, control_ids=c_ids,
                      suspect_strata=s_strata, control_strata=c_strata)
    return r.test, r


def _method(plan) -> str:
    within = (f" The statistic is the within-{plan.strata[0]} AUC (each suspect compared with controls of its own "
              f"{plan.strata[0]}, strata weighted by their suspect–control pairs; null mean ½) and the labels are "
              f"permuted within {plan.strata[0]}." if plan.strata else "")
    return (f"The feature set's scores are standardised and combined by an L2 logistic regression with non-negative "
            f"weights trained on {plan.crossfit_folds}−1 folds of suspect-vs-control labels and applied to the held-out "
            "fold (cross-fitting); the statistic is the AUC of the out-of-fold scores." + within +
            f" Its p-value re-runs the whole procedure on {plan.crossfit_permutations} random relabellings, p = (1 + "
            f"#relabelled ≥ observed) / (1 + {plan.crossfit_permutations}), exactly valid when suspects and controls "
            "are exchangeable.")


SET_TEST = SetTest("crossfit", "cross-fitted logistic-regression aggregation (out-of-fold AUC, permutation null)",
                   _run, None, _method, feature_set=True, per_attack=False)
