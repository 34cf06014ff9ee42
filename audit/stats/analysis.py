"""From a ScoreTable to an audit result: the pre-registered test, effect sizes, per-artwork p-values, gates.

Only the plan's primary statistic (one attack, or a declared feature set of several attacks combined by
cross-fitting) with the plan's test produces the verdict; every other attack and test is computed for the
report but labelled exploratory, because choosing among them after seeing the data would invalidate the
p-value. The validity gates (:mod:`audit.stats.gates`) can withhold the verdict. Pure function of its
inputs: no disk access, seeded randomness only.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import pandas as pd

from audit.stats.gates import (
    GATES,
    GateResult,
    PrimaryData,
    blind_baseline_gate,
    placebo_gate,
    positive_control_gate,
    power_gate,
    run_primary,
)
from audit.stats.core import format_p
from audit.stats.metrics import AucCI, TprAtFpr, auc_with_ci, tpr_at_fpr
from audit.stats.tests import (
    ALTERNATIVES,
    CrossfitResult,
    StoreyEstimate,
    TestResult,
    benjamini_hochberg,
    conformal_pvalues,
    holm,
    hommel,
    mann_whitney,
    min_controls_for,
    permutation_test,
    storey_estimate,
    stratified_conformal_pvalues,
    true_discovery_bound,
    van_elteren_test,
)
from audit.types import ROLES, ScoreTable

__all__ = [
    "TEST_LABELS",
    "test_label",
    "AnalysisPlan",
    "ArtworkResult",
    "AttackResult",
    "Verdict",
    "AuditResult",
    "analyze",
    "collapse_scores",
    "format_p",
    "resolve_strata",
    "composition",
]

TestName = Literal["auto", "mann_whitney", "permutation", "crossfit", "van_elteren"]
ADJUSTMENTS: tuple[str, ...] = ("none", "features")

# How each test is named in verdict sentences and the report (one-sided form; see test_label()).
TEST_LABELS: dict[str, str] = {
    "mann_whitney": "one-sided Mann–Whitney U",
    "permutation": "one-sided permutation test on the difference in means",
    "crossfit": "cross-fitted logistic-regression aggregation (out-of-fold AUC, permutation null)",
    "van_elteren": "one-sided stratified rank test (van Elteren; permutation within strata)",
}


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
    # a of all *valid* audits (results/gating/), so it is set below alpha: 0.01 per gate keeps the share of valid
    # audits withheld by chance at <= 2% over the default gates, while the difficulty adjustment (adjust) keeps
    # a model-free shift from becoming a conviction.
    gate_alpha: float = 0.01
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


def collapse_scores(scores: ScoreTable, attack: str) -> tuple[pd.DataFrame, int]:
    """One score per image for ``attack``: columns image_id, role, score; and how many seeds were averaged.

    Repeated rows of the same image that differ only by ``seed`` (repeated noise draws) are averaged:
    every test assumes one observation per work, and duplicates would inflate n. Rows that differ by
    target or attack parameters are different measurements and mixing them is an error.
    """
    df = scores.df[scores.df["attack"] == attack]
    if df.empty:
        raise ValueError(f"attack {attack!r} is not in the ScoreTable (have {scores.attacks})")
    bad_roles = sorted(set(df["role"]) - set(ROLES))
    if bad_roles:
        raise ValueError(f"unknown roles {bad_roles} for attack {attack!r}; expected one of {list(ROLES)}")
    n_bad = int((~np.isfinite(df["score"].to_numpy(dtype=float))).sum())
    if n_bad:
        raise ValueError(f"attack {attack!r} has {n_bad} NaN/infinite scores; fix the scoring run first")
    for col in ("attack_params_hash", "target_fingerprint"):
        if df[col].nunique(dropna=False) > 1:
            raise ValueError(
                f"attack {attack!r} mixes {df[col].nunique(dropna=False)} values of {col}; "
                "score each configuration under its own attack name"
            )
    roles = df.groupby("image_id", sort=False)["role"].nunique()
    if (roles > 1).any():
        ids = [i[:12] for i in roles[roles > 1].index[:3]]
        raise ValueError(f"images listed under more than one role for attack {attack!r}: {ids}")
    n_seeds = int(df.groupby("image_id", sort=False)["seed"].nunique().max())
    out = df.groupby(["image_id", "role"], sort=False, as_index=False)["score"].mean()
    return out[["image_id", "role", "score"]], n_seeds


def _fmt_pct(f: float) -> str:
    return f"{f * 100:g}%"


#: Single-attack set-level tests, each run on every attack with suspects and controls (``set_tests`` of its
#: AttackResult; the plan's ``test`` picks the primary one): name -> (needs strata, test(s, c, plan, strata)).
#: A new test is one entry here (and its name among the values AnalysisPlan.test accepts). The feature-set
#: test, crossfit, combines attacks and is run once in :func:`analyze`.
SET_TESTS: dict[str, tuple[bool, Any]] = {
    "mann_whitney": (False, lambda s, c, plan, st: mann_whitney(s, c, plan.alternative, n_resamples=plan.n_permutations,
                                                                seed=plan.seed)),
    "permutation": (False, lambda s, c, plan, st: permutation_test(s, c, n_resamples=plan.n_permutations,
                                                                   seed=plan.seed, alternative=plan.alternative)),
    "van_elteren": (True, lambda s, c, plan, st: van_elteren_test(s, c, st[0], st[1], plan.n_permutations, plan.seed,
                                                                  plan.alternative)),
}


def _analyze_attack(
    attack: str, df: pd.DataFrame, plan: AnalysisPlan, primary: bool, strata: dict[str, str] | None = None
) -> tuple[AttackResult, list[str]]:
    by_role = {r: df.loc[df["role"] == r, "score"].to_numpy(dtype=float) for r in ROLES}
    s, c = by_role["suspect"], by_role[plan.control_role]
    m, nm = by_role["member"], by_role["nonmember"]
    res = AttackResult(attack, primary, s.size, c.size, m.size, nm.size)
    notes: list[str] = []
    boot = dict(n_boot=plan.n_bootstrap, level=plan.ci_level, seed=plan.seed)

    if s.size and c.size:
        ids = df.loc[df["role"] == "suspect", "image_id"].tolist()
        c_ids = df.loc[df["role"] == plan.control_role, "image_id"].tolist()
        st = None
        if plan.strata and strata is not None:
            s_st, c_st = _strata_of_ids(strata, ids, plan), _strata_of_ids(strata, c_ids, plan)
            st = (s_st, c_st)
        for name, (needs_strata, test_fn) in SET_TESTS.items():
            if needs_strata and st is None:
                continue
            try:
                res.set_tests[name] = test_fn(s, c, plan, st)
            except ValueError as e:
                notes.append(f"Attack {attack!r}: no {name.replace('_', ' ')} test ({e}).")
        res.auc_suspect_control = auc_with_ci(s, c, **boot)
        res.tpr_suspect_control = [tpr_at_fpr(s, c, f, **boot) for f in plan.fpr_levels]

        if st is not None:
            p_all = stratified_conformal_pvalues(s, c, s_st, c_st)
            notes.extend(_stratum_notes(attack, plan, s_st, c_st, primary))
        else:
            p_all = conformal_pvalues(s, c)
        valid = ~np.isnan(p_all)
        res.n_without_pvalue = int((~valid).sum())
        sv, p = s[valid], p_all[valid]
        idv = [i for i, ok in zip(ids, valid) if ok]
        p_holm, p_bh, p_cl = holm(p), benjamini_hochberg(p), hommel(p)
        order = np.lexsort((-sv, p))  # smallest p first; ties broken by higher score
        res.artworks = [
            ArtworkResult(
                idv[i], float(sv[i]), float(p[i]), float(p_holm[i]), float(p_bh[i]), bool(p_holm[i] <= plan.alpha),
                float(p_cl[i]), bool(p_cl[i] <= plan.alpha),
            )
            for i in order
        ]
        res.n_flagged_holm = sum(a.flagged for a in res.artworks)
        res.n_flagged_closed = sum(a.flagged_closed for a in res.artworks)
        res.n_bound = int(p.size)
        res.members_lower_bound = true_discovery_bound(p, plan.alpha) if p.size else None
        if p.size:
            if plan.strata and strata is not None:
                res.storey = _storey_stratified(sv, c, [s_st[i] for i in np.flatnonzero(valid)], c_st, plan)
            else:
                res.storey = storey_estimate(s, c, lam=plan.storey_lambda, n_boot=plan.n_bootstrap,
                                             level=plan.ci_level, seed=plan.seed)
        need = min_controls_for(plan.alpha, max(1, int(p.size)))
        res.min_controls_per_artwork = need
        if c.size < need and not plan.strata:
            notes.append(
                f"With {c.size} controls the smallest possible per-artwork (conformal) p-value is "
                f"1/{c.size + 1} = {1 / (c.size + 1):.3g}; after Holm over {s.size} suspect works no single "
                f"work can be flagged at α = {plan.alpha:g}. A per-artwork claim at this α needs at least "
                f"{need} controls; the set-level test does not have this limit."
            )

    if m.size and nm.size:
        res.auc_member_nonmember = auc_with_ci(m, nm, **boot)
        res.tpr_member_nonmember = [tpr_at_fpr(m, nm, f, **boot) for f in plan.fpr_levels]
        if primary and res.auc_member_nonmember.lo <= 0.5:
            notes.append(
                f"Positive control: attack {attack!r} does not reliably separate the known "
                f"members from the known nonmembers on this model (AUC {res.auc_member_nonmember.auc:.3f}, "
                f"{_fmt_pct(plan.ci_level)} CI {res.auc_member_nonmember.lo:.3f}–{res.auc_member_nonmember.hi:.3f} "
                "covers 0.5); a failure to reject H0 is then uninformative."
            )
    neg_name = "controls" if plan.control_role == "control" else "nonmembers"
    for tprs, neg in ((res.tpr_member_nonmember, "nonmembers"), (res.tpr_suspect_control, neg_name)):
        for t in tprs:
            if not t.achievable:
                notes.append(
                    f"TPR at {_fmt_pct(t.fpr)} FPR needs at least {math.ceil(1 / t.fpr - 1e-9)} {neg}; with "
                    f"{t.n_neg} the threshold sits above every one of them (0 false positives), so the data "
                    f"cannot tell an FPR of {_fmt_pct(t.fpr)} from one of 1/{t.n_neg}. Reported but marked "
                    "not achievable."
                )
    return res, notes


def _strata_of_ids(strata: dict[str, str], ids: list[str], plan: AnalysisPlan) -> list[str]:
    missing = [i for i in ids if i not in strata]
    if missing:
        raise ValueError(f"{len(missing)} works have no value in the stratum column {plan.strata[0]!r} (e.g. "
                         f"{missing[0][:12]}); fill it in or remove stats.strata")
    return [strata[i] for i in ids]


def _stratum_notes(attack: str, plan: AnalysisPlan, s_st: list[str], c_st: list[str], primary: bool) -> list[str]:
    """Per-stratum limits of per-artwork claims: suspects without own-stratum controls, and strata with too few
    controls for any Holm flag (the conformal floor is 1/(n_g + 1))."""
    if not primary:
        return []
    col = plan.strata[0]
    out = []
    cs = pd.Series(c_st).value_counts()
    ss = pd.Series(s_st).value_counts()
    orphan = [g for g in ss.index if g not in cs.index]
    if orphan:
        out.append(f"{int(ss[orphan].sum())} suspect work(s) of {col} {', '.join(map(str, orphan[:5]))} have no control "
                   f"of their own {col}: they are left out of the stratified test and get no per-work p-value.")
    m = int(ss[[g for g in ss.index if g in cs.index]].sum()) if len(cs) else 0
    few = []
    for g, n_g in cs.items():
        if g in ss.index and m and (1.0 / (n_g + 1.0)) * m > plan.alpha:
            few.append(f"{g} ({n_g} controls: smallest p-value 1/{n_g + 1} = {1 / (n_g + 1):.3g})")
    if few:
        out.append(f"Per-work claims are compared with the controls of the work's own {col}, so the smallest possible "
                   f"p-value is 1/(n + 1) for a {col} with n controls; after Holm over {m} suspect works no work of "
                   f"these {col} strata can be flagged at α = {plan.alpha:g}: " + "; ".join(few[:6])
                   + (f" and {len(few) - 6} more" if len(few) > 6 else "") + f". A per-work claim at this α needs at "
                   f"least {min_controls_for(plan.alpha, m)} controls in the work's {col}.")
    return out


def _storey_stratified(s: np.ndarray, c: np.ndarray, s_st: list[str], c_st: list[str], plan: AnalysisPlan
                       ) -> StoreyEstimate:
    """Storey's estimate from the within-stratum conformal p-values; the interval resamples suspects and
    controls within their strata."""
    from audit.stats.tests import storey_pi0

    lam, m = plan.storey_lambda, s.size
    gs, gc = np.asarray(s_st, dtype=str), np.asarray(c_st, dtype=str)
    pi0 = storey_pi0(stratified_conformal_pvalues(s, c, gs, gc), lam)
    rng = np.random.default_rng(plan.seed)
    idx_s = [np.flatnonzero(gs == g) for g in np.unique(gs)]
    idx_c = [np.flatnonzero(gc == g) for g in np.unique(gc)]
    reps = np.empty(plan.n_bootstrap)
    for b in range(plan.n_bootstrap):
        bs = np.concatenate([i[rng.integers(0, i.size, i.size)] for i in idx_s])
        bc = np.concatenate([i[rng.integers(0, i.size, i.size)] for i in idx_c])
        reps[b] = m * (1.0 - storey_pi0(stratified_conformal_pvalues(s[bs], c[bc], gs[bs], gc[bc]), lam))
    tail = (1.0 - plan.ci_level) / 2.0 * 100.0
    lo, hi = np.percentile(reps, [tail, 100.0 - tail])
    return StoreyEstimate(float(pi0), int(m), float(m * (1.0 - pi0)), float(lo), float(hi), float(lam),
                          plan.ci_level, plan.n_bootstrap)


def resolve_strata(plan: AnalysisPlan, works: pd.DataFrame | list[dict[str, Any]] | None
                   ) -> tuple[AnalysisPlan, str]:
    """Apply the plan's ``auto_strata`` rule to the manifest (rows with ``role`` and ``artist``) before the plan
    is recorded: stratify by artist when every suspect and control names its artist, the controls span at
    least two artists, and every suspect's artist has controls. Returns the (possibly stratified) plan and a
    sentence saying what was decided and why."""
    if plan.strata:
        return plan, f"The plan stratifies by {plan.strata[0]} (declared)."
    if not plan.auto_strata:
        return plan, "Not stratified (stats.auto_strata=false)."
    df = pd.DataFrame(works) if works is not None and not isinstance(works, pd.DataFrame) else works
    if df is None or df.empty or "artist" not in df.columns or "role" not in df.columns:
        return plan, "Not stratified: the manifest has no artist column."
    art = df["artist"].fillna("").astype(str).str.strip()
    sus, ctl = art[df["role"] == "suspect"], art[df["role"] == plan.control_role]
    if sus.empty or ctl.empty:
        return plan, "Not stratified: suspects or controls are missing."
    if (sus == "").any() or (ctl == "").any():
        return plan, "Not stratified: some suspects or controls have no artist."
    if ctl.nunique() < 2:
        return plan, "Not stratified: all controls are by one artist, so pooled and stratified tests coincide."
    lacking = sorted(set(sus) - set(ctl))
    if lacking:
        return plan, (f"Not stratified: no controls for the suspects' artist(s) {lacking[:5]}; a stratified test "
                      "would have to leave those works out.")
    from dataclasses import replace

    return replace(plan, strata=("artist",)), ("Stratified by artist (stats.auto_strata): every suspect's artist has "
                                               "controls, and the controls span several artists.")


def composition(images: pd.DataFrame | None, plan: AnalysisPlan) -> dict[str, Any] | None:
    """Role × stratum counts (the plan's stratum column, else artist) of the accepted works."""
    if images is None or "role" not in images.columns:
        return None
    col = plan.strata[0] if plan.strata else "artist"
    if col not in images.columns:
        return None
    df = images.drop_duplicates("image_id") if "image_id" in images.columns else images
    tab = pd.crosstab(df[col].fillna("").astype(str).replace("", "(none)"), df["role"])
    rows = [{"stratum": str(g), **{r: int(tab.loc[g, r]) if r in tab.columns else 0 for r in ROLES}}
            for g in tab.index]
    return {"column": col, "stratified": bool(plan.strata), "rows": rows}


def _where(plan: AnalysisPlan, label: str, t: TestResult) -> str:
    what = f"attack {label!r}" if not plan.features else label + " combined by cross-fitting"
    within = f", each suspect compared with controls of its own {plan.strata[0]}" if plan.strata else ""
    return (f"({what}, {test_label(plan.test, plan.alternative)}{within}; {t.n_suspect} suspect and {t.n_control} "
            "control works)")


def _gate_gaps(plan: AnalysisPlan, gates: list[GateResult]) -> tuple[list[GateResult], list[str]]:
    """Gates that withhold because they could not be run (the blind baseline, when the plan requires it), and
    sentences naming the other gates that were not run or were waived."""
    blocking, said = [], []
    for g in gates:
        if g.status != "not_run":
            continue
        if g.name == "blind_baseline" and g.name in plan.gates and g.details.get("reason") == "too_few":
            # with one suspect (the common "was *my* work used?" question) the check is impossible, not skipped
            said.append("The blind baseline could not be run: " + g.summary.rstrip(".") + "; nothing checks that the "
                        "controls match the suspects in model-free features, so choose them with particular care.")
        elif g.name == "blind_baseline" and g.name in plan.gates:
            blocking.append(g)
        elif g.name == "blind_baseline":
            said.append("The blind baseline was waived in the analysis plan (stats.gates), so nothing here checks "
                        "that the controls match the suspects in model-free features.")
        elif g.name == "positive_control" and g.name in plan.gates:
            said.append("No positive control was run (" + g.summary.rstrip(".") + "), so the test's power on this "
                        "model is unknown.")
        elif g.name in ("placebo", "positive_control"):
            said.append(f"The {g.title.split(' (')[0].lower()} gate was "
                        + ("waived in the analysis plan." if g.name not in plan.gates else "not run: " + g.summary))
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


def _primary_data(scores: ScoreTable, plan: AnalysisPlan, primary: str) -> tuple[PrimaryData, list[str]]:
    """Per-role inputs of the primary statistic. A feature set keeps only works scored by every feature."""
    notes: list[str] = []
    if not plan.features:
        df, _ = collapse_scores(scores, primary)
        return PrimaryData(primary, (primary,), {r: df.loc[df["role"] == r, "score"].to_numpy(float) for r in ROLES},
                           {r: df.loc[df["role"] == r, "image_id"].tolist() for r in ROLES}), notes
    wide = None
    for f in plan.features:
        df, _ = collapse_scores(scores, f)
        df = df.rename(columns={"score": f})
        wide = df if wide is None else wide.merge(df, on=["image_id", "role"], how="outer")
    assert wide is not None
    incomplete = wide[list(plan.features)].isna().any(axis=1)
    if incomplete.any():
        notes.append(f"{int(incomplete.sum())} works lack a score for some attack of the feature set and are left "
                     "out of the primary test.")
        wide = wide[~incomplete]
    X = {r: wide.loc[wide["role"] == r, list(plan.features)].to_numpy(float) for r in ROLES}
    ids = {r: wide.loc[wide["role"] == r, "image_id"].tolist() for r in ROLES}
    return PrimaryData(plan.primary_label, tuple(plan.features), X, ids), notes


def _stratum_values(images: pd.DataFrame | None, col: str) -> dict[str, str] | None:
    """image_id → value of column ``col`` (blank values left out); None when the table has no such column."""
    if images is None or col not in images.columns or "image_id" not in images.columns:
        return None
    vals = images[["image_id", col]].drop_duplicates("image_id")
    vals = vals[vals[col].notna() & (vals[col].astype(str).str.strip() != "")]
    return dict(zip(vals["image_id"], vals[col].astype(str)))


def _strata_map(plan: AnalysisPlan, images: pd.DataFrame | None) -> tuple[dict[str, str] | None, str]:
    """image_id → stratum for the checks that look at strata (plan.strata[0], else artist)."""
    col = plan.strata[0] if plan.strata else "artist"
    vals = _stratum_values(images, col)
    if vals is None and plan.strata:
        raise ValueError(f"stats.strata names column {col!r}, which the image table does not have")
    return (vals or None), col


def _plan_strata_map(plan: AnalysisPlan, images: pd.DataFrame | None) -> dict[str, str] | None:
    """image_id → stratum for a stratified plan (None when the plan is not stratified)."""
    if not plan.strata:
        return None
    vals = _stratum_values(images, plan.strata[0])
    if vals is None:
        raise ValueError(f"the plan is stratified by {plan.strata[0]!r} but the image table has no such column")
    return vals


def _run_gates(plan: AnalysisPlan, data: PrimaryData, features: pd.DataFrame | None,
               images: pd.DataFrame | None = None, plan_strata: dict[str, str] | None = None) -> list[GateResult]:
    from audit.stats.gates import GateContext, run_gates

    strata, col = _strata_map(plan, images)
    return run_gates(GateContext(plan, data, features, images, plan_strata, strata, col))


def analyze(scores: ScoreTable, images: pd.DataFrame | None, plan: AnalysisPlan,
            features: pd.DataFrame | None = None, recorded_plan_sha256: str | None = None) -> AuditResult:
    """Run the analysis plan on every attack in ``scores``; only the primary statistic gives the verdict.

    ``images`` (the accepted-image table, columns as :class:`audit.types.ImageRecord`) is optional; when
    given, roles are cross-checked against it and images without a primary-attack score are noted.
    ``features``: model-free image features (``image_id`` + float columns, :mod:`audit.stats.blind`) for
    the blind-baseline gate; without them that gate is reported as not run.
    ``recorded_plan_sha256``: the plan hash recorded before scoring; a different plan makes the verdict
    exploratory (it is still computed, and labelled so).
    """
    if scores.df.empty:
        raise ValueError("the ScoreTable is empty")
    adjustment: dict[str, Any] | None = None
    adjust_notes: list[str] = []
    if plan.adjust == "features":
        from audit.stats.adjust import difficulty_adjust

        scores, adjustment, adjust_notes = difficulty_adjust(scores, features, plan.crossfit_folds)
    attacks = scores.attacks
    if plan.features:
        missing = [f for f in plan.features if f not in attacks]
        if missing:
            raise ValueError(f"feature-set attacks {missing} are not in the ScoreTable (have {attacks})")
        primary = plan.primary_attack or plan.features[0]
    else:
        primary = plan.primary_attack if plan.primary_attack is not None else attacks[0]
    if primary not in attacks:
        raise ValueError(f"primary attack {primary!r} is not in the ScoreTable (have {attacks})")

    notes: list[str] = list(adjust_notes)
    if adjustment is not None:
        r2 = ", ".join(f"{a} {v['r2_out_of_fold']:.2f}" for a, v in adjustment["attacks"].items())
        notes.append("Every score was difficulty-adjusted before testing (stats.adjust=features): the score minus what "
                     "the model-free image features predict, by cross-fitted ridge regression fitted on all works "
                     f"without their roles (out-of-fold R² per attack: {r2}); the raw scores are in scores.parquet.")
    results: list[AttackResult] = []
    plan_strata = _plan_strata_map(plan, images)
    for name in attacks:
        df, n_seeds = collapse_scores(scores, name)
        if n_seeds > 1:
            notes.append(f"Attack {name!r}: each work's score is the mean over {n_seeds} seeds.")
        res, attack_notes = _analyze_attack(name, df, plan, primary=(name == primary and not plan.features),
                                            strata=plan_strata)
        results.append(res)
        notes.extend(attack_notes)
        if name == primary and images is not None:
            notes.extend(_check_images(df, images, name))

    label = plan.primary_label if plan.features else primary
    data, data_notes = _primary_data(scores, plan, primary)
    notes.extend(data_notes)
    n_s, n_c = data.n("suspect"), data.n(plan.control_role)
    if 0 < n_s < 2 and n_c > 0:  # the common "was *my* work trained on?" question
        notes.append(f"Only one suspect work: the set-level test reduces to that work's own rank among the {n_c} "
                     f"controls (its one-sided p-value cannot be below 1/(n_control+1) = {1 / (n_c + 1):.3g}); a "
                     "statement about a set of works needs at least 2 suspect works, and the power gate says how "
                     "many the measured effect needs.")
    primary_test: TestResult | None = None
    crossfit: CrossfitResult | None = None
    primary_auc: float | None = None
    if plan.features:
        from audit.stats.tests import crossfit_folds

        if crossfit_folds(n_s, n_c, plan.crossfit_folds) >= 2:
            primary_test, crossfit = run_primary(plan, data.values["suspect"], data.values[plan.control_role],
                                                 data.names, s_ids=data.ids["suspect"],
                                                 c_ids=data.ids[plan.control_role], strata=plan_strata)
            primary_auc = crossfit.auc
            zero = [f for f, w in zip(crossfit.features, crossfit.coef) if w <= 1e-12]
            if zero:
                notes.append(f"In the cross-fitted primary statistic the weight of {zero} is zero in every fold: the "
                             "weights are constrained to be non-negative (members score higher under every attack), "
                             "and these attacks did not help to score the suspects higher than the controls.")
    else:
        pres = next(r for r in results if r.attack == primary)
        primary_test = pres.set_tests.get(plan.test)
        primary_auc = pres.auc_suspect_control.auc if pres.auc_suspect_control is not None else None

    sha = plan.sha256()
    confirmatory = recorded_plan_sha256 is not None and recorded_plan_sha256 == sha
    gates = _run_gates(plan, data, features, images, plan_strata) if primary_test is not None else []
    verdict = _verdict(plan, label, primary_test, n_s, n_c, gates, confirmatory, primary_auc)
    if primary_test is not None:
        from dataclasses import replace as _replace

        B = primary_test.n_resamples if primary_test.method and "permutation" in primary_test.method else None
        floor = 1.0 / (B + 1.0) if B else None
        verdict = _replace(verdict, n_resamples=B, p_floor=floor, method=primary_test.method,
                           floor_binds=bool(floor is not None and primary_test.p_value <= floor * (1 + 1e-9)))
    if recorded_plan_sha256 is None:
        notes.insert(0, f"No analysis-plan hash was recorded before scoring, so nothing shows that this plan (SHA-256 "
                        f"{sha[:16]}…) was fixed before the scores existed: the verdict is exploratory, not "
                        "confirmatory.")
    elif not confirmatory:
        notes.insert(0, f"The analysis plan (SHA-256 {sha[:16]}…) differs from the plan recorded before scoring "
                        f"({recorded_plan_sha256[:16]}…): this analysis was changed after the scores existed, so its "
                        "verdict is exploratory, not confirmatory.")
    if verdict.decision == "not_tested":
        notes.insert(0, verdict.sentence)
    for g in gates:
        if g.status == "not_run" and g.name != "power":
            notes.append(f"{g.title}: not run. {g.summary}")
    n_other = len(attacks) - (len(plan.features) if plan.features else 1)
    if len(attacks) > 1:
        notes.append(
            f"Only the primary statistic ({label}) with the {test_label(plan.test, plan.alternative)} is "
            f"confirmatory; {'the other ' + str(n_other) + ' attack(s), ' if n_other > 0 else ''}the single-attack "
            "tests and per-attack tables are exploratory and their p-values are not corrected for this multiplicity."
        )
    # Same text can arise from several attacks (e.g. the control-count note); say it once.
    sens = _sensitivity(scores, images, plan, primary) if primary_test is not None else []
    return AuditResult(plan, primary, results, verdict, list(dict.fromkeys(notes)), label, primary_test, primary_auc,
                       crossfit, gates, sha, recorded_plan_sha256, composition(images, plan), sens, adjustment,
                       decision_rates(plan, gates))


def decision_rates(plan: AnalysisPlan, gates: list[GateResult]) -> dict[str, Any]:
    """Error rates of the whole decision on this model, from the records of this run.

    False-positive rate: the placebo splits (pseudo-suspects drawn from the controls, tested exactly as the
    suspects) and, when known nonmembers were given, subsets of them tested against the controls. The gates can
    only withhold a rejection, never add one, so the decision's false-positive rate is at most the primary
    test's. Power: subsets of the known members of the suspect set's size (the positive control)."""
    by = {g.name: g for g in gates}
    out: dict[str, Any] = {"alpha": plan.alpha, "fpr": None, "fpr_negative_control": None, "power": None,
                           "measured_on": "this model and these controls", "note": None}
    pl = by.get("placebo")
    if pl is not None and pl.details.get("at_alpha"):
        a = pl.details["at_alpha"]
        out["fpr"] = {"k": a["k"], "n": a["n"], "rate": a["rate"], "lo": a["lo"], "hi": a["hi"],
                      "source": "placebo splits of the controls"}
    pc = by.get("positive_control")
    if pc is not None:
        nc = pc.details.get("negative_control")
        if nc:
            out["fpr_negative_control"] = {"k": nc["k"], "n": nc["n"], "rate": nc["rate"], "lo": nc["lo"],
                                           "hi": nc["hi"], "size": nc["size"], "source": "subsets of the known nonmembers"}
        pw = pc.details.get("power")
        if pw and pw.get("n"):
            out["power"] = {"k": pw["k"], "n": pw["n"], "rate": pw["rate"], "lo": pw["lo"], "hi": pw["hi"],
                            "size": pw.get("size"), "source": "subsets of the known members"}
    missing = []
    if out["fpr"] is None:
        missing.append("the false-positive rate (" + ("the placebo gate was not run" if pl is None or
                       pl.status == "not_run" and "switched off" in pl.summary else "too few controls for placebo "
                       "splits") + ")")
    if out["power"] is None:
        missing.append("the power (" + ("the positive-control gate was not run" if pc is None or "switched off" in
                       pc.summary else "at least 4 known members (role 'member') are needed") + ")")
    if missing:
        out["note"] = "Not measured on this model: " + " and ".join(missing) + "."
    return out


def _sensitivity(scores: ScoreTable, images: pd.DataFrame | None, plan: AnalysisPlan, primary: str
                 ) -> list[dict[str, Any]]:
    from audit.stats.sensitivity import sensitivity_rows

    strata, col = _strata_map(plan, images)
    by_attack = {a: collapse_scores(scores, a)[0] for a in scores.attacks}
    return sensitivity_rows(by_attack, plan, primary, strata, col)


def _check_images(df: pd.DataFrame, images: pd.DataFrame, attack: str) -> list[str]:
    missing_cols = {"image_id", "role"} - set(images.columns)
    if missing_cols:
        raise ValueError(f"images table lacks columns {sorted(missing_cols)}")
    merged = df.merge(images[["image_id", "role"]].drop_duplicates(), on="image_id", how="left", suffixes=("", "_img"))
    clash = merged[merged["role_img"].notna() & (merged["role"] != merged["role_img"])]
    if len(clash):
        raise ValueError(
            f"{len(clash)} images have a different role in the ScoreTable than in the image table, "
            f"e.g. {clash['image_id'].iloc[0][:12]}: {clash['role'].iloc[0]} vs {clash['role_img'].iloc[0]}"
        )
    notes = []
    unscored = set(images["image_id"]) - set(df["image_id"])
    if unscored:
        notes.append(f"{len(unscored)} accepted images have no score for the primary attack {attack!r}.")
    unknown = int(merged["role_img"].isna().sum())
    if unknown:
        notes.append(f"{unknown} scored images of attack {attack!r} are not in the image table.")
    return notes
