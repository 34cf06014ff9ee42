"""The verdict: the one confirmatory sentence, derived from the primary test and the gates (what a failed, missing
or waived gate means comes from the gate registry)."""
from __future__ import annotations

from audit.stats.core import format_p
from audit.stats.gates import GATE_REGISTRY
from audit.stats.plan import AnalysisPlan, test_label
from audit.stats.results import GateResult, TestResult, Verdict

__all__ = ["make_verdict"]


def _where(plan: AnalysisPlan, label: str, t: TestResult) -> str:
    what = f"attack {label!r}" if not plan.features else label + " combined by cross-fitting"
    within = f", each suspect compared with controls of its own {plan.strata[0]}" if plan.strata else ""
    return (f"({what}, {test_label(plan.test, plan.alternative)}{within}; {t.n_suspect} suspect and {t.n_control} "
            "control works)")


def _gate_gaps(plan: AnalysisPlan, gates: list[GateResult]) -> tuple[list[GateResult], list[str]]:
    """Gates that withhold because they could not be run (a gate the registry marks required, listed by the plan),
    and sentences naming the other gates that were not run or were waived (:attr:`GateSpec.absence`)."""
    blocking, said = [], []
    for g in gates:
        if g.status != "not_run":
            continue
        spec = GATE_REGISTRY[g.name]
        withholds, sentence = spec.absence(plan, g)
        if withholds and spec.required:
            blocking.append(g)
        if sentence:
            said.append(sentence)
    return blocking, said


def _verdict(plan: AnalysisPlan, label: str, t: TestResult | None, n_suspect: int, n_control: int,
             gates: list[GateResult], confirmatory: bool, effect_auc: float | None = None) -> Verdict:
    if t is None:
        missing = "control" if n_control == 0 else "suspect"
        why = (
            "there is no null distribution to compare the suspect works against"
            if missing == "control"
            else "there is nothing to test"
        )
        if n_control and n_suspect:  # e.g. a feature set whose attacks share too few works
            missing, why = "usable", "the primary statistic could not be computed"
        return Verdict(
            "not_tested",
            f"No set-level test was run for {'attack ' + repr(label) if not plan.features else label}: "
            f"no {missing} works were given, so {why}.",
            label, plan.test, plan.alpha, confirmatory=confirmatory,
        )
    where = _where(plan, label, t)
    p_txt = format_p(t.p_value, plan.alpha)
    direction = "" if plan.alternative == "greater" else " (two-sided)"
    failed = [g for g in gates if g.failed]
    blocking, gaps = _gate_gaps(plan, gates)
    gap_txt = (" " + " ".join(gaps)) if gaps else ""
    if blocking and not failed:
        sentence = (
            f"Verdict withheld at α = {plan.alpha:g}: the blind baseline, required by the analysis plan, could not be "
            f"run ({blocking[0].summary.rstrip('.')}), so nothing shows that the controls are a valid null for the "
            f"suspects. The primary test's p-value (p = {p_txt}, {where[1:-1]}) is therefore not evidence about the "
            "training data in either direction; leave blind_baseline out of stats.gates to waive this check "
            "explicitly." + gap_txt
        )
        return Verdict("withheld", sentence, label, plan.test, plan.alpha, t.p_value, [g.name for g in blocking],
                       confirmatory)
    if failed:
        names = ", ".join(g.title.split(" (")[0].lower() for g in failed)
        sentence = (
            f"Verdict withheld at α = {plan.alpha:g}: the {names} validity gate{'s' if len(failed) > 1 else ''} "
            f"failed. " + " ".join(g.summary for g in failed) + f" The primary test's p-value (p = {p_txt}, {where[1:-1]}) "
            "is therefore not evidence about the training data in either direction."
        )
        return Verdict("withheld", sentence, label, plan.test, plan.alpha, t.p_value, [g.name for g in failed],
                       confirmatory)
    lower = plan.alternative == "two-sided" and effect_auc is not None and effect_auc < 0.5
    if t.p_value <= plan.alpha and lower:
        sentence = (
            f"At α = {plan.alpha:g}, the suspect works score lower than the controls {where} (two-sided p = {p_txt}; "
            f"AUC {effect_auc:.3f}). Members score higher under every attack, so this is not evidence that any "
            "suspect work was in the training data; it indicates that the controls differ from the suspects."
            + gap_txt
        )
        return Verdict("reject_lower", sentence, label, plan.test, plan.alpha, t.p_value, [], confirmatory)
    if t.p_value <= plan.alpha:
        sentence = (
            f"At α = {plan.alpha:g}, the suspect works' membership scores {where} are inconsistent with the "
            f"hypothesis that no suspect work was in the model's training data{direction}, the suspects scoring "
            f"higher (p = {p_txt})." + gap_txt
        )
        decision = "reject_h0"
    else:
        sentence = (
            f"At α = {plan.alpha:g}, the suspect works' membership scores {where} are consistent with the "
            f"hypothesis that no suspect work was in the model's training data{direction} (p = {p_txt}). "
            "Failing to detect membership is not proof of absence."
        )
        pc = next((g for g in gates if g.name == "positive_control" and g.status == "pass"), None)
        pw = (pc.details.get("power") or {}) if pc is not None else {}
        if pw.get("rate") is not None:
            size = pw.get("size", n_suspect)
            sentence += (f" Had every suspect work been in the training data, the test would have detected it "
                         f"with about {pw['rate'] * 100:.0f}% probability (power measured on subsets of the known "
                         f"members of {size} works"
                         + ("" if size == n_suspect else f"; the suspect set has {n_suspect}") +
                         "); a few members among many suspects are much harder to detect.")
        sentence += gap_txt
        decision = "fail_to_reject"
    return Verdict(decision, sentence, label, plan.test, plan.alpha, t.p_value, [], confirmatory)


make_verdict = _verdict
