"""From a ScoreTable to an audit result: the pre-registered test, effect sizes, per-artwork p-values, gates.

Only the plan's primary statistic (one attack, or a declared feature set of several attacks combined by
cross-fitting) with the plan's test produces the verdict; every other attack and test is computed for the
report but labelled exploratory, because choosing among them after seeing the data would invalidate the
p-value. The validity gates (:mod:`audit.stats.gates`) can withhold the verdict. Pure function of its
inputs: no disk access, seeded randomness only.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from audit.stats.core import format_p
from audit.stats.gates import GATES, GateResult, PrimaryData, run_primary  # noqa: F401
from audit.stats.metrics import auc_with_ci, tpr_at_fpr
from audit.stats.perwork import (
    benjamini_hochberg,
    conformal_pvalues,
    holm,
    hommel,
    min_controls_for,
    storey_estimate,
    stratified_conformal_pvalues,
    true_discovery_bound,
)
from audit.stats.plan import ADJUSTMENTS, TEST_LABELS, AnalysisPlan, test_label  # noqa: F401
from audit.stats.results import (  # noqa: F401  (re-exported: audit.stats.analysis was their home)
    ArtworkResult,
    AttackResult,
    AuditResult,
    CrossfitResult,
    StoreyEstimate,
    TestResult,
    Verdict,
    _jsonable,
)
from audit.stats.settests import SET_TESTS as _ALL_SET_TESTS
from audit.stats.verdict import _verdict
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

#: Single-attack set-level tests computed on every attack (exploratory tables; the plan's ``test`` picks the
#: primary one): the registry's entries that run per attack (:mod:`audit.stats.settests`).
SET_TESTS = {name: spec for name, spec in _ALL_SET_TESTS.items() if spec.per_attack}


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
        for name, spec in SET_TESTS.items():
            if spec.needs_strata and st is None:
                continue
            try:
                res.set_tests[name] = spec.run(plan, s, c, (attack,), plan.seed, None, None,
                                               *(st if st is not None else (None, None)))[0]
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
        binds = bool(floor is not None and primary_test.p_value <= floor * (1 + 1e-9))
        sentence = verdict.sentence
        if binds and verdict.decision in ("reject_h0", "reject_lower"):
            knob = "stats.crossfit_permutations" if plan.test == "crossfit" else "stats.n_permutations"
            sentence += (f" This p-value is at its floor, the smallest value {B} relabellings can give; more "
                         f"relabellings ({knob}) would show how much smaller it is.")
        verdict = _replace(verdict, sentence=sentence, n_resamples=B, p_floor=floor, method=primary_test.method,
                           floor_binds=binds)
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
