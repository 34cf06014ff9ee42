"""Validity gates: checks that the verdict's assumptions hold on *this* evidence, each with its numbers.

A set-level test is only as good as its null: it assumes that a suspect work that was *not* in the
training data is exchangeable with the control works. The gates probe that assumption and the test's
behaviour on the data at hand (docs/methodology.md §6):

* **blind baseline** — model-free image features (colour, texture, size, format, compression, caption
  length) in two tests: (a) the cross-fitted set-level test on all features (any shift), and (b) a
  *score-aligned* test: the primary score is predicted from the features by cross-fitted ridge regression
  (label-free, so the test stays exact) and the suspects' predictions are compared with the controls'
  (one-sided rank test). (b) targets exactly the dangerous shift — a model-free difference that moves the
  attack score upwards — and has far more power against it than (a) when it hides among many features.
  *Fails* when either rejects at α. *Not run* (no features stored) withholds a confirmatory verdict unless
  the plan waives the gate by leaving it out of ``stats.gates``.
* **placebo splits** — two parts. (a) An *implementation check*: random splits of the controls into
  pseudo-suspects and pseudo-controls, each tested with the primary test. Random splits of one control set
  are exchangeable by construction, so this checks the software and the test's calibration only; it cannot
  detect structure in the controls. (b) *Leave-one-stratum-out* when the controls carry a stratum (the
  plan's ``strata``, else the manifest's ``artist``): the controls of each stratum against all other
  controls. This part can fail on structure: if one artist's works look "member-like" against the others,
  a suspect set of one artist would too. *Fails* when the Clopper–Pearson interval of either rejection rate
  lies entirely above α.
* **positive control** — when known members are given: the primary test with the known members in place
  of the suspects must detect them (*fails* otherwise: the attack does not work on this model, so neither
  outcome of the verdict would be interpretable), and its power is measured by drawing subsets of the
  known members (never the suspects: that would be post-hoc "observed power").
* **power** — how many suspect works the test needs at the known members' effect (Noether's approximation
  for rank tests); informational.

Every function is pure and seeded. Gate ``status`` is one of ``pass``, ``fail``, ``not_run`` (with the
reason in ``summary``) and ``info``; the verdict is withheld when any gate has ``fail``, and when the blind
baseline is required by the plan but could not be run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.stats.tests import (
    CrossfitResult,
    TestResult,
    _standardise,
    clopper_pearson,
    crossfit_folds,
    crossfit_null,
    crossfit_pvalues_from_null,
    crossfit_test,
    holm,
    mann_whitney,
    mann_whitney_batch,
    noether_controls_needed,
    noether_n,
    noether_power,
    permutation_pvalues_batch,
    permutation_test,
    van_elteren_batch,
    van_elteren_test,
)

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.analysis import AnalysisPlan

__all__ = ["GATES", "GATE_TITLES", "GateResult", "PrimaryData", "run_primary", "blind_baseline_gate",
           "placebo_gate", "positive_control_gate", "power_gate"]

GATES: tuple[str, ...] = ("blind_baseline", "placebo", "positive_control", "power")
GATE_TITLES: dict[str, str] = {
    "blind_baseline": "Blind baseline (model-free features)",
    "placebo": "Placebo splits of the controls (implementation check; leave-one-stratum-out)",
    "positive_control": "Positive control (known members)",
    "power": "Power analysis",
}
PLACEBO_ALPHAS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass
class GateResult:
    """One validity gate. ``summary`` is a plain-language sentence (quoted in the verdict when it fails);
    ``details`` holds every number behind it (and the arrays its figure is drawn from)."""

    name: str
    title: str
    status: str  # pass | fail | not_run | info
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "fail"


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
    """The plan's set-level test of ``s`` (suspect-side) vs ``c`` (controls). A feature set is combined with
    non-negative weights (every attack score is member-oriented) and folded in image-id order. With a
    stratified plan (``strata``: image id → stratum) works are compared within their stratum only."""
    seed = plan.seed + seed_offset
    st = strata if plan.strata else None
    if plan.test == "crossfit":
        cf = crossfit_test(s, c, plan.crossfit_permutations, plan.crossfit_folds, seed, plan.alternative,
                           feature_names=list(names), nonneg=True, suspect_ids=s_ids, control_ids=c_ids,
                           suspect_strata=_strata_list(st, s_ids, "suspect-side"),
                           control_strata=_strata_list(st, c_ids, "control"))
        return cf.test, cf
    if plan.test == "van_elteren":
        if st is None:
            raise ValueError("a stratified plan needs each work's stratum (the image table's "
                             f"{plan.strata[0] if plan.strata else 'stratum'} column)")
        return van_elteren_test(s, c, _strata_list(st, s_ids, "suspect-side"), _strata_list(st, c_ids, "control"),
                                plan.n_permutations, seed, plan.alternative), None
    if plan.test == "permutation":
        return permutation_test(s, c, plan.n_permutations, seed, plan.alternative), None
    return mann_whitney(s, c, plan.alternative, n_resamples=plan.n_permutations, seed=seed), None


def _batch_pvalues(plan: "AnalysisPlan", S: np.ndarray, C: np.ndarray, seed: int | None = None,
                   s_strata: np.ndarray | None = None, c_strata: np.ndarray | None = None) -> np.ndarray:
    """Primary-test p-values of single-feature rows (``S`` [R, n_s] vs ``C`` [R, n_c] or [n_c]); for a
    stratified plan with the strata of those works (same shapes). Each row's p-value is exactly the value the
    primary test (:func:`run_primary`: same test, ``plan.n_permutations``, seed ``plan.seed``) gives that row."""
    seed = plan.seed if seed is None else seed
    if plan.test == "van_elteren":
        return van_elteren_batch(S, C, s_strata, c_strata, plan.n_permutations, seed, plan.alternative)
    if plan.test == "permutation":
        S2 = np.atleast_2d(S)
        n_s = S2.shape[1]
        n_c = np.asarray(C).shape[-1]
        if math.comb(n_s + n_c, n_s) > plan.n_permutations and min(n_s, n_c) > 1:
            return permutation_pvalues_batch(S2, C, plan.n_permutations, seed, plan.alternative)
        Cb = np.broadcast_to(np.asarray(C, float), (S2.shape[0], n_c))
        return np.array([permutation_test(S2[r], Cb[r], plan.n_permutations, seed, plan.alternative).p_value
                         for r in range(S2.shape[0])])
    return mann_whitney_batch(S, C, plan.alternative, n_resamples=plan.n_permutations, seed=seed)


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


def _score_aligned_blind_test(F: np.ndarray, score: np.ndarray, n_s: int, folds: int, seed: int,
                              alternative_seed: int) -> tuple[float, float, np.ndarray]:
    """Predict the primary score from the model-free features by cross-fitted ridge regression on all works
    (the labels are not used, so under H0 the predictions of suspects and controls stay exchangeable), then
    test whether the suspects' predictions are higher (one-sided Mann–Whitney). Returns (p, R² out of fold,
    predictions)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    n = F.shape[0]
    pred = np.empty(n)
    for tr, te in KFold(n_splits=min(folds, n), shuffle=True, random_state=seed).split(F):
        pred[te] = Ridge(alpha=1.0).fit(F[tr], score[tr]).predict(F[te])
    ss = float(((score - score.mean()) ** 2).sum())
    r2 = 1.0 - float(((score - pred) ** 2).sum()) / ss if ss > 0 else 0.0
    p = mann_whitney(pred[:n_s], pred[n_s:], "greater", seed=alternative_seed).p_value
    return float(p), r2, pred


def blind_baseline_gate(features: pd.DataFrame | None, suspect_ids: list[str], control_ids: list[str],
                        plan: "AnalysisPlan", data: PrimaryData | None = None,
                        plan_strata: dict[str, str] | None = None) -> GateResult:
    """Model-free features: (a) the cross-fitted test on all of them (unconstrained: any direction counts),
    (b) the score-aligned test (when ``data``, the primary scores, is given). Fails when either rejects at α.
    Per-feature standardised mean differences and Holm-adjusted two-sided Mann–Whitney p-values are reported
    as diagnostics (they do not decide the gate)."""
    name = "blind_baseline"
    if features is None or features.empty:
        return _gate(name, "not_run", "No model-free image features were stored with this run (features.parquet), "
                     "so the blind baseline could not be run; results folders written by audit-run contain them.",
                     reason="no_features")
    cols = [c for c in features.columns if c not in ("image_id", "role")]
    f = features.drop_duplicates("image_id").set_index("image_id")
    s_ids = [i for i in suspect_ids if i in f.index]
    c_ids = [i for i in control_ids if i in f.index]
    missing = len(suspect_ids) - len(s_ids) + len(control_ids) - len(c_ids)
    k = crossfit_folds(len(s_ids), len(c_ids), plan.crossfit_folds)
    if k < 2:
        return _gate(name, "not_run", f"The blind baseline needs at least 2 suspects and 2 controls with features "
                     f"(have {len(s_ids)} and {len(c_ids)}).", n_missing=missing, reason="too_few")
    S = f.loc[s_ids, cols].to_numpy(dtype=float)
    C = f.loc[c_ids, cols].to_numpy(dtype=float)
    st = plan_strata if plan.strata else None
    ss, cs = _strata_list(st, s_ids, "suspect"), _strata_list(st, c_ids, "control")
    cf = crossfit_test(S, C, plan.crossfit_permutations, plan.crossfit_folds, plan.seed + 101, "greater",
                       feature_names=cols, nonneg=False, suspect_ids=s_ids, control_ids=c_ids,
                       suspect_strata=ss, control_strata=cs)
    # Diagnostics: which features differ (standardised mean difference, two-sided rank test, Holm), over the
    # features the test used (constant or partly missing ones were left out).
    used = [cols.index(c) for c in cf.features]
    X = np.vstack([S, C])[:, used]
    sd = X.std(axis=0)
    smd = (S[:, used].mean(axis=0) - C[:, used].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    p_feat = np.array([mann_whitney(S[:, j], C[:, j], "two-sided", n_resamples=999, seed=plan.seed + 102).p_value
                       for j in used])
    p_holm = holm(p_feat) if len(used) else p_feat
    order = np.argsort(-np.abs(smd))
    per_feature = [{"feature": cols[used[j]], "smd": float(smd[j]), "p_mwu": float(p_feat[j]),
                    "p_holm": float(p_holm[j])} for j in order]
    p_omni = cf.test.p_value
    top = ", ".join(d["feature"] for d in per_feature[:3])
    details = dict(auc=cf.auc, p_value=p_omni, p_omnibus=p_omni, n_suspect=len(s_ids), n_control=len(c_ids),
                   n_missing=missing, n_permutations=plan.crossfit_permutations, folds=cf.folds, alpha=plan.alpha,
                   features=list(cf.features), dropped=list(cf.dropped), null=cf.null, per_feature=per_feature,
                   coef=dict(zip(cf.features, cf.coef.tolist())))
    aligned_txt = ""
    p_aligned = None
    if data is not None and data.ids.get("suspect") is not None and len(cf.features):
        # primary score of the works that have features, in the same order as S and C
        score_of = {}
        for role in ("suspect", plan.control_role):
            for i, v in zip(data.ids[role], _primary_score_1d(data, role)):
                score_of[i] = float(v)
        if all(i in score_of for i in s_ids + c_ids):
            Fz = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
            y = np.array([score_of[i] for i in s_ids + c_ids])
            p_aligned, r2, pred = _score_aligned_blind_test(Fz, y, len(s_ids), plan.crossfit_folds,
                                                            plan.seed + 103, plan.seed + 104)
            if ss is not None:  # within strata, like the primary test
                p_aligned = van_elteren_test(pred[:len(s_ids)], pred[len(s_ids):], ss, cs, plan.n_permutations,
                                             plan.seed + 104).p_value
            details.update(p_aligned=p_aligned, r2_aligned=r2)
            aligned_txt = (f"; the primary score predicted from these features alone (cross-fitted ridge, out-of-fold "
                           f"R² {r2:.2f}) is compared between suspects and controls (one-sided p = "
                           f"{_fmt(p_aligned)})")
    # One gate, one test: the two sub-tests are combined by Bonferroni (p = min(1, 2·min(p_a, p_b))), and the
    # gate withholds at plan.gate_alpha — each withholding gate at level a withholds about a of valid audits.
    n_sub = 2 if p_aligned is not None else 1
    p_gate = min(1.0, n_sub * (min(p_omni, p_aligned) if p_aligned is not None else p_omni))
    level = plan.gate_alpha
    details.update(p_value=p_gate, p_gate=p_gate, gate_alpha=level, n_subtests=n_sub,
                   stratified=bool(ss is not None))
    within = (f" within {plan.strata[0]} (each suspect against controls of its own {plan.strata[0]})"
              if ss is not None else "")
    if p_gate <= level:
        why = []
        if p_omni * n_sub <= level:
            why.append(f"they separate the suspects from the controls{within} (cross-fitted out-of-fold AUC "
                       f"{cf.auc:.3f}, p = {_fmt(p_omni)}; largest differences: {top})")
        if p_aligned is not None and p_aligned * n_sub <= level:
            why.append(f"they predict a higher primary score for the suspects than for the controls{within} (p = "
                       f"{_fmt(p_aligned)}, out-of-fold R² {details['r2_aligned']:.2f})")
        return _gate(name, "fail",
                     "Model-free image features alone: " + "; and ".join(why) + f" (combined gate p = "
                     f"{_fmt(p_gate, level)} ≤ {level:g}, the gate's level). The controls differ from the suspects in "
                     "ways that have nothing to do with the model, so they are not a valid null for them.",
                     **details)
    return _gate(name, "pass",
                 f"Model-free image features do not separate the suspects from the controls{within} (cross-fitted "
                 f"out-of-fold AUC {cf.auc:.3f}, p = {_fmt(p_omni)}){aligned_txt}; combined gate p = "
                 f"{_fmt(p_gate, level)} > {level:g}, the gate's level.",
                 **details)


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


def placebo_gate(data: PrimaryData, plan: "AnalysisPlan", strata: dict[str, str] | None = None,
                 stratum_name: str = "artist", plan_strata: dict[str, str] | None = None) -> GateResult:
    """(a) Implementation self-test: ``plan.n_placebo`` random splits of the controls into pseudo-suspects (the
    suspect set's size; with a stratified plan, its per-stratum counts) and the rest, the primary test on each,
    empirical FPR at α with a Clopper–Pearson interval. Random splits of one control set are exchangeable by
    construction, so (a) checks the software and the test's calibration only: it is reported, never withholds
    (a self-test at level 0.05 would withhold about 2.5% of valid audits by chance alone). (b)
    Leave-one-stratum-out, when ``strata`` maps control image ids to a stratum (e.g. artist) with ≥ 2 strata and
    the plan is not stratified: each stratum's controls against the other controls with the primary test; the
    gate withholds when Simes' combination of these p-values is ≤ ``plan.gate_alpha``. A stratified plan compares works within their stratum only, so (b) does not apply."""
    name = "placebo"
    c = data.values.get(plan.control_role)
    n_s, n_c = data.n("suspect"), data.n(plan.control_role)
    min_rest = 2 if data.multi else 1
    if n_s == 0 or n_c - n_s < min_rest:
        return _gate(name, "not_run", f"Too few controls for a placebo split: {n_c} controls cannot be split into a "
                     f"pseudo-suspect set of the suspect set's size ({n_s}) and at least {min_rest} pseudo-control(s).")
    M = plan.n_placebo
    rng = np.random.default_rng(plan.seed + 202)
    ids_c = data.ids.get(plan.control_role)
    cst = _strata_list(plan_strata if plan.strata else None, ids_c, "control")
    sst = _strata_list(plan_strata if plan.strata else None, data.ids.get("suspect"), "suspect")
    order = _split_draws(rng, M, n_c, n_s, cst, sst)
    if data.multi:
        Xs, kept, _ = _standardise(c, list(data.names))
        k = crossfit_folds(n_s, n_c - n_s, plan.crossfit_folds)
        if k < 2:
            return _gate(name, "not_run", "Too few controls for a cross-fitted placebo split.")
        codes = None if cst is None else np.unique(np.asarray(cst), return_inverse=True)[1]
        Y = np.zeros((M, n_c), dtype=int)
        np.put_along_axis(Y, order[:, :n_s], 1, axis=1)
        stats_ = np.concatenate([_crossfit_rows(Xs, Y[a:a + 100], k, plan.seed + 206, codes)
                                 for a in range(0, M, 100)])
        ref = crossfit_null(Xs, n_s, plan.crossfit_permutations, k, plan.seed + 204, nonneg=True,
                            fold_seed=plan.seed + 206, labels=Y[0] if codes is not None else None,
                            strata=codes)
        pvals = crossfit_pvalues_from_null(stats_, ref, plan.alternative)
        method = (f"each split's out-of-fold AUC is compared with {plan.crossfit_permutations} relabellings of the "
                  "same pooled controls (one reference null shared by all splits, whose own Monte-Carlo error the "
                  "interval does not include)")
    else:
        S, C = c[order[:, :n_s]], c[order[:, n_s:]]
        cs = None if cst is None else np.asarray(cst, dtype=str)
        pvals = _batch_pvalues(plan, S, C, None, None if cs is None else cs[order[:, :n_s]],
                               None if cs is None else cs[order[:, n_s:]])
        method = "each split is tested exactly as the suspects are (same test, permutations and seed)"
    at_alpha = _rate(pvals, plan.alpha, plan.ci_level)
    curve = [_rate(pvals, a, plan.ci_level) for a in sorted(set(PLACEBO_ALPHAS) | {plan.alpha})]
    details: dict[str, Any] = dict(
        n_placebo=M, n_pseudo_suspect=n_s, n_pseudo_control=n_c - n_s, p_values=pvals, at_alpha=at_alpha,
        curve=curve, method=method, alpha=plan.alpha, ci_level=plan.ci_level, gate_alpha=plan.gate_alpha,
        self_test_withholds=False,
        purpose=("Random splits of one control set are exchangeable by construction, so this part checks the "
                 "implementation and the test's calibration, not whether the controls are a valid null; it is "
                 "reported and never withholds the verdict."))
    txt = (f"Implementation self-test (reported, never withholds): {at_alpha['k']} of {M} random splits of the "
           f"controls ({n_s} pseudo-suspects vs {n_c - n_s}) were rejected at α = {plan.alpha:g}: empirical "
           f"false-positive rate {at_alpha['rate']:.3f} ({plan.ci_level * 100:g}% Clopper–Pearson CI "
           f"{at_alpha['lo']:.3f}–{at_alpha['hi']:.3f})")
    off = at_alpha["lo"] > plan.alpha
    details["self_test_outside"] = bool(off)
    txt += (", above α; an interval this high arises by chance in a few percent of valid audits"
            + (" and, for a cross-fitted statistic, also from the shared reference null's own Monte-Carlo error"
               if data.multi else "") + ", so it is reported for inspection, not taken as a finding about the "
            "controls" if off else ", consistent with a rate of at most α")
    # (b) leave-one-stratum-out
    strat_fail = False
    labels = _strata_of(strata, data.ids.get(plan.control_role, []))
    if plan.strata:
        labels = None
        txt += (f". The plan is stratified by {plan.strata[0]}: every suspect is compared only with controls of its "
                f"own {plan.strata[0]}, so differences between strata cannot produce a rejection and the "
                "leave-one-stratum-out check does not apply")
    elif labels is not None:
        groups: dict[str, list[int]] = {}
        for j, g in enumerate(labels):
            groups.setdefault(g, []).append(j)
        rows = []
        for g in sorted(groups):
            idx = np.array(groups[g])
            rest = np.setdiff1d(np.arange(n_c), idx)
            if idx.size < 2 or rest.size < 2:
                continue
            t, _ = run_primary(plan, c[idx], c[rest], data.names, seed_offset=207,
                               s_ids=[ids_c[i] for i in idx], c_ids=[ids_c[i] for i in rest], strata=plan_strata)
            rows.append({"stratum": g, "n": int(idx.size), "n_rest": int(rest.size), "p_value": float(t.p_value),
                         "statistic": float(t.statistic), "rejected": bool(t.p_value <= plan.gate_alpha)})
        if len(rows) >= 2:
            # one test over all strata: Simes' combination of the per-stratum p-values (valid under positive
            # dependence), withholding at the gate's level
            k_rej = sum(r["rejected"] for r in rows)
            lo, hi = clopper_pearson(k_rej, len(rows), plan.ci_level)
            pv = np.sort([r["p_value"] for r in rows])
            tail = float(min(1.0, (len(pv) * pv / np.arange(1, len(pv) + 1)).min()))
            strat_fail = tail <= plan.gate_alpha
            details["strata"] = dict(column=stratum_name, rows=rows, k=k_rej, n=len(rows), lo=lo, hi=hi,
                                     p_simes=tail, level=plan.gate_alpha)
            txt += (f". Leave-one-{stratum_name}-out: the controls of each {stratum_name} against the other controls; "
                    f"{k_rej} of {len(rows)} {stratum_name} strata score higher at the gate's level "
                    f"{plan.gate_alpha:g}, combined (Simes) p = {_fmt(tail, plan.gate_alpha)}")
            txt += (f", at most {plan.gate_alpha:g}, the gate's level: the controls' scores depend on "
                    f"{stratum_name}, so a suspect set of one {stratum_name} may look member-like for that reason "
                    f"alone; compare suspects with controls of their own {stratum_name}" if strat_fail
                    else f", above {plan.gate_alpha:g}, the gate's level")
        else:
            details["strata"] = dict(column=stratum_name, rows=rows, k=None, n=len(rows))
            txt += (f". Leave-one-{stratum_name}-out was not run: fewer than 2 {stratum_name} strata have at least 2 "
                    "controls")
    else:
        txt += (f". No stratum (e.g. {stratum_name}) is recorded for the controls, so the check that can detect "
                "structure in them (leave-one-stratum-out) was not run")
    return _gate(name, "fail" if strat_fail else "pass", txt + ".", **details)


def _crossfit_rows(Xs: np.ndarray, Y: np.ndarray, folds: int, fold_seed: int, codes: np.ndarray | None) -> np.ndarray:
    from audit.stats.tests import _crossfit_batch

    return _crossfit_batch(Xs, Y, folds, fold_seed, 1.0, True, codes)[0]


# ---------------------------------------------------------------------------------------------- positive control
def positive_control_gate(data: PrimaryData, plan: "AnalysisPlan", plan_strata: dict[str, str] | None = None
                          ) -> GateResult:
    """Known members in place of the suspects: detection by the primary test (the gate), and power measured
    on subsets of the known members only. Subsets have the suspect set's size when there are at least twice
    as many members (so the draws differ substantially), otherwise half the members (a lower bound on the
    power at the suspect set's size); with fewer than 4 members power is not measured. Known nonmembers,
    when given, are tested the same way as a negative control (reported, not gating)."""
    name = "positive_control"
    m, c = data.values.get("member"), data.values.get(plan.control_role)
    n_m, n_s, n_c = data.n("member"), data.n("suspect"), data.n(plan.control_role)
    if plan.control_role == "member" or n_m < 2 or n_c < 2:
        return _gate(name, "not_run", "No known members (role 'member') were given, so the primary test's power on "
                     "this model could not be measured." if n_m < 2 else "Too few controls for a positive control.")
    ids_m, ids_c = data.ids.get("member"), data.ids.get(plan.control_role)
    if plan.strata and plan_strata is not None:
        # only members of strata that have controls can be compared within their stratum
        have = {plan_strata.get(i) for i in ids_c}
        keep = [j for j, i in enumerate(ids_m) if plan_strata.get(i) in have]
        if len(keep) < 2:
            return _gate(name, "not_run", f"Fewer than 2 known members belong to a {plan.strata[0]} that has controls, "
                         "so the stratified positive control could not be run.")
        m, ids_m = m[keep], [ids_m[j] for j in keep]
        n_m = len(keep)
    test, cf = run_primary(plan, m, c, data.names, seed_offset=303, s_ids=ids_m, c_ids=ids_c, strata=plan_strata)
    detected = test.p_value <= plan.alpha
    auc = cf.auc if cf is not None else _auc(m, c)
    details: dict[str, Any] = dict(n_member=n_m, n_control=n_c, n_suspect=n_s, p_members=test.p_value,
                                   auc_members=float(auc), detected=bool(detected), alpha=plan.alpha)
    size = max(n_s, 1)
    k = size if n_m >= 2 * size else n_m // 2
    ms = _strata_list(plan_strata if plan.strata else None, ids_m, "member")
    cs = _strata_list(plan_strata if plan.strata else None, ids_c, "control")
    if k < 2:
        details.update(power=None, power_method="not_measured")
        power_txt = (f"power could not be measured: subsets of {n_m} known members would all be nearly the same "
                     "works (at least 4 are needed)")
    else:
        R = plan.n_power_resamples
        pv, how = resampled_pvalues(plan, data, m, ms, c, cs, k, R, plan.seed + 304)
        pw = _rate(pv, plan.alpha, plan.ci_level)
        details.update(power={**pw, "size": k}, p_values=pv, resamples=R, with_replacement=False,
                       power_method="subsampled", subset_size=k, power_how=how)
        at = (f"at the suspect set's size ({k})" if k == size else
              f"at {k} works (half the known members; the suspect set has {size}, so this is a lower bound "
              "for the same effect)")
        power_txt = (f"drawing {k} of the {n_m} known members {R} times, the primary test rejects in "
                     f"{pw['rate'] * 100:.1f}% of draws {at} (Monte-Carlo {plan.ci_level * 100:g}% CI "
                     f"{pw['lo'] * 100:.1f}–{pw['hi'] * 100:.1f}%: simulation noise only, not the uncertainty of "
                     "which members happened to be known)")
    nm = data.values.get("nonmember")
    nt = None
    if nm is not None and data.n("nonmember") >= 2 and plan.control_role != "nonmember":
        try:
            nt, _ = run_primary(plan, nm, c, data.names, seed_offset=306, s_ids=data.ids.get("nonmember"), c_ids=ids_c,
                                strata=plan_strata)
        except ValueError:  # e.g. no nonmember shares a stratum with the controls
            nt = None
    if nt is not None:
        details.update(p_nonmembers=nt.p_value, n_nonmember=data.n("nonmember"))
        # negative control as a rate: subsets of the known nonmembers of the suspect set's size vs the controls
        n_nm = data.n("nonmember")
        kn = size if n_nm >= 2 * size else n_nm // 2
        if kn >= 2:
            nms = _strata_list(plan_strata if plan.strata else None, data.ids.get("nonmember"), "nonmember")
            try:
                pn, how_n = resampled_pvalues(plan, data, nm, nms, c, cs, kn, plan.n_power_resamples, plan.seed + 307)
                details["negative_control"] = {**_rate(pn, plan.alpha, plan.ci_level), "size": kn, "how": how_n}
            except ValueError:
                pass
    if not detected:
        return _gate(name, "fail",
                     f"The primary test does not detect the {n_m} known members against the controls (p = "
                     f"{_fmt(test.p_value, plan.alpha)} > α = {plan.alpha:g}; AUC {auc:.3f}): on this model the primary "
                     f"statistic cannot be shown to work, so neither a detection nor a non-detection among the "
                     f"suspects is interpretable; {power_txt}.", **details)
    summary = (f"The primary test detects the {n_m} known members against the controls (p = {_fmt(test.p_value, plan.alpha)}, "
               f"AUC {auc:.3f}); {power_txt}.")
    if "p_nonmembers" in details:
        pn = details["p_nonmembers"]
        summary += (f" Negative control: the {details['n_nonmember']} known nonmembers are "
                    + ("not " if pn > plan.alpha else "")
                    + f"distinguished from the controls (p = {_fmt(pn, plan.alpha)})"
                    + ("." if pn > plan.alpha else " — the controls may not be a valid null; see limitations."))
        ncr = details.get("negative_control")
        if ncr:
            summary += (f" Drawing {ncr['size']} known nonmembers {ncr['n']} times, the primary test rejects in "
                        f"{ncr['rate'] * 100:.1f}% of draws ({plan.ci_level * 100:g}% CI {ncr['lo'] * 100:.1f}–"
                        f"{ncr['hi'] * 100:.1f}%; a valid test rejects in at most {plan.alpha * 100:g}%).")
    return _gate(name, "pass", summary, **details)


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


# ---------------------------------------------------------------------------------------------- power
PLANNING_AUCS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)


def power_gate(effects: list[tuple[str, float]], n_suspect: int, n_control: int, plan: "AnalysisPlan",
               measured: dict[str, Any] | None = None) -> GateResult:
    """Works needed for ``plan.power_target`` at each effect (AUC), with the audit's controls.

    ``effects``: (label, AUC) pairs measured on known members only — never on the suspects (power computed
    from the suspects' own effect is "observed power", a function of the p-value that adds nothing). With
    no members, the table is for the planning effects :data:`PLANNING_AUCS`, labelled hypothetical.
    Noether's normal approximation for rank tests; for a cross-fitted statistic it is a rough guide.
    """
    name = "power"
    if n_control < 1:
        return _gate(name, "not_run", "There are no controls, so no power analysis was run.")
    hypothetical = not effects
    if hypothetical:
        effects = [(f"hypothetical AUC {a:g}", a) for a in PLANNING_AUCS]
    rows = []
    for label, auc in effects:
        rows.append(dict(effect=label, auc=float(auc),
                         n_needed=noether_n(auc, n_control, plan.alpha, plan.power_target, plan.alternative),
                         power_at_n=noether_power(auc, max(n_suspect, 1), n_control, plan.alpha, plan.alternative)
                         if n_suspect else None,
                         controls_needed_balanced=noether_controls_needed(auc, plan.alpha, plan.power_target,
                                                                          plan.alternative)))
    parts = []
    for r in rows:
        at = (f"at {r['effect']}" if hypothetical else f"at the effect {r['effect']} (AUC {r['auc']:.3f})")
        if r["n_needed"] is None:
            if r["auc"] <= 0.5:
                parts.append(f"{at} there is no effect to detect: no number of works suffices")
            else:
                parts.append(f"{at} {n_control} controls are too few for {plan.power_target * 100:.0f}% power with "
                             f"any number of suspects; about {r['controls_needed_balanced']} controls and as many "
                             "suspects would be needed")
        else:
            parts.append(f"{at} about {r['n_needed']} suspect works give {plan.power_target * 100:.0f}% power at "
                         f"α = {plan.alpha:g} with the {n_control} controls"
                         + (f" (this audit has {n_suspect}: approximate power {r['power_at_n'] * 100:.0f}%)"
                            if r["power_at_n"] is not None else ""))
    lead = ("Power (Noether's approximation for rank tests). No known members were given, so the effect of "
            "membership on this model is unknown; for planning only: " if hypothetical else
            "Power (Noether's approximation for rank tests), from the known members' effect: ")
    summary = lead + "; ".join(parts) + "."
    return _gate(name, "info", summary, rows=rows, n_suspect=n_suspect, n_control=n_control, alpha=plan.alpha,
                 target=plan.power_target, alternative=plan.alternative, measured=measured or {},
                 hypothetical=hypothetical)


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


def _power_from_context(c: GateContext) -> GateResult:
    # Power from the known members only: the suspects' own effect would be post-hoc "observed power".
    effects: list[tuple[str, float]] = []
    measured: dict[str, Any] = {}
    pc = c.done.get("positive_control")
    if pc is not None and pc.status in ("pass", "fail"):
        if "auc_members" in pc.details:
            effects.append(("measured on the known members", pc.details["auc_members"]))
        if pc.details.get("power_method") == "subsampled":
            measured = {**pc.details["power"], "draws": pc.details["power"]["n"], "n": pc.details["subset_size"]}
    if c.data.multi:
        return _power_crossfit(c, measured)
    return power_gate(effects, c.data.n("suspect"), c.data.n(c.plan.control_role), c.plan, measured)


def _power_crossfit(c: GateContext, measured: dict[str, Any]) -> GateResult:
    """Power of a cross-fitted statistic: only what resampling the known members measured (Noether's formula
    is for a rank test of one score and is not borrowed for it)."""
    name = "power"
    plan = c.plan
    n_s, n_c = c.data.n("suspect"), c.data.n(plan.control_role)
    if measured:
        summary = (f"Power of the cross-fitted statistic, measured by resampling the known members: "
                   f"{measured['rate'] * 100:.1f}% at {measured['n']} works with the {n_c} controls "
                   f"({plan.ci_level * 100:g}% CI {measured['lo'] * 100:.1f}–{measured['hi'] * 100:.1f}%). How many "
                   "works other sizes would need was not measured: no closed-form approximation exists for this "
                   "statistic, and Noether's formula for a rank test of one score is not used for it.")
    else:
        summary = ("Power of the cross-fitted statistic could not be measured: it needs at least 4 known members "
                   "(role 'member'), and no closed-form approximation exists for this statistic.")
    return _gate(name, "info", summary, rows=[], n_suspect=n_s, n_control=n_c, alpha=plan.alpha,
                 target=plan.power_target, alternative=plan.alternative, measured=measured or {},
                 hypothetical=not measured, method="resampling" if measured else "not_measured")


#: The validity gates, in the order they run and are reported: name -> gate(context). A new gate is one entry
#: here plus its name in GATES and a title in GATE_TITLES; ``stats.gates`` in the plan selects which run.
GATE_REGISTRY: dict[str, Any] = {
    "blind_baseline": lambda c: blind_baseline_gate(c.features, c.data.ids["suspect"], c.data.ids[c.plan.control_role],
                                                    c.plan, c.data, c.plan_strata),
    "placebo": lambda c: placebo_gate(c.data, c.plan, c.placebo_strata, c.placebo_column, c.plan_strata),
    "positive_control": lambda c: positive_control_gate(c.data, c.plan, c.plan_strata),
    "power": _power_from_context,
}
assert tuple(GATE_REGISTRY) == GATES and set(GATE_TITLES) == set(GATES)


def run_gates(ctx: GateContext) -> list[GateResult]:
    """Every registered gate in order; those the plan leaves out are reported as not run."""
    disabled = "This gate was switched off in the analysis plan (stats.gates)."
    out = []
    for name, gate in GATE_REGISTRY.items():
        g = gate(ctx) if name in ctx.plan.gates else GateResult(name, GATE_TITLES[name], "not_run", disabled)
        ctx.done[name] = g
        out.append(g)
    return out

