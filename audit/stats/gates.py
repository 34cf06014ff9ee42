"""Validity gates: checks that the verdict's assumptions hold on *this* evidence, each with its numbers.

A set-level test is only as good as its null: it assumes that a suspect work that was *not* in the
training data is exchangeable with the control works. The gates probe that assumption and the test's
behaviour on the data at hand (DESIGN.md, "Statistical methodology"):

* **blind baseline** — the same set-level test on model-free image features (colour, texture, size,
  format, compression, caption length). If suspects and controls are separable without the model, a
  membership "signal" may be nothing but that shift. *Fails* when the blind test rejects at α.
* **placebo nulls** — random splits of the controls into a pseudo-suspect set of the suspect set's size
  and pseudo-controls, each tested with the primary test. The empirical false-positive rate at α must not
  exceed α. *Fails* when the Clopper–Pearson interval of that rate lies entirely above α.
* **positive control** — when known members are given: the primary test with the known members in place
  of the suspects must detect them (*fails* otherwise: the attack does not work on this model, so neither
  outcome of the verdict would be interpretable), and its power at the suspect set's size is measured by
  resampling.
* **power** — how many suspect works the test needs at the measured effect (Noether's approximation for
  rank tests); informational.

Every function is pure and seeded. Gate ``status`` is one of ``pass``, ``fail``, ``not_run`` (with the
reason in ``summary``) and ``info``; the verdict is withheld when any gate has ``fail``.
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
)

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.analysis import AnalysisPlan

__all__ = ["GATES", "GATE_TITLES", "GateResult", "PrimaryData", "run_primary", "blind_baseline_gate",
           "placebo_gate", "positive_control_gate", "power_gate"]

GATES: tuple[str, ...] = ("blind_baseline", "placebo", "positive_control", "power")
GATE_TITLES: dict[str, str] = {
    "blind_baseline": "Blind baseline (model-free features)",
    "placebo": "Placebo nulls (random splits of the controls)",
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
    from audit.stats.analysis import format_p

    return format_p(p, alpha)


def _gate(name: str, status: str, summary: str, **details: Any) -> GateResult:
    return GateResult(name, GATE_TITLES[name], status, summary, details)


# ---------------------------------------------------------------------------------------------- primary test
def run_primary(plan: "AnalysisPlan", s: np.ndarray, c: np.ndarray, names: tuple[str, ...] = (),
                seed_offset: int = 0) -> tuple[TestResult, CrossfitResult | None]:
    """The plan's set-level test of ``s`` (suspect-side) vs ``c`` (controls)."""
    seed = plan.seed + seed_offset
    if plan.test == "crossfit":
        cf = crossfit_test(s, c, plan.crossfit_permutations, plan.crossfit_folds, seed, plan.alternative,
                           feature_names=list(names))
        return cf.test, cf
    if plan.test == "permutation":
        return permutation_test(s, c, plan.n_permutations, seed, plan.alternative), None
    return mann_whitney(s, c, plan.alternative), None


def _batch_pvalues(plan: "AnalysisPlan", S: np.ndarray, C: np.ndarray, seed: int) -> np.ndarray:
    """Primary-test p-values of single-feature rows (``S`` [R, n_s] vs ``C`` [R, n_c] or [n_c])."""
    if plan.test == "permutation":
        return permutation_pvalues_batch(S, C, plan.n_permutations, seed, plan.alternative)
    return mann_whitney_batch(S, C, plan.alternative)


def _rate(pvals: np.ndarray, alpha: float, level: float) -> dict[str, float]:
    k = int((np.asarray(pvals) <= alpha).sum())
    lo, hi = clopper_pearson(k, len(pvals), level)
    return {"alpha": float(alpha), "k": k, "n": int(len(pvals)), "rate": k / len(pvals), "lo": lo, "hi": hi}


# ---------------------------------------------------------------------------------------------- blind baseline
def blind_baseline_gate(features: pd.DataFrame | None, suspect_ids: list[str], control_ids: list[str],
                        plan: "AnalysisPlan") -> GateResult:
    """The set-level test on model-free features: cross-fitted logistic regression, out-of-fold AUC, permutation
    null (the same test the verdict uses for a feature set). Per-feature standardised mean differences and
    Holm-adjusted two-sided Mann–Whitney p-values are reported as diagnostics (they do not decide the gate)."""
    name = "blind_baseline"
    if features is None or features.empty:
        return _gate(name, "not_run", "No model-free image features were stored with this run (features.parquet), "
                     "so the blind baseline could not be run; results folders written by audit-run contain them.")
    cols = [c for c in features.columns if c not in ("image_id", "role")]
    f = features.drop_duplicates("image_id").set_index("image_id")
    s_ids = [i for i in suspect_ids if i in f.index]
    c_ids = [i for i in control_ids if i in f.index]
    missing = len(suspect_ids) - len(s_ids) + len(control_ids) - len(c_ids)
    k = crossfit_folds(len(s_ids), len(c_ids), plan.crossfit_folds)
    if k < 2:
        return _gate(name, "not_run", f"The blind baseline needs at least 2 suspects and 2 controls with features "
                     f"(have {len(s_ids)} and {len(c_ids)}).", n_missing=missing)
    S = f.loc[s_ids, cols].to_numpy(dtype=float)
    C = f.loc[c_ids, cols].to_numpy(dtype=float)
    cf = crossfit_test(S, C, plan.crossfit_permutations, plan.crossfit_folds, plan.seed + 101, "greater",
                       feature_names=cols)
    # Diagnostics: which features differ (standardised mean difference, two-sided rank test, Holm), over the
    # features the test used (constant or partly missing ones were left out).
    used = [cols.index(c) for c in cf.features]
    X = np.vstack([S, C])[:, used]
    sd = X.std(axis=0)
    smd = (S[:, used].mean(axis=0) - C[:, used].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    p_feat = np.array([mann_whitney(S[:, j], C[:, j], "two-sided").p_value for j in used])
    p_holm = holm(p_feat) if len(used) else p_feat
    order = np.argsort(-np.abs(smd))
    per_feature = [{"feature": cols[used[j]], "smd": float(smd[j]), "p_mwu": float(p_feat[j]),
                    "p_holm": float(p_holm[j])} for j in order]
    p = cf.test.p_value
    top = ", ".join(d["feature"] for d in per_feature[:3])
    details = dict(auc=cf.auc, p_value=p, n_suspect=len(s_ids), n_control=len(c_ids), n_missing=missing,
                   n_permutations=plan.crossfit_permutations, folds=cf.folds, alpha=plan.alpha,
                   features=list(cf.features), dropped=list(cf.dropped), null=cf.null, per_feature=per_feature,
                   coef=dict(zip(cf.features, cf.coef.tolist())))
    if p <= plan.alpha:
        return _gate(name, "fail",
                     f"Model-free image features alone separate the suspects from the controls (cross-fitted "
                     f"out-of-fold AUC {cf.auc:.3f}, p = {_fmt(p, plan.alpha)} ≤ α = {plan.alpha:g}; largest differences: {top}). "
                     "The controls differ from the suspects in ways that have nothing to do with the model, so they "
                     "are not a valid null for them.", **details)
    return _gate(name, "pass",
                 f"Model-free image features do not separate the suspects from the controls (cross-fitted "
                 f"out-of-fold AUC {cf.auc:.3f}, p = {_fmt(p, plan.alpha)} > α = {plan.alpha:g}).", **details)


# ---------------------------------------------------------------------------------------------- placebo
def placebo_gate(data: PrimaryData, plan: "AnalysisPlan") -> GateResult:
    """``plan.n_placebo`` random splits of the controls into ``n_suspect`` pseudo-suspects and the rest; the
    primary test on each; empirical FPR at α with a Clopper–Pearson interval."""
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
        stats_ = crossfit_null(Xs, n_s, M, k, plan.seed + 203)
        ref = crossfit_null(Xs, n_s, plan.crossfit_permutations, k, plan.seed + 204)
        pvals = crossfit_pvalues_from_null(stats_, ref, plan.alternative)
        method = (f"each split's out-of-fold AUC is compared with {plan.crossfit_permutations} relabellings of the "
                  "same pooled controls (shared across splits: the pooled data are identical for every split)")
    else:
        order = np.argsort(rng.random((M, n_c)), axis=1)
        S, C = c[order[:, :n_s]], c[order[:, n_s:]]
        pvals = _batch_pvalues(plan, S, C, plan.seed + 205)
        method = "each split is tested exactly as the suspects are"
    at_alpha = _rate(pvals, plan.alpha, plan.ci_level)
    curve = [_rate(pvals, a, plan.ci_level) for a in sorted(set(PLACEBO_ALPHAS) | {plan.alpha})]
    details = dict(n_placebo=M, n_pseudo_suspect=n_s, n_pseudo_control=n_c - n_s, p_values=pvals, at_alpha=at_alpha,
                   curve=curve, method=method, alpha=plan.alpha, ci_level=plan.ci_level)
    txt = (f"{at_alpha['k']} of {M} random splits of the controls ({n_s} pseudo-suspects vs {n_c - n_s}) were "
           f"rejected at α = {plan.alpha:g}: empirical false-positive rate {at_alpha['rate']:.3f} "
           f"({plan.ci_level * 100:g}% Clopper–Pearson CI {at_alpha['lo']:.3f}–{at_alpha['hi']:.3f})")
    if at_alpha["lo"] > plan.alpha:
        return _gate(name, "fail", txt + f", entirely above α: the test is anti-conservative on these controls.",
                     **details)
    return _gate(name, "pass", txt + ", consistent with a rate of at most α.", **details)


# ---------------------------------------------------------------------------------------------- positive control
def positive_control_gate(data: PrimaryData, plan: "AnalysisPlan") -> GateResult:
    """Known members in place of the suspects: detection by the primary test (the gate), and power at the
    suspect set's size by resampling members (single feature) or Noether's approximation (feature set).
    Known nonmembers, when given, are tested the same way as a negative control (reported, not gating)."""
    name = "positive_control"
    m, c = data.values.get("member"), data.values.get(plan.control_role)
    n_m, n_s, n_c = data.n("member"), data.n("suspect"), data.n(plan.control_role)
    if plan.control_role == "member" or n_m < 2 or n_c < 2:
        return _gate(name, "not_run", "No known members (role 'member') were given, so the primary test's power on "
                     "this model could not be measured." if n_m < 2 else "Too few controls for a positive control.")
    test, cf = run_primary(plan, m, c, data.names, seed_offset=303)
    detected = test.p_value <= plan.alpha
    auc = cf.auc if cf is not None else _auc(m, c)
    details: dict[str, Any] = dict(n_member=n_m, n_control=n_c, n_suspect=n_s, p_members=test.p_value,
                                   auc_members=float(auc), detected=bool(detected), alpha=plan.alpha)
    size = max(n_s, 1)
    if not data.multi:
        R = plan.n_power_resamples
        rng = np.random.default_rng(plan.seed + 304)
        replace = n_m < size
        if replace:
            idx = rng.integers(0, n_m, (R, size))
        else:
            idx = np.argsort(rng.random((R, n_m)), axis=1)[:, :size]
        pv = _batch_pvalues(plan, m[idx], c, plan.seed + 305)
        pw = _rate(pv, plan.alpha, plan.ci_level)
        details.update(power=pw, p_values=pv, resamples=R, with_replacement=bool(replace), power_method="resampled")
        power_txt = (f"drawing {size} of the {n_m} known members {'with' if replace else 'without'} replacement "
                     f"{R} times, the primary test rejects in {pw['rate'] * 100:.1f}% of draws "
                     f"(Monte-Carlo {plan.ci_level * 100:g}% CI {pw['lo'] * 100:.1f}–{pw['hi'] * 100:.1f}%)")
    else:
        pw_approx = noether_power(auc, size, n_c, plan.alpha, plan.alternative)
        details.update(power={"rate": pw_approx, "lo": None, "hi": None}, power_method="noether")
        power_txt = (f"at the suspect set's size ({size}) the approximate power (Noether, from the members' "
                     f"out-of-fold AUC {auc:.3f}) is {pw_approx * 100:.0f}%")
    nm = data.values.get("nonmember")
    if nm is not None and data.n("nonmember") >= 2 and plan.control_role != "nonmember":
        nt, _ = run_primary(plan, nm, c, data.names, seed_offset=306)
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
    from audit.stats.metrics import _auc_rows

    return float(_auc_rows(np.asarray(pos, float)[None], np.asarray(neg, float)[None])[0])


# ---------------------------------------------------------------------------------------------- power
def power_gate(effects: list[tuple[str, float]], n_suspect: int, n_control: int, plan: "AnalysisPlan",
               measured: dict[str, Any] | None = None) -> GateResult:
    """Works needed for ``plan.power_target`` at each measured effect (AUC), with the audit's controls.

    ``effects``: (label, AUC) pairs, e.g. the suspects' AUC and the known members' AUC. Noether's
    normal approximation for rank tests; for a cross-fitted statistic it is a rough guide.
    """
    name = "power"
    if n_control < 1 or not effects:
        return _gate(name, "not_run", "No effect could be measured (no controls, or neither suspects nor known "
                     "members), so no power analysis was run.")
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
        if r["n_needed"] is None:
            if r["auc"] <= 0.5:
                parts.append(f"at the effect {r['effect']} (AUC {r['auc']:.3f}) there is no effect to detect: "
                             "no number of works suffices")
            else:
                parts.append(f"at the effect {r['effect']} (AUC {r['auc']:.3f}) {n_control} controls are too few "
                             f"for {plan.power_target * 100:.0f}% power with any number of suspects; about "
                             f"{r['controls_needed_balanced']} controls and as many suspects would be needed")
        else:
            parts.append(f"at the effect {r['effect']} (AUC {r['auc']:.3f}) about {r['n_needed']} suspect works give "
                         f"{plan.power_target * 100:.0f}% power at α = {plan.alpha:g} with the {n_control} controls"
                         + (f" (this audit has {n_suspect}: approximate power {r['power_at_n'] * 100:.0f}%)"
                            if r["power_at_n"] is not None else ""))
    summary = "Power (Noether's approximation for rank tests): " + "; ".join(parts) + "."
    return _gate(name, "info", summary, rows=rows, n_suspect=n_suspect, n_control=n_control, alpha=plan.alpha,
                 target=plan.power_target, alternative=plan.alternative, measured=measured or {})
