"""The analysis plan: what is tested, fixed before the scores are seen (and rebuilt from stored plain values by
:func:`audit.io.plan_from_values`, never by instantiating anything from a results folder)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from audit.stats.gates import GATES
from audit.stats.settests import ALTERNATIVES, SET_TESTS

__all__ = ["AnalysisPlan", "TEST_LABELS", "ADJUSTMENTS", "test_label"]

# "auto" or a name in audit.stats.settests.SET_TESTS (checked in AnalysisPlan.__post_init__): a new test is one file
# there plus its registry entry, nothing here
TestName = str
ADJUSTMENTS: tuple[str, ...] = ("none", "features")

# How each test is named in verdict sentences and the report (one-sided form; see test_label()).
TEST_LABELS: dict[str, str] = {name: spec.label for name, spec in SET_TESTS.items()}


def test_label(test: str, alternative: str = "greater") -> str:
    """Name of ``test`` as printed in verdicts and reports, with its sidedness."""
    label = TEST_LABELS[test]
    if alternative == "two-sided":
        label = label.replace("one-sided ", "two-sided ") if label.startswith("one-sided") else label + ", two-sided"
    return label

test_label.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name

@dataclass(frozen=True)
class AnalysisPlan:
    """What is tested, fixed before the scores are seen. The report prints it with its SHA-256
    (:meth:`sha256`); a run records that hash before scoring, so a plan changed afterwards is visible."""

    primary_attack: str | None = None  # None → the first attack (or the first of `features`)
    # A declared feature set: ≥ 2 attacks whose scores are combined by cross-fitting (test "crossfit").
    # With a feature set, `primary_attack` (if given, one of the features) names the attack whose
    # per-artwork p-values are the per-work analysis; otherwise the first feature.
    features: tuple[str, ...] | None = None
    alpha: float = 0.05  # significance level of the verdict, the gates and per-artwork Holm flags
    test: TestName = "auto"  # auto → mann_whitney for one attack, crossfit for a feature set
    alternative: str = "greater"  # greater: suspects score higher (one-sided) | two-sided
    control_role: str = "control"  # the role whose works form the null (control or nonmember)
    n_permutations: int = 10000  # resamples of the single-feature permutation test
    crossfit_folds: int = 5  # K of the cross-fitting (capped by the smaller class size)
    crossfit_permutations: int = 999  # relabellings behind every cross-fitted p-value (also the blind gate)
    n_bootstrap: int = 1000  # bootstrap replicates behind every CI
    seed: int = 0  # seeds every resampling (bootstrap, permutations, placebo splits)
    fpr_levels: tuple[float, ...] = (0.01, 0.001)  # FPRs at which TPR is reported
    ci_level: float = 0.95  # confidence level of every interval
    storey_lambda: float = 0.5  # λ of Storey's π̂₀ (share of p-values above λ)
    gates: tuple[str, ...] = GATES  # validity gates to run (a failed gate withholds the verdict)
    # Level at which a validity gate withholds the verdict. Each withholding gate run at level a withholds about
    # a of all *valid* audits (results/gating/), so with difficulty-adjusted scores (adjust="features", which keeps
    # a model-free shift from becoming a conviction) it is 0.01: the share of valid audits withheld by chance stays
    # near 1-2% over the default gates. On raw scores nothing else guards against such a shift, so it stays at
    # alpha (the gates' old level). None = this rule, resolved when the plan is made and recorded in plan.json.
    gate_alpha: float | None = None
    # Difficulty adjustment of every score before testing: "features" replaces each work's score by its residual
    # after a cross-fitted ridge regression on the model-free image features, fitted on all works without their
    # roles (exactly valid under exchangeability); "none" tests the raw scores.
    adjust: str = "none"
    n_placebo: int = 1000  # random placebo splits of the controls
    n_power_resamples: int = 1000  # member resamples for the positive control's measured power (and the
    # negative control's false-positive rate); a cross-fitted statistic compares each resample with one null of
    # crossfit_permutations relabellings of the controls
    power_target: float = 0.8  # power the power analysis solves for
    # Manifest column that stratifies the works (e.g. artist): the set-level test compares suspects with controls
    # of their own stratum only (van Elteren's stratified rank test, or within-stratum permutations for a feature
    # set), and per-artwork p-values use the controls of the work's own stratum. One column.
    strata: tuple[str, ...] | None = None
    # Stratify by `artist` automatically when the manifest has that column and every suspect's artist has
    # controls (resolved by resolve_strata before the plan is recorded, so the recorded plan says so).
    auto_strata: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        feats = tuple(str(f) for f in self.features) if self.features else None
        if feats is not None and len(feats) < 2:
            raise ValueError(f"a feature set needs at least 2 attacks (got {list(feats)}); for one attack set "
                             "primary_attack instead")
        if feats is not None and len(set(feats)) != len(feats):
            raise ValueError(f"features lists an attack twice: {list(feats)}")
        object.__setattr__(self, "features", feats)
        if feats is not None and self.primary_attack is not None and self.primary_attack not in feats:
            raise ValueError(f"primary_attack {self.primary_attack!r} is not in the feature set {list(feats)}")
        test = self.test
        if test not in TEST_LABELS and test != "auto":
            raise ValueError(f"test must be one of {['auto', *TEST_LABELS]}, got {self.test!r}")
        strata = tuple(str(s) for s in self.strata) if self.strata else None
        if strata is not None and len(strata) != 1:
            raise ValueError(f"strata takes one manifest column (e.g. [artist]), got {list(strata)}")
        if strata and not feats and test in ("auto", "mann_whitney"):
            test = "van_elteren"  # the stratified form of the rank test
        if strata and test == "permutation":
            raise ValueError("with strata the single-attack test is van Elteren's stratified rank test "
                             "(test=auto or mann_whitney); test=permutation is not stratified")
        if test == "van_elteren" and not strata:
            raise ValueError("test=van_elteren needs strata (e.g. stats.strata=[artist])")
        if test == "auto":
            test = "crossfit" if feats else "mann_whitney"
        if feats and test != "crossfit":
            raise ValueError(f"a feature set is tested with test=crossfit (or auto), not {test!r}")
        if not feats and test == "crossfit":
            raise ValueError("test=crossfit needs a feature set of at least 2 attacks (stats.features)")
        object.__setattr__(self, "test", test)
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"alternative must be one of {list(ALTERNATIVES)}, got {self.alternative!r}")
        if self.control_role not in ("control", "nonmember"):
            raise ValueError(f"control_role must be 'control' or 'nonmember', got {self.control_role!r}")
        for name in ("n_permutations", "n_bootstrap", "crossfit_permutations", "n_placebo", "n_power_resamples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if int(self.crossfit_folds) < 2:
            raise ValueError("crossfit_folds must be ≥ 2")
        if any(not 0.0 < f < 1.0 for f in self.fpr_levels):
            raise ValueError(f"fpr_levels must lie in (0, 1), got {self.fpr_levels}")
        if not 0.0 <= self.storey_lambda < 1.0 or not 0.0 < self.power_target < 1.0 or not 0 < self.ci_level < 1:
            raise ValueError("storey_lambda must be in [0, 1); power_target and ci_level in (0, 1)")
        if self.gate_alpha is None:
            object.__setattr__(self, "gate_alpha", 0.01 if self.adjust == "features" else float(self.alpha))
        object.__setattr__(self, "gate_alpha", float(self.gate_alpha))
        if not 0.0 < float(self.gate_alpha) < 1.0:
            raise ValueError(f"gate_alpha must be in (0, 1), got {self.gate_alpha}")
        if self.adjust not in ADJUSTMENTS:
            raise ValueError(f"adjust must be one of {list(ADJUSTMENTS)}, got {self.adjust!r}")
        gates = tuple(str(g) for g in self.gates)
        unknown = sorted(set(gates) - set(GATES))
        if unknown:
            raise ValueError(f"unknown gates {unknown}; choose from {list(GATES)}")
        # Accept lists from a YAML config but store tuples, so the plan stays hashable and frozen.
        object.__setattr__(self, "gates", gates)
        object.__setattr__(self, "fpr_levels", tuple(float(f) for f in self.fpr_levels))
        object.__setattr__(self, "strata", strata)

    @property
    def primary_label(self) -> str:
        """The primary statistic in words: the attack's name, or the feature set."""
        if self.features:
            return "feature set [" + ", ".join(self.features) + "]"
        return self.primary_attack or "(first attack)"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def sha256(self) -> str:
        """SHA-256 of the plan's canonical JSON (sorted keys): what a run records before scoring."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
