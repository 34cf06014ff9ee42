"""Positive control: known members in place of the suspects must be detected; power and the negative control's false-positive rate by resampling known members and nonmembers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any


from audit.stats.gates._common import _auc, _fmt, _gate, _rate, _strata_list, PrimaryData, resampled_pvalues, run_primary
from audit.stats.results import GateResult

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.plan import AnalysisPlan




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


def _absence(plan: "AnalysisPlan", g: GateResult) -> tuple[bool, str | None]:
    if NAME not in plan.gates:
        return False, "The positive control gate was waived in the analysis plan."
    return False, ("No positive control was run (" + g.summary.rstrip(".") + "), so the test's power on this model is "
                   "unknown.")


NAME = "positive_control"
SPEC = dict(name=NAME, title="Positive control (known members)", withholds=True, required=False, absence=_absence,
            run=lambda c: positive_control_gate(c.data, c.plan, c.plan_strata))
