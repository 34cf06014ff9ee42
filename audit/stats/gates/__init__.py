"""Validity gates (one file each, and their registry): checks that the verdict's assumptions hold on *this* evidence, each with its numbers.

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

from dataclasses import dataclass
from typing import Any, Callable

from audit.stats.gates import blind_baseline as _blind_mod
from audit.stats.gates import placebo as _placebo_mod
from audit.stats.gates import positive_control as _positive_mod
from audit.stats.gates import power as _power_mod
from audit.stats.gates._common import (  # noqa: F401  (used by the analysis, the scripts and the tests)
    PLACEBO_ALPHAS,
    GateContext,
    PrimaryData,
    _batch_pvalues,
    _primary_score_1d,
    _rate,
    resampled_pvalues,
    run_primary,
)
from audit.stats.gates.blind_baseline import _score_aligned_blind_test, blind_baseline_gate
from audit.stats.gates.placebo import placebo_gate
from audit.stats.gates.positive_control import positive_control_gate
from audit.stats.gates.power import PLANNING_AUCS, power_gate
from audit.stats.results import GateResult

__all__ = ["GATES", "GATE_TITLES", "GATE_REGISTRY", "GateSpec", "GateResult", "GateContext", "PrimaryData",
           "run_primary", "run_gates", "blind_baseline_gate", "placebo_gate", "positive_control_gate", "power_gate"]


@dataclass(frozen=True)
class GateSpec:
    """A validity gate: ``run(context) -> GateResult``; ``withholds``: a *fail* withholds the verdict;
    ``required``: when the plan lists it and it could not be run, the verdict is withheld as well;
    ``absence(plan, result) -> (withholds, sentence)``: what it means that the gate was not run or was waived."""

    name: str
    title: str
    run: Callable[[GateContext], GateResult]
    withholds: bool
    required: bool
    absence: Callable[[Any, GateResult], tuple[bool, str | None]]


#: The validity gates, in the order they run and are reported. A new gate is one file here defining its
#: function and a ``SPEC``, plus its module in this tuple; ``stats.gates`` in the plan selects which run.
_MODULES = (_blind_mod, _placebo_mod, _positive_mod, _power_mod)
GATE_REGISTRY: dict[str, GateSpec] = {m.SPEC["name"]: GateSpec(**m.SPEC) for m in _MODULES}
GATES: tuple[str, ...] = tuple(GATE_REGISTRY)
GATE_TITLES: dict[str, str] = {n: s.title for n, s in GATE_REGISTRY.items()}


def run_gates(ctx: GateContext) -> list[GateResult]:
    """Every registered gate in order; those the plan leaves out are reported as not run."""
    disabled = "This gate was switched off in the analysis plan (stats.gates)."
    out = []
    for name, spec in GATE_REGISTRY.items():
        g = spec.run(ctx) if name in ctx.plan.gates else GateResult(name, spec.title, "not_run", disabled)
        ctx.done[name] = g
        out.append(g)
    return out
