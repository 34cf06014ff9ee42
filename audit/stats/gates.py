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


def _batch_pvalues(plan: "AnalysisPlan", S: np.ndarray, C: np.ndarray, seed: int,
                   s_strata: np.ndarray | None = None, c_strata: np.ndarray | None = None) -> np.ndarray:
    """Primary-test p-values of single-feature rows (``S`` [R, n_s] vs ``C`` [R, n_c] or [n_c]); for a
    stratified plan with the strata of those works (same shapes)."""
    if plan.test == "van_elteren":
        return van_elteren_batch(S, C, s_strata, c_strata, 999, seed, plan.alternative)
    if plan.test == "permutation":
        return permutation_pvalues_batch(S, C, plan.n_permutations, seed, plan.alternative)
    return mann_whitney_batch(S, C, plan.alternative, n_resamples=999, seed=seed)


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
                p_aligned = van_elteren_test(pred[:len(s_ids)], pred[len(s_ids):], ss, cs, 999, plan.seed + 104
                                             ).p_value
            details.update(p_aligned=p_aligned, r2_aligned=r2)
            aligned_txt = (f"; the primary score predicted from these features alone (cross-fitted ridge, out-of-fold "
                           f"R² {r2:.2f}) is {'higher' if p_aligned <= plan.alpha else 'not higher'} for the suspects "
                           f"(one-sided p = {_fmt(p_aligned, plan.alpha)})")
    fail_omni = p_omni <= plan.alpha
    fail_aligned = p_aligned is not None and p_aligned <= plan.alpha
    details["p_value"] = min(p_omni, p_aligned) if p_aligned is not None else p_omni
    if fail_omni or fail_aligned:
        why = []
        if fail_omni:
            why.append(f"they separate the suspects from the controls (cross-fitted out-of-fold AUC {cf.auc:.3f}, "
                       f"p = {_fmt(p_omni, plan.alpha)} ≤ α = {plan.alpha:g}; largest differences: {top})")
        if fail_aligned:
            why.append(f"they predict a higher primary score for the suspects than for the controls (p = "
                       f"{_fmt(p_aligned, plan.alpha)} ≤ α = {plan.alpha:g}, out-of-fold R² "
                       f"{details['r2_aligned']:.2f})")
        return _gate(name, "fail",
                     "Model-free image features alone: " + "; and ".join(why) + ". The controls differ from the "
                     "suspects in ways that have nothing to do with the model, so they are not a valid null for them.",
                     **details)
    return _gate(name, "pass",
                 f"Model-free image features do not separate the suspects from the controls (cross-fitted "
                 f"out-of-fold AUC {cf.auc:.3f}, p = {_fmt(p_omni, plan.alpha)} > α = {plan.alpha:g}){aligned_txt}.",
                 **details)


# ---------------------------------------------------------------------------------------------- placebo
def _strata_of(strata: dict[str, str] | None, ids: list[str]) -> list[str] | None:
    if not strata:
        return None
    out = [strata.get(i) for i in ids]
    return None if any(v is None for v in out) else [str(v) for v in out]


def placebo_gate(data: PrimaryData, plan: "AnalysisPlan", strata: dict[str, str] | None = None,
                 stratum_name: str = "artist", plan_strata: dict[str, str] | None = None) -> GateResult:
    """(a) Implementation check: ``plan.n_placebo`` random splits of the controls into ``n_suspect``
    pseudo-suspects and the rest, the primary test on each, empirical FPR at α with a Clopper–Pearson
    interval. (b) Leave-one-stratum-out, when ``strata`` maps control image ids to a stratum (e.g. artist)
    with ≥ 2 strata: each stratum's controls against the other controls with the primary test. A stratified
    plan (``plan_strata``) compares works within their stratum only, so (b) does not apply to it."""
    name = "placebo"
    c = data.values.get(plan.control_role)
    n_s, n_c = data.n("suspect"), data.n(plan.control_role)
    min_rest = 2 if data.multi else 1
    if n_s == 0 or n_c - n_s < min_rest:
        return _gate(name, "not_run", f"Too few controls for a placebo split: {n_c} controls cannot be split into a "
                     f"pseudo-suspect set of the suspect set's size ({n_s}) and at least {min_rest} pseudo-control(s).")
    M = plan.n_placebo
    rng = np.random.default_rng(plan.seed + 202)
    if data.multi:
        Xs, kept, _ = _standardise(c, list(data.names))
        k = crossfit_folds(n_s, n_c - n_s, plan.crossfit_folds)
        if k < 2:
            return _gate(name, "not_run", "Too few controls for a cross-fitted placebo split.")
        stats_ = crossfit_null(Xs, n_s, M, k, plan.seed + 203, nonneg=True, fold_seed=plan.seed + 206)
        ref = crossfit_null(Xs, n_s, plan.crossfit_permutations, k, plan.seed + 204, nonneg=True,
                            fold_seed=plan.seed + 206)
        pvals = crossfit_pvalues_from_null(stats_, ref, plan.alternative)
        method = (f"each split's out-of-fold AUC is compared with {plan.crossfit_permutations} relabellings of the "
                  "same pooled controls (shared across splits: the pooled data are identical for every split)")
    else:
        order = np.argsort(rng.random((M, n_c)), axis=1)
        S, C = c[order[:, :n_s]], c[order[:, n_s:]]
        cs = _strata_list(plan_strata, data.ids.get(plan.control_role), "control")
        cs = None if cs is None else np.asarray(cs, dtype=str)
        pvals = _batch_pvalues(plan, S, C, plan.seed + 205, None if cs is None else cs[order[:, :n_s]],
                               None if cs is None else cs[order[:, n_s:]])
        method = "each split is tested exactly as the suspects are"
    at_alpha = _rate(pvals, plan.alpha, plan.ci_level)
    curve = [_rate(pvals, a, plan.ci_level) for a in sorted(set(PLACEBO_ALPHAS) | {plan.alpha})]
    details: dict[str, Any] = dict(
        n_placebo=M, n_pseudo_suspect=n_s, n_pseudo_control=n_c - n_s, p_values=pvals, at_alpha=at_alpha,
        curve=curve, method=method, alpha=plan.alpha, ci_level=plan.ci_level,
        purpose=("Random splits of one control set are exchangeable by construction, so this part checks the "
                 "implementation and the test's calibration, not whether the controls are a valid null."))
    txt = (f"Implementation check: {at_alpha['k']} of {M} random splits of the controls ({n_s} pseudo-suspects vs "
           f"{n_c - n_s}) were rejected at α = {plan.alpha:g}: empirical false-positive rate {at_alpha['rate']:.3f} "
           f"({plan.ci_level * 100:g}% Clopper–Pearson CI {at_alpha['lo']:.3f}–{at_alpha['hi']:.3f})")
    impl_fail = at_alpha["lo"] > plan.alpha
    txt += (", entirely above α: the test is anti-conservative on these controls" if impl_fail
            else ", consistent with a rate of at most α")
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
            ids_c = data.ids[plan.control_role]
            t, _ = run_primary(plan, c[idx], c[rest], data.names, seed_offset=207,
                               s_ids=[ids_c[i] for i in idx], c_ids=[ids_c[i] for i in rest], strata=plan_strata)
            rows.append({"stratum": g, "n": int(idx.size), "n_rest": int(rest.size), "p_value": float(t.p_value),
                         "statistic": float(t.statistic), "rejected": bool(t.p_value <= plan.alpha)})
        if len(rows) >= 2:
            k_rej = sum(r["rejected"] for r in rows)
            lo, hi = clopper_pearson(k_rej, len(rows), plan.ci_level)
            strat_fail = lo > plan.alpha
            details["strata"] = dict(column=stratum_name, rows=rows, k=k_rej, n=len(rows), lo=lo, hi=hi)
            txt += (f". Leave-one-{stratum_name}-out: the controls of {k_rej} of {len(rows)} {stratum_name} strata "
                    f"were rejected against the other controls at α = {plan.alpha:g} (rate {k_rej / len(rows):.2f}, "
                    f"{plan.ci_level * 100:g}% CI {lo:.2f}–{hi:.2f})")
            txt += (f", entirely above α: the controls' scores depend on {stratum_name}, so a suspect set of one "
                    f"{stratum_name} may look member-like for that reason alone; compare suspects with controls of "
                    f"their own {stratum_name}" if strat_fail else ", consistent with a rate of at most α")
        else:
            details["strata"] = dict(column=stratum_name, rows=rows, k=None, n=len(rows))
            txt += (f". Leave-one-{stratum_name}-out was not run: fewer than 2 {stratum_name} strata have at least 2 "
                    "controls")
    else:
        txt += (f". No stratum (e.g. {stratum_name}) is recorded for the controls, so the check that can detect "
                "structure in them (leave-one-stratum-out) was not run")
    return _gate(name, "fail" if (impl_fail or strat_fail) else "pass", txt + ".", **details)


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
    if data.multi:
        pw_approx = noether_power(auc, size, n_c, plan.alpha, plan.alternative)
        details.update(power={"rate": pw_approx, "lo": None, "hi": None, "size": size}, power_method="noether")
        power_txt = (f"at the suspect set's size ({size}) the approximate power (Noether, from the known members' "
                     f"out-of-fold AUC {auc:.3f}) is {pw_approx * 100:.0f}%")
    elif k < 2:
        details.update(power=None, power_method="not_measured")
        power_txt = (f"power could not be measured: subsets of {n_m} known members would all be nearly the same "
                     "works (at least 4 are needed)")
    else:
        R = plan.n_power_resamples
        rng = np.random.default_rng(plan.seed + 304)
        idx = np.argsort(rng.random((R, n_m)), axis=1)[:, :k]
        ms = _strata_list(plan_strata if plan.strata else None, ids_m, "member")
        cs = _strata_list(plan_strata if plan.strata else None, ids_c, "control")
        pv = _batch_pvalues(plan, m[idx], c, plan.seed + 305, None if ms is None else np.asarray(ms)[idx], cs)
        pw = _rate(pv, plan.alpha, plan.ci_level)
        details.update(power={**pw, "size": k}, p_values=pv, resamples=R, with_replacement=False,
                       power_method="subsampled", subset_size=k)
        at = (f"at the suspect set's size ({k})" if k == size else
              f"at {k} works (half the known members; the suspect set has {size}, so this is a lower bound "
              "for the same effect)")
        power_txt = (f"drawing {k} of the {n_m} known members {R} times, the primary test rejects in "
                     f"{pw['rate'] * 100:.1f}% of draws {at} (Monte-Carlo {plan.ci_level * 100:g}% CI "
                     f"{pw['lo'] * 100:.1f}–{pw['hi'] * 100:.1f}%: simulation noise only, not the uncertainty of "
                     "which members happened to be known)")
    nm = data.values.get("nonmember")
    if nm is not None and data.n("nonmember") >= 2 and plan.control_role != "nonmember":
        try:
            nt, _ = run_primary(plan, nm, c, data.names, seed_offset=306, s_ids=data.ids.get("nonmember"), c_ids=ids_c,
                                strata=plan_strata)
        except ValueError:  # e.g. no nonmember shares a stratum with the controls
            nt = None
    else:
        nt = None
    if nt is not None:
        details.update(p_nonmembers=nt.p_value, n_nonmember=data.n("nonmember"))
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
    return _gate(name, "pass", summary, **details)


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
    return power_gate(effects, c.data.n("suspect"), c.data.n(c.plan.control_role), c.plan, measured)


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

