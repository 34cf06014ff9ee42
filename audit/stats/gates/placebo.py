"""Placebo splits of the controls: an implementation self-test (reported, never withholding) and leave-one-stratum-out, which can see structure in the controls."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from audit.stats.core import clopper_pearson
from audit.stats.gates._common import (
    _batch_pvalues,
    _crossfit_rows,
    _fmt,
    _gate,
    _rate,
    _split_draws,
    _strata_list,
    _strata_of,
    PLACEBO_ALPHAS,
    PrimaryData,
    run_primary,
)
from audit.stats.results import GateResult
from audit.stats.settests import crossfit_folds, crossfit_null, crossfit_pvalues_from_null
from audit.stats.settests.crossfit import _standardise

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.plan import AnalysisPlan




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


def _absence(plan: "AnalysisPlan", g: GateResult) -> tuple[bool, str | None]:
    if NAME not in plan.gates:
        return False, "The placebo splits gate was waived in the analysis plan."
    return False, "The placebo splits gate was not run: " + g.summary


NAME = "placebo"
SPEC = dict(name=NAME, title="Placebo splits of the controls (implementation check; leave-one-stratum-out)",
            withholds=True, required=False, absence=_absence,
            run=lambda c: placebo_gate(c.data, c.plan, c.placebo_strata, c.placebo_column, c.plan_strata))
