"""Power: how many suspect works the primary test needs at the known members' effect (informational)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any


from audit.stats.gates._common import _gate, GateContext
from audit.stats.results import GateResult
from audit.stats.settests import noether_controls_needed, noether_n, noether_power

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.plan import AnalysisPlan




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


NAME = "power"
SPEC = dict(name=NAME, title="Power analysis", withholds=False, required=False, absence=lambda plan, g: (False, None),
            run=_power_from_context)
