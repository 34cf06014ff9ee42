"""Blind baseline: the same comparison on model-free image features; the controls are no valid null for the suspects if the features alone tell them apart or predict a higher score for the suspects."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from audit.stats.gates._common import _fmt, _gate, _primary_score_1d, _strata_list, PrimaryData
from audit.stats.results import GateResult
from audit.stats.perwork import holm
from audit.stats.settests import crossfit_folds, crossfit_test, mann_whitney, van_elteren_test

if TYPE_CHECKING:  # pragma: no cover
    from audit.stats.plan import AnalysisPlan




def _score_aligned_blind_test(F: np.ndarray, score: np.ndarray, n_s: int, folds: int, seed: int,
                              alternative_seed: int) -> tuple[float, float, np.ndarray]:
    """Predict the primary score from the model-free features by cross-fitted ridge regression on all works
    (the labels are not used, so under H0 the predictions of suspects and controls stay exchangeable), then
    test whether the suspects' predictions are higher (one-sided Mann–Whitney). Returns (p, R² out of fold,
    predictions)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    n = F.shape[0]
    pred = np.empty(n)
    for tr, te in KFold(n_splits=min(folds, n), shuffle=True, random_state=seed).split(F):
        pred[te] = Ridge(alpha=1.0).fit(F[tr], score[tr]).predict(F[te])
    ss = float(((score - score.mean()) ** 2).sum())
    r2 = 1.0 - float(((score - pred) ** 2).sum()) / ss if ss > 0 else 0.0
    p = mann_whitney(pred[:n_s], pred[n_s:], "greater", seed=alternative_seed).p_value
    return float(p), r2, pred

def blind_baseline_gate(features: pd.DataFrame | None, suspect_ids: list[str], control_ids: list[str],
                        plan: "AnalysisPlan", data: PrimaryData | None = None,
                        plan_strata: dict[str, str] | None = None) -> GateResult:
    """Model-free features: (a) the cross-fitted test on all of them (unconstrained: any direction counts),
    (b) the score-aligned test (when ``data``, the primary scores, is given). Fails when either rejects at α.
    Per-feature standardised mean differences and Holm-adjusted two-sided Mann–Whitney p-values are reported
    as diagnostics (they do not decide the gate)."""
    name = "blind_baseline"
    if features is None or features.empty:
        return _gate(name, "not_run", "No model-free image features were stored with this run (features.parquet), "
                     "so the blind baseline could not be run; results folders written by audit-run contain them.",
                     reason="no_features")
    cols = [c for c in features.columns if c not in ("image_id", "role")]
    f = features.drop_duplicates("image_id").set_index("image_id")
    s_ids = [i for i in suspect_ids if i in f.index]
    c_ids = [i for i in control_ids if i in f.index]
    missing = len(suspect_ids) - len(s_ids) + len(control_ids) - len(c_ids)
    k = crossfit_folds(len(s_ids), len(c_ids), plan.crossfit_folds)
    if k < 2:
        return _gate(name, "not_run", f"The blind baseline needs at least 2 suspects and 2 controls with features "
                     f"(have {len(s_ids)} and {len(c_ids)}).", n_missing=missing, reason="too_few")
    S = f.loc[s_ids, cols].to_numpy(dtype=float)
    C = f.loc[c_ids, cols].to_numpy(dtype=float)
    st = plan_strata if plan.strata else None
    ss, cs = _strata_list(st, s_ids, "suspect"), _strata_list(st, c_ids, "control")
    cf = crossfit_test(S, C, plan.crossfit_permutations, plan.crossfit_folds, plan.seed + 101, "greater",
                       feature_names=cols, nonneg=False, suspect_ids=s_ids, control_ids=c_ids,
                       suspect_strata=ss, control_strata=cs)
    # Diagnostics: which features differ (standardised mean difference, two-sided rank test, Holm), over the
    # features the test used (constant or partly missing ones were left out).
    used = [cols.index(c) for c in cf.features]
    X = np.vstack([S, C])[:, used]
    sd = X.std(axis=0)
    smd = (S[:, used].mean(axis=0) - C[:, used].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    p_feat = np.array([mann_whitney(S[:, j], C[:, j], "two-sided", n_resamples=999, seed=plan.seed + 102).p_value
                       for j in used])
    p_holm = holm(p_feat) if len(used) else p_feat
    order = np.argsort(-np.abs(smd))
    per_feature = [{"feature": cols[used[j]], "smd": float(smd[j]), "p_mwu": float(p_feat[j]),
                    "p_holm": float(p_holm[j])} for j in order]
    p_omni = cf.test.p_value
    top = ", ".join(d["feature"] for d in per_feature[:3])
    details = dict(auc=cf.auc, p_value=p_omni, p_omnibus=p_omni, n_suspect=len(s_ids), n_control=len(c_ids),
                   n_missing=missing, n_permutations=plan.crossfit_permutations, folds=cf.folds, alpha=plan.alpha,
                   features=list(cf.features), dropped=list(cf.dropped), null=cf.null, per_feature=per_feature,
                   coef=dict(zip(cf.features, cf.coef.tolist())))
    aligned_txt = ""
    p_aligned = None
    if data is not None and data.ids.get("suspect") is not None and len(cf.features):
        # primary score of the works that have features, in the same order as S and C
        score_of = {}
        for role in ("suspect", plan.control_role):
            for i, v in zip(data.ids[role], _primary_score_1d(data, role)):
                score_of[i] = float(v)
        if all(i in score_of for i in s_ids + c_ids):
            Fz = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
            y = np.array([score_of[i] for i in s_ids + c_ids])
            p_aligned, r2, pred = _score_aligned_blind_test(Fz, y, len(s_ids), plan.crossfit_folds,
                                                            plan.seed + 103, plan.seed + 104)
            if ss is not None:  # within strata, like the primary test
                p_aligned = van_elteren_test(pred[:len(s_ids)], pred[len(s_ids):], ss, cs, plan.n_permutations,
                                             plan.seed + 104).p_value
            details.update(p_aligned=p_aligned, r2_aligned=r2)
            aligned_txt = (f"; the primary score predicted from these features alone (cross-fitted ridge, out-of-fold "
                           f"R² {r2:.2f}) is compared between suspects and controls (one-sided p = "
                           f"{_fmt(p_aligned)})")
    # One gate, one test: the two sub-tests are combined by Bonferroni (p = min(1, 2·min(p_a, p_b))), and the
    # gate withholds at plan.gate_alpha — each withholding gate at level a withholds about a of valid audits.
    n_sub = 2 if p_aligned is not None else 1
    p_gate = min(1.0, n_sub * (min(p_omni, p_aligned) if p_aligned is not None else p_omni))
    level = plan.gate_alpha
    details.update(p_value=p_gate, p_gate=p_gate, gate_alpha=level, n_subtests=n_sub,
                   stratified=bool(ss is not None))
    within = (f" within {plan.strata[0]} (each suspect against controls of its own {plan.strata[0]})"
              if ss is not None else "")
    if p_gate <= level:
        why = []
        if p_omni * n_sub <= level:
            why.append(f"they separate the suspects from the controls{within} (cross-fitted out-of-fold AUC "
                       f"{cf.auc:.3f}, p = {_fmt(p_omni)}; largest differences: {top})")
        if p_aligned is not None and p_aligned * n_sub <= level:
            why.append(f"they predict a higher primary score for the suspects than for the controls{within} (p = "
                       f"{_fmt(p_aligned)}, out-of-fold R² {details['r2_aligned']:.2f})")
        return _gate(name, "fail",
                     "Model-free image features alone: " + "; and ".join(why) + f" (combined gate p = "
                     f"{_fmt(p_gate, level)} ≤ {level:g}, the gate's level). The controls differ from the suspects in "
                     "ways that have nothing to do with the model, so they are not a valid null for them.",
                     **details)
    return _gate(name, "pass",
                 f"Model-free image features do not separate the suspects from the controls{within} (cross-fitted "
                 f"out-of-fold AUC {cf.auc:.3f}, p = {_fmt(p_omni)}){aligned_txt}; combined gate p = "
                 f"{_fmt(p_gate, level)} > {level:g}, the gate's level.",
                 **details)


def _absence(plan: "AnalysisPlan", g: GateResult) -> tuple[bool, str | None]:
    if NAME not in plan.gates:
        return False, ("The blind baseline was waived in the analysis plan (stats.gates), so nothing here checks that "
                       "the controls match the suspects in model-free features.")
    if g.details.get("reason") == "too_few":
        # with one suspect (the common "was *my* work used?" question) the check is impossible, not skipped
        return False, ("The blind baseline could not be run: " + g.summary.rstrip(".") + "; nothing checks that the "
                       "controls match the suspects in model-free features, so choose them with particular care.")
    return True, None  # required by the plan and not run: the verdict is withheld


NAME = "blind_baseline"
SPEC = dict(name=NAME, title="Blind baseline (model-free features)", withholds=True, required=True, absence=_absence,
            run=lambda c: blind_baseline_gate(c.features, c.data.ids["suspect"], c.data.ids[c.plan.control_role],
                                              c.plan, c.data, c.plan_strata))
