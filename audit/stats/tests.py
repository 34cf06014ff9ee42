"""Hypothesis tests: set-level (suspects vs controls), per-artwork conformal p-values, multiplicity.

H0 of the set-level tests: no suspect work was in the training data, so suspect and control scores are
exchangeable. The alternative is one-sided — members score *higher* (every attack's score is oriented
that way) — because a suspect set that scores lower than the controls is no evidence of membership.

Per-artwork p-values are conformal (Vovk et al.; Bates et al., "Testing for outliers with conformal
p-values", 2023): valid for each suspect that is exchangeable with the controls, whatever the score
distribution. They are floored at 1/(n_control+1), which is why :func:`min_controls_for` exists.

Several features (attack scores, or model-free image features for the blind baseline) are combined by
cross-fitting (:func:`crossfit_test`): a logistic regression is trained on K−1 folds of suspect-vs-control
labels and scores the held-out fold; the statistic is the AUC of the out-of-fold scores, and its null
distribution comes from re-running the whole cross-fitted procedure on permuted labels. Because the
procedure is a fixed function of (features, labels), the permutation p-value is exactly valid under
exchangeability whatever the classifier learns (cf. CDI, Dubiński et al. 2025; LLM dataset inference,
Maini et al. 2024, which use a held-out split instead of cross-fitting).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from audit.stats import core as _core

__all__ = [
    "TestResult",
    "CrossfitResult",
    "StoreyEstimate",
    "mann_whitney",
    "mann_whitney_batch",
    "mwu_method",
    "MWU_EXACT_MAX_PAIRS",
    "permutation_test",
    "permutation_pvalues_batch",
    "crossfit_auc",
    "crossfit_test",
    "storey_pi0",
    "storey_estimate",
    "clopper_pearson",
    "noether_n",
    "noether_power",
    "conformal_pvalues",
    "holm",
    "hommel",
    "within_strata_auc",
    "benjamini_hochberg",
    "min_controls_for",
    "noether_controls_needed",
    "crossfit_null",
    "crossfit_folds",
    "crossfit_pvalues_from_null",
    "ALTERNATIVES",
    "van_elteren_test",
    "stratified_conformal_pvalues",
    "true_discovery_bound",
    "hommel_h",
    "strata_permutations",
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
    # How the p-value was computed: "exact", "asymptotic" (normal approximation), "permutation" (Monte Carlo
    # relabellings, (1+b)/(1+B)); see :func:`mwu_method` for the Mann–Whitney rule.
    method: str = ""


def _as_scores(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        raise ValueError(f"no {what} scores")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} scores contain NaN or infinite values")
    return a


Alternative = str  # "greater" (suspects score higher) or "two-sided"
ALTERNATIVES: tuple[str, ...] = ("greater", "two-sided")


def _check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative


# Mann–Whitney p-value method (a documented rule, recorded with every result):
#   * ties anywhere in the pooled scores → permutation of the mid-rank sum (Monte Carlo, seeded,
#     (1 + #{≥}) / (1 + B)): exactly valid whatever the ties. scipy's "auto" would use the tie-corrected
#     normal approximation, which is anti-conservative for coarse scores at small n (e.g. 5 suspects /
#     50 controls with 85% zeros rejected 7.0% at nominal 5% and 0.49% at 0.1%);
#   * no ties and n_suspect · n_control ≤ MWU_EXACT_MAX_PAIRS → the exact null distribution (scipy);
#   * no ties and larger samples → the normal approximation with continuity correction (scipy), accurate
#     at these sizes (the exact computation grows quickly: 200 × 1000 works take minutes).
MWU_EXACT_MAX_PAIRS = 40_000
MWU_PERMUTATIONS = 10_000


def _has_ties(x: np.ndarray) -> bool:
    x = np.sort(np.asarray(x, dtype=float).ravel())
    return bool(x.size > 1 and (np.diff(x) == 0).any())


def mwu_method(suspect: np.ndarray, control: np.ndarray) -> str:
    """Which p-value :func:`mann_whitney` uses for these samples: "permutation" (ties), "exact" (no ties,
    n_s·n_c ≤ :data:`MWU_EXACT_MAX_PAIRS`) or "asymptotic" (no ties, larger samples)."""
    s = np.asarray(suspect, dtype=float).ravel()
    c = np.asarray(control, dtype=float).ravel()
    if _has_ties(np.concatenate([s, c])):
        return "permutation"
    return "exact" if s.size * c.size <= MWU_EXACT_MAX_PAIRS else "asymptotic"


def mann_whitney(suspect: np.ndarray, control: np.ndarray, alternative: Alternative = "greater",
                 n_resamples: int = MWU_PERMUTATIONS, seed: int = 0) -> TestResult:
    """Mann–Whitney U test, one-sided ``alternative='greater'`` by default.

    ``statistic`` is U of the suspects, i.e. AUC · n_suspect · n_control (ties count ½). The p-value
    method follows :func:`mwu_method` and is recorded in ``method``: with ties, ``n_resamples`` seeded
    relabellings of the pooled mid-ranks (floor 1/(n_resamples+1)); otherwise scipy's exact or normal
    null distribution.
    """
    s = _as_scores(suspect, "suspect")
    c = _as_scores(control, "control")
    _check_alternative(alternative)
    method = mwu_method(s, c)
    u = float(stats.mannwhitneyu(s, c, alternative=alternative, method="asymptotic").statistic)
    if method == "permutation":
        ranks = stats.rankdata(np.concatenate([s, c]))
        p = float(permutation_pvalues_batch(ranks[None, :s.size], ranks[s.size:], n_resamples, seed, alternative)[0])
        return TestResult("mann_whitney", u, p, int(s.size), int(c.size), alternative=alternative,
                          n_resamples=n_resamples, method=method)
    p = float(stats.mannwhitneyu(s, c, alternative=alternative, method=method).pvalue)
    return TestResult("mann_whitney", u, p, int(s.size), int(c.size), alternative=alternative, method=method)


def mann_whitney_batch(suspects: np.ndarray, controls: np.ndarray, alternative: Alternative = "greater",
                       n_resamples: int = 999, seed: int = 0) -> np.ndarray:
    """p-values of :func:`mann_whitney` for each row of ``suspects`` ``[R, n_s]`` against the matching row of
    ``controls`` ``[R, n_c]`` (or one shared control vector ``[n_c]``).

    Same rule as :func:`mann_whitney`, decided per row: rows with ties get a permutation p-value of the
    mid-rank sum (``n_resamples`` relabellings shared across rows), the others scipy's exact or normal
    p-value in one vectorised call.
    """
    _check_alternative(alternative)
    S = np.atleast_2d(np.asarray(suspects, dtype=float))
    C = np.asarray(controls, dtype=float)
    C = np.broadcast_to(C, (S.shape[0], C.shape[-1])) if C.ndim == 1 else C
    pooled = np.sort(np.concatenate([S, C], axis=1), axis=1)
    tied = (np.diff(pooled, axis=1) == 0).any(axis=1)
    out = np.empty(S.shape[0])
    if tied.any():
        ranks = stats.rankdata(np.concatenate([S[tied], C[tied]], axis=1), axis=1)
        out[tied] = permutation_pvalues_batch(ranks[:, :S.shape[1]], ranks[:, S.shape[1]:], n_resamples, seed,
                                              alternative)
    if (~tied).any():
        method = "exact" if S.shape[1] * C.shape[1] <= MWU_EXACT_MAX_PAIRS else "asymptotic"
        out[~tied] = stats.mannwhitneyu(S[~tied], C[~tied], axis=1, alternative=alternative, method=method).pvalue
    return out


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


# ---------------------------------------------------------------------------------------------- cross-fitting
@dataclass(frozen=True)
class CrossfitResult:
    """Cross-fitted aggregation of several features, suspects (label 1) vs controls (label 0).

    ``auc``: out-of-fold AUC (the statistic); ``null``: the statistic re-computed on each permuted labelling;
    ``oof_scores``: out-of-fold logistic-regression scores (log-odds), suspects first, then controls;
    ``coef``: per-feature coefficient on standardised features, averaged over folds (sign = direction);
    ``features``: the columns used; ``dropped``: constant or non-finite columns left out.
    """

    test: TestResult
    auc: float
    null: np.ndarray
    oof_scores: np.ndarray
    coef: np.ndarray
    features: tuple[str, ...]
    dropped: tuple[str, ...]
    folds: int


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


def strata_permutations(labels: np.ndarray, strata: np.ndarray, n_draws: int, rng: np.random.Generator
                        ) -> np.ndarray:
    """``[n_draws, N]`` relabellings of ``labels`` that permute them only among works of the same stratum."""
    labels = np.asarray(labels)
    codes = np.unique(np.asarray(strata), return_inverse=True)[1]
    grouped = np.argsort(codes, kind="stable")
    base = labels[grouped]
    out = np.empty((n_draws, labels.size), dtype=labels.dtype)
    chunk = max(1, int(2e6 // max(1, labels.size)))
    for a in range(0, n_draws, chunk):
        k = min(chunk, n_draws - a)
        # positions grouped by stratum (same group order and sizes in every row), random order within each
        perm = np.lexsort((rng.random((k, labels.size)), np.broadcast_to(codes, (k, labels.size))), axis=-1)
        rows = np.empty((k, labels.size), dtype=labels.dtype)
        np.put_along_axis(rows, perm, np.broadcast_to(base, (k, labels.size)), axis=1)
        out[a:a + k] = rows
    return out


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


def conformal_pvalues(suspect_scores: np.ndarray, control_scores: np.ndarray) -> np.ndarray:
    """p_i = (1 + #{controls with score ≥ s_i}) / (n_control + 1), one per suspect, in input order
    (:func:`audit.stats.core.conformal_pvalues`, after checking the inputs)."""
    return _core.conformal_pvalues(_as_scores(suspect_scores, "suspect"), _as_scores(control_scores, "control"))


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


# ---------------------------------------------------------------------------------------------- Storey's π̂₀
@dataclass(frozen=True)
class StoreyEstimate:
    """Storey's estimate of the share of true nulls among the suspects' conformal p-values, and from it the
    number of suspects that were members: n_members = m · (1 − π̂₀), with a stratified bootstrap interval."""

    pi0: float
    n_tests: int
    n_members: float
    lo: float
    hi: float
    lam: float
    level: float = 0.95
    n_boot: int = 1000


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


# ---------------------------------------------------------------------------------------------- rates, power
clopper_pearson = _core.clopper_pearson


def _z(alpha: float, power: float, alternative: Alternative) -> tuple[float, float]:
    za = stats.norm.ppf(1.0 - (alpha / 2.0 if alternative == "two-sided" else alpha))
    return float(za), float(stats.norm.ppf(power))


def noether_power(auc: float, n_suspect: float, n_control: float, alpha: float,
                  alternative: Alternative = "greater") -> float:
    """Approximate power of the Mann–Whitney test at true AUC ``auc`` (Noether 1987): the AUC estimate has
    null variance (n + m + 1) / (12 n m); power = Φ((AUC − ½) / sd − z_α)."""
    za, _ = _z(alpha, 0.5, alternative)
    sd = math.sqrt((n_suspect + n_control + 1.0) / (12.0 * n_suspect * n_control))
    return float(stats.norm.cdf((auc - 0.5) / sd - za))


def noether_n(auc: float, n_control: int, alpha: float, power: float = 0.8,
              alternative: Alternative = "greater") -> int | None:
    """Suspect works needed for ``power`` at true AUC ``auc`` with ``n_control`` controls (Noether's
    approximation, solved for n). None when no number of suspects suffices: AUC ≤ ½, or too few controls
    (then even infinitely many suspects leave the AUC estimate too noisy)."""
    d = auc - 0.5
    if not math.isfinite(d) or d <= 0:
        return None
    za, zb = _z(alpha, power, alternative)
    z2 = (za + zb) ** 2
    m = float(n_control)
    denom = 12.0 * m * d * d - z2
    if denom <= 0:
        return None
    return max(1, math.ceil(z2 * (m + 1.0) / denom))


def noether_controls_needed(auc: float, alpha: float, power: float = 0.8, alternative: Alternative = "greater"
                            ) -> int | None:
    """Controls needed for ``power`` with as many suspects as controls (balanced design)."""
    d = auc - 0.5
    if not math.isfinite(d) or d <= 0:
        return None
    za, zb = _z(alpha, power, alternative)
    # n = m: 12 m² d² ≥ z² (2m + 1)  →  m ≥ (z² + sqrt(z⁴ + 12 d² z²)) / (12 d²)
    z2 = (za + zb) ** 2
    return math.ceil((z2 + math.sqrt(z2 * z2 + 12.0 * d * d * z2)) / (12.0 * d * d))
