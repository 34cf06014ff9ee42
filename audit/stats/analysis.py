"""From a ScoreTable to an audit result: the pre-registered test, effect sizes, per-artwork p-values.

Only the plan's primary attack and primary test produce the verdict; every other attack and test is
computed for the report but labelled exploratory, because choosing among them after seeing the data
would invalidate the p-value. Pure function of its inputs: no disk access, seeded randomness only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from audit.stats.metrics import AucCI, TprAtFpr, auc_with_ci, tpr_at_fpr
from audit.stats.tests import (
    TestResult,
    benjamini_hochberg,
    conformal_pvalues,
    holm,
    mann_whitney,
    min_controls_for,
    permutation_test,
)
from audit.types import ROLES, ScoreTable

__all__ = [
    "TEST_LABELS",
    "AnalysisPlan",
    "ArtworkResult",
    "AttackResult",
    "Verdict",
    "AuditResult",
    "analyze",
    "collapse_scores",
    "format_p",
]

TestName = Literal["mann_whitney", "permutation"]

# How each test is named in verdict sentences and the report.
TEST_LABELS: dict[str, str] = {
    "mann_whitney": "one-sided Mann–Whitney U",
    "permutation": "one-sided permutation test on the difference in means",
}


# Analysis v1 runs no validity gates (DESIGN.md: blind baseline, placebo nulls, power); until it does,
# every result says what the verdict silently assumes.
_NO_GATES_NOTE = (
    "Validity gates (blind model-free baseline, placebo splits of the controls) were not run by this version; "
    "the verdict assumes the control works are exchangeable with suspect works that were not in training."
)


@dataclass(frozen=True)
class AnalysisPlan:
    """What is tested, fixed before the scores are seen (the report prints it verbatim)."""

    primary_attack: str | None = None  # None → the first attack in the ScoreTable
    alpha: float = 0.05  # significance level of the verdict and of per-artwork Holm flags
    test: TestName = "mann_whitney"  # the set-level test that gives the verdict
    n_permutations: int = 10000  # resamples of the permutation test
    n_bootstrap: int = 1000  # bootstrap replicates behind every CI
    seed: int = 0  # seeds the bootstrap and the permutation test
    fpr_levels: tuple[float, ...] = (0.01, 0.001)  # FPRs at which TPR is reported
    ci_level: float = 0.95  # confidence level of every interval

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.test not in TEST_LABELS:
            raise ValueError(f"test must be one of {sorted(TEST_LABELS)}, got {self.test!r}")
        if self.n_permutations < 1 or self.n_bootstrap < 1:
            raise ValueError("n_permutations and n_bootstrap must be ≥ 1")
        if any(not 0.0 < f < 1.0 for f in self.fpr_levels):
            raise ValueError(f"fpr_levels must lie in (0, 1), got {self.fpr_levels}")
        # Accept a list from a YAML config but store a tuple, so the plan stays hashable and frozen.
        object.__setattr__(self, "fpr_levels", tuple(float(f) for f in self.fpr_levels))


@dataclass(frozen=True)
class ArtworkResult:
    """One suspect work under one attack. ``flagged``: Holm-adjusted p ≤ α (a per-work claim)."""

    image_id: str
    score: float
    p_conformal: float
    p_holm: float
    p_bh: float
    flagged: bool


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
    min_controls_per_artwork: int | None = None  # controls needed for any Holm flag at α


@dataclass(frozen=True)
class Verdict:
    """The single confirmatory statement of the audit."""

    decision: Literal["reject_h0", "fail_to_reject", "not_tested"]
    sentence: str
    attack: str | None
    test: str
    alpha: float
    p_value: float | None = None


@dataclass
class AuditResult:
    plan: AnalysisPlan
    primary_attack: str
    attacks: list[AttackResult]
    verdict: Verdict
    notes: list[str] = field(default_factory=list)

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


def format_p(p: float | None, alpha: float | None = None) -> str:
    """p-value text used in verdicts and reports: 3 significant figures (``g`` format).

    With ``alpha`` given, more digits are used if rounding would put p on the wrong side of α
    (0.04996 must not read "0.05" next to "rejected").
    """
    if p is None or not math.isfinite(p):
        return "–"
    for digits in range(3, 10):
        s = f"{p:.{digits}g}"
        if alpha is None or (float(s) <= alpha) == (p <= alpha):
            return s
    return repr(p)


def _fmt_pct(f: float) -> str:
    return f"{f * 100:g}%"


def _analyze_attack(
    attack: str, df: pd.DataFrame, plan: AnalysisPlan, primary: bool
) -> tuple[AttackResult, list[str]]:
    by_role = {r: df.loc[df["role"] == r, "score"].to_numpy(dtype=float) for r in ROLES}
    s, c, m, nm = by_role["suspect"], by_role["control"], by_role["member"], by_role["nonmember"]
    res = AttackResult(attack, primary, s.size, c.size, m.size, nm.size)
    notes: list[str] = []
    boot = dict(n_boot=plan.n_bootstrap, level=plan.ci_level, seed=plan.seed)

    if s.size and c.size:
        res.set_tests["mann_whitney"] = mann_whitney(s, c)
        res.set_tests["permutation"] = permutation_test(s, c, n_resamples=plan.n_permutations, seed=plan.seed)
        res.auc_suspect_control = auc_with_ci(s, c, **boot)
        res.tpr_suspect_control = [tpr_at_fpr(s, c, f, **boot) for f in plan.fpr_levels]

        ids = df.loc[df["role"] == "suspect", "image_id"].tolist()
        p = conformal_pvalues(s, c)
        p_holm, p_bh = holm(p), benjamini_hochberg(p)
        order = np.lexsort((-s, p))  # smallest p first; ties broken by higher score
        res.artworks = [
            ArtworkResult(
                ids[i], float(s[i]), float(p[i]), float(p_holm[i]), float(p_bh[i]), bool(p_holm[i] <= plan.alpha)
            )
            for i in order
        ]
        res.n_flagged_holm = sum(a.flagged for a in res.artworks)
        need = min_controls_for(plan.alpha, s.size)
        res.min_controls_per_artwork = need
        if c.size < need:
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
                f"Positive control: the primary attack {attack!r} does not reliably separate the known "
                f"members from the known nonmembers on this model (AUC {res.auc_member_nonmember.auc:.3f}, "
                f"{_fmt_pct(plan.ci_level)} CI {res.auc_member_nonmember.lo:.3f}–{res.auc_member_nonmember.hi:.3f} "
                "covers 0.5); a failure to reject H0 is then uninformative."
            )
    for tprs, neg in ((res.tpr_member_nonmember, "nonmembers"), (res.tpr_suspect_control, "controls")):
        for t in tprs:
            if not t.achievable:
                notes.append(
                    f"TPR at {_fmt_pct(t.fpr)} FPR needs at least {math.ceil(1 / t.fpr - 1e-9)} {neg}; with "
                    f"{t.n_neg} the threshold sits above every one of them (0 false positives), so the data "
                    f"cannot tell an FPR of {_fmt_pct(t.fpr)} from one of 1/{t.n_neg}. Reported but marked "
                    "not achievable."
                )
    return res, notes


def _verdict(res: AttackResult, plan: AnalysisPlan) -> Verdict:
    label = TEST_LABELS[plan.test]
    if res.n_control == 0 or res.n_suspect == 0:
        missing = "control" if res.n_control == 0 else "suspect"
        why = (
            "there is no null distribution to compare the suspect works against"
            if missing == "control"
            else "there is nothing to test"
        )
        return Verdict(
            "not_tested",
            f"No set-level test was run for attack {res.attack!r}: no {missing} works were given, so {why}.",
            res.attack,
            plan.test,
            plan.alpha,
        )
    t = res.set_tests[plan.test]
    where = (
        f"(attack {res.attack!r}, {label}; {t.n_suspect} suspect and {t.n_control} control works)"
    )
    p_txt = format_p(t.p_value, plan.alpha)
    if t.p_value <= plan.alpha:
        sentence = (
            f"At α = {plan.alpha:g}, the suspect works' membership scores {where} are inconsistent with the "
            f"hypothesis that no suspect work was in the model's training data (p = {p_txt})."
        )
        decision = "reject_h0"
    else:
        sentence = (
            f"At α = {plan.alpha:g}, the suspect works' membership scores {where} are consistent with the "
            f"hypothesis that no suspect work was in the model's training data (p = {p_txt}). "
            "Failing to detect membership is not proof of absence."
        )
        decision = "fail_to_reject"
    return Verdict(decision, sentence, res.attack, plan.test, plan.alpha, t.p_value)


def analyze(scores: ScoreTable, images: pd.DataFrame | None, plan: AnalysisPlan) -> AuditResult:
    """Run the analysis plan on every attack in ``scores``; only the primary attack gives the verdict.

    ``images`` (the accepted-image table, columns as :class:`audit.types.ImageRecord`) is optional; when
    given, roles are cross-checked against it and images without a primary-attack score are noted.
    """
    if scores.df.empty:
        raise ValueError("the ScoreTable is empty")
    attacks = scores.attacks
    primary = plan.primary_attack if plan.primary_attack is not None else attacks[0]
    if primary not in attacks:
        raise ValueError(f"primary attack {primary!r} is not in the ScoreTable (have {attacks})")

    notes: list[str] = []
    results: list[AttackResult] = []
    for name in attacks:
        df, n_seeds = collapse_scores(scores, name)
        if n_seeds > 1:
            notes.append(f"Attack {name!r}: each work's score is the mean over {n_seeds} seeds.")
        res, attack_notes = _analyze_attack(name, df, plan, primary=(name == primary))
        results.append(res)
        notes.extend(attack_notes)
        if name == primary and images is not None:
            notes.extend(_check_images(df, images, name))

    notes.append(_NO_GATES_NOTE)
    primary_res = next(r for r in results if r.primary)
    verdict = _verdict(primary_res, plan)
    if verdict.decision == "not_tested":
        notes.insert(0, verdict.sentence)
    if len(attacks) > 1:
        notes.append(
            f"Only attack {primary!r} with the {TEST_LABELS[plan.test]} is confirmatory; the other "
            f"{len(attacks) - 1} attack(s) and the other test are exploratory and their p-values are not "
            "corrected for this multiplicity."
        )
    # Same text can arise from several attacks (e.g. the control-count note); say it once.
    return AuditResult(plan, primary, results, verdict, list(dict.fromkeys(notes)))


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
