"""Result records of the statistics: what a test, a gate, a per-work analysis and the whole audit found.

Plain dataclasses holding numbers (serialised into ``analysis.json`` by :meth:`AuditResult.to_dict`); each
record that a reader quotes has a ``summary()`` that says it in one line, as statsmodels' results do, so the
wording of a result lives with the result.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from audit.stats.core import format_p
from audit.stats.metrics import AucCI, TprAtFpr

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.plan import AnalysisPlan

__all__ = ["TestResult", "CrossfitResult", "StoreyEstimate", "GateResult", "ArtworkResult", "AttackResult",
           "Verdict", "AuditResult"]


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


def _test_summary(self: "TestResult") -> str:
    """One line: test, statistic, p-value and how it was obtained."""
    how = self.method or ""
    if self.n_resamples and "permutation" in how:
        how += f", {self.n_resamples} relabellings, floor {1.0 / (self.n_resamples + 1):.3g}"
    return (f"{self.name}: statistic {self.statistic:.6g}, p = {format_p(self.p_value)} ({how}; "
            f"{self.n_suspect} vs {self.n_control}, {self.alternative})")


TestResult.summary = _test_summary  # type: ignore[attr-defined]


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


@dataclass(frozen=True)
class ArtworkResult:
    """One suspect work under one attack. ``flagged``: Holm-adjusted p ≤ α (a per-work claim)."""

    image_id: str
    score: float
    p_conformal: float
    p_holm: float
    p_bh: float
    flagged: bool
    # closed testing with Simes local tests (Hommel adjusted), the procedure of the "at least k of n" bound: a work
    # with p_closed ≤ α is named individually by the same procedure that gives the bound
    p_closed: float | None = None
    flagged_closed: bool = False

@dataclass
class AttackResult:
    """Everything computed for one attack. Only the primary attack's primary test is confirmatory."""

    attack: str
    primary: bool
    n_suspect: int
    n_control: int
    n_member: int
    n_nonmember: int
    set_tests: dict[str, TestResult] = field(default_factory=dict)  # keyed by test name
    auc_suspect_control: AucCI | None = None
    tpr_suspect_control: list[TprAtFpr] = field(default_factory=list)
    auc_member_nonmember: AucCI | None = None  # known-truth positive control / benchmark
    tpr_member_nonmember: list[TprAtFpr] = field(default_factory=list)
    artworks: list[ArtworkResult] = field(default_factory=list)  # suspects, most member-like first
    n_flagged_holm: int = 0
    n_flagged_closed: int = 0  # works named individually by closed testing (Hommel), consistent with the bound
    min_controls_per_artwork: int | None = None  # controls needed for any Holm flag at α
    storey: StoreyEstimate | None = None  # estimated number of member suspects (Storey's π̂₀; exploratory)
    # "at least k of the n suspects were in the training data" with confidence 1 − α: closed testing with Simes
    # local tests on the per-artwork p-values (Goeman & Solari 2011); n = the suspects with a p-value
    members_lower_bound: int | None = None
    n_bound: int = 0
    n_without_pvalue: int = 0  # suspects with no control of their own stratum (stratified plans)

@dataclass(frozen=True)
class Verdict:
    """The single confirmatory statement of the audit."""

    # reject_lower: a two-sided plan rejected H0 because the suspects score *lower* than the controls — not
    # evidence of membership (it points at controls that differ from the suspects).
    decision: Literal["reject_h0", "reject_lower", "fail_to_reject", "not_tested", "withheld"]
    sentence: str
    attack: str | None  # the primary statistic: an attack name or "feature set [...]"
    test: str
    alpha: float
    p_value: float | None = None
    failed_gates: list[str] = field(default_factory=list)
    # False when the plan differs from the one recorded before scoring (a regenerated, changed analysis), or
    # when no plan hash was recorded before scoring at all
    confirmatory: bool = True
    # The headline p-value's resampling: relabellings behind it (None: exact or asymptotic), its floor 1/(B+1)
    # and whether the p-value sits at that floor (then "p ≤ floor" is all the data can say with B relabellings)
    n_resamples: int | None = None
    p_floor: float | None = None
    floor_binds: bool = False
    method: str | None = None


def _verdict_summary(self: "Verdict") -> str:
    return f"{self.decision} at α = {self.alpha:g} (p = {format_p(self.p_value, self.alpha)}): {self.sentence}"


Verdict.summary = _verdict_summary  # type: ignore[attr-defined]


@dataclass
class AuditResult:
    plan: AnalysisPlan
    primary_attack: str  # the attack of the per-artwork analysis (the primary attack, or the first feature)
    attacks: list[AttackResult]
    verdict: Verdict
    notes: list[str] = field(default_factory=list)
    primary_label: str = ""  # the primary statistic in words
    primary_test: TestResult | None = None  # the test that gives the verdict
    primary_auc: float | None = None  # its effect: suspect-vs-control AUC (out-of-fold for a feature set)
    crossfit: CrossfitResult | None = None  # details of a feature-set test
    gates: list[GateResult] = field(default_factory=list)
    plan_sha256: str = ""
    plan_recorded_sha256: str | None = None  # as recorded in the run before scoring, when known
    # role × stratum counts of the works analysed: {"column": ..., "rows": [{"stratum", "suspect", ...}]}
    composition: dict[str, Any] | None = None
    # exploratory variants of the primary analysis (other attacks, pooled vs stratified, leave-one-stratum-out)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    # the difficulty adjustment applied to every score before testing (plan.adjust), or None
    adjustment: dict[str, Any] | None = None
    # decision-level error rates of the whole decision on this model (placebo, negative and positive controls)
    decision_rates: dict[str, Any] | None = None

    def gate(self, name: str) -> GateResult | None:
        return next((g for g in self.gates if g.name == name), None)

    def attack(self, name: str) -> AttackResult:
        for a in self.attacks:
            if a.attack == name:
                return a
        raise KeyError(f"no attack {name!r} in this result (have {[a.attack for a in self.attacks]})")

    def summary(self) -> str:
        """The verdict, the primary test and every gate, one line each."""
        lines = [self.verdict.summary()]
        if self.primary_test is not None:
            lines.append("primary test — " + self.primary_test.summary())
        lines += [f"gate {g.name}: {g.status}" for g in self.gates]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (NaN/inf become None so the output is strict JSON)."""
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x
