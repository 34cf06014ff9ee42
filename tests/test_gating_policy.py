"""Issue 20: gates that do not withhold valid verdicts by chance, gate p-values from exactly the primary test,
within-stratum statistics, difficulty adjustment, one closed-testing procedure for the bound and per-work claims."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.stats import AnalysisPlan, analyze
from audit.stats import gates as G
from audit.stats.adjust import difficulty_adjust
from audit.stats.tests import crossfit_test, within_strata_auc
from audit.types import ScoreTable


def _table(S: np.ndarray, C: np.ndarray, names=("loss",), strata_s=None, strata_c=None, extra=None):
    rows, imgs = [], []
    S, C = np.atleast_2d(S.T).T if S.ndim == 1 else S, np.atleast_2d(C.T).T if C.ndim == 1 else C
    for role, X, st in (("suspect", S, strata_s), ("control", C, strata_c)):
        for i, x in enumerate(X):
            iid = f"{role[0]}{i:05d}".ljust(64, "0")
            for j, nm in enumerate(names):
                rows.append(dict(image_id=iid, role=role, attack=nm, attack_params_hash="p", target_fingerprint="fp",
                                 seed=0, score=float(x[j])))
            imgs.append(dict(image_id=iid, role=role, artist=None if st is None else st[i]))
    return ScoreTable(pd.DataFrame(rows)), pd.DataFrame(imgs)


def _features(images: pd.DataFrame, rng, shift_col=None, shift=0.0, d=4):
    F = rng.normal(size=(len(images), d))
    if shift_col is not None:
        F[(images["role"] == "suspect").to_numpy(), shift_col] += shift
    df = pd.DataFrame(F, columns=[f"px_f{j}" for j in range(d)])
    df.insert(0, "image_id", images["image_id"].to_numpy())
    return df, F


# ------------------------------------------------------------------------- placebo: a self-test, never withholding
@pytest.mark.parametrize("seed", range(6))
def test_placebo_never_withholds_a_valid_crossfitted_null(seed):
    """40 non-member suspects vs 273 controls, a feature set: the landed check withheld 66/1000-type outcomes by
    chance (one shared reference null); the self-test is reported, and no valid audit is withheld by it."""
    rng = np.random.default_rng(seed)
    table, imgs = _table(rng.normal(size=(40, 3)), rng.normal(size=(273, 3)), names=("loss", "pia", "pian"))
    plan = AnalysisPlan(features=("loss", "pia", "pian"), crossfit_permutations=99, n_placebo=300, n_bootstrap=20,
                        gates=("placebo",), auto_strata=False, seed=seed)
    res = analyze(table, imgs, plan)
    g = res.gate("placebo")
    assert g.status == "pass" and g.details["self_test_withholds"] is False
    assert "placebo" not in res.verdict.failed_gates
    assert g.details["at_alpha"]["n"] == 300  # it still ran and reports its rate


# ------------------------------------------------------------------------- gate p-values = the primary test's
@pytest.mark.parametrize("test,strata", [("mann_whitney", False), ("permutation", False), ("van_elteren", True)])
def test_gate_pvalues_are_exactly_the_primary_tests(test, strata):
    rng = np.random.default_rng(1)
    S = np.round(rng.normal(0.3, 1, (25, 12)), 1)  # rounded: ties, so the rank test uses permutations
    C = np.round(rng.normal(0, 1, (25, 40)), 1)
    gs = np.array(["a", "b", "c"] * 4)
    gc = np.array(["a", "b", "c", "d"] * 10)
    plan = AnalysisPlan(test=test if test != "van_elteren" else "auto", strata=("artist",) if strata else None,
                        n_permutations=499, seed=7)
    batch = G._batch_pvalues(plan, S, C, None, np.broadcast_to(gs, S.shape) if strata else None,
                             np.broadcast_to(gc, C.shape) if strata else None)
    st = {}
    for r in range(S.shape[0]):
        s_ids = [f"s{r}-{i}" for i in range(12)]
        c_ids = [f"c{r}-{i}" for i in range(40)]
        if strata:
            st = {**dict(zip(s_ids, gs)), **dict(zip(c_ids, gc))}
        t, _ = G.run_primary(plan, S[r], C[r], s_ids=s_ids, c_ids=c_ids, strata=st or None)
        assert batch[r] == pytest.approx(t.p_value, abs=0, rel=1e-12), (r, batch[r], t.p_value)


# ------------------------------------------------------------------------- blind baseline: one test at the gate level
def test_blind_baseline_rarely_withholds_a_randomised_true_positive_design():
    """Valid controls, half the suspects members: the landed gate (two sub-tests, each at α = 0.05) withheld about
    one audit in ten; the combined test at the gate level (0.01) withholds about one in a hundred."""
    withheld = 0
    for rep in range(40):
        rng = np.random.default_rng(100 + rep)
        n_s, n_c = 10, 85
        f0 = rng.normal(size=n_s + n_c)
        score = 0.8 * f0 + 0.8 * rng.normal(size=n_s + n_c)
        score[: n_s // 2] += 1.0
        table, imgs = _table(score[:n_s], score[n_s:])
        feats, F = _features(imgs, rng)
        feats["px_f0"] = f0
        # the default plan of audit-run: difficulty-adjusted scores, gates at 0.01
        plan = AnalysisPlan(crossfit_permutations=99, n_permutations=499, n_bootstrap=20, gates=("blind_baseline",),
                            auto_strata=False, seed=rep, adjust="features")
        g = analyze(table, imgs, plan, feats).gate("blind_baseline")
        assert g.details["gate_alpha"] == 0.01 and g.details["n_subtests"] == 2
        withheld += g.status == "fail"
    assert withheld <= 2


def test_blind_baseline_still_catches_a_shift_that_drives_the_score():
    rng = np.random.default_rng(3)
    n_s, n_c = 30, 300
    f0 = rng.normal(size=n_s + n_c)
    f0[:n_s] += 1.0  # suspects brighter / busier: a model-free difference that moves the score
    score = 0.9 * f0 + 0.4 * rng.normal(size=n_s + n_c)
    table, imgs = _table(score[:n_s], score[n_s:])
    feats, _ = _features(imgs, rng)
    feats["px_f0"] = f0
    plan = AnalysisPlan(crossfit_permutations=199, n_bootstrap=20, gates=("blind_baseline",), auto_strata=False)
    res = analyze(table, imgs, plan, feats)
    assert res.gate("blind_baseline").status == "fail" and res.verdict.decision == "withheld"


def test_blind_baseline_of_a_stratified_plan_is_not_moved_by_the_artist_mix():
    """Suspects 25% per artist, controls 10–40%: features that only tell artists apart separate a pooled
    classifier, but within each artist nothing differs — the stratified gate compares within artists."""
    rng = np.random.default_rng(4)
    artists = np.array(list("abcd"))
    gs = np.repeat(artists, 8)
    gc = np.repeat(artists, [20, 40, 80, 100])
    mu = {"a": -1.5, "b": -0.5, "c": 0.5, "d": 1.5}
    table, imgs = _table(rng.normal(size=gs.size), rng.normal(size=gc.size), strata_s=gs, strata_c=gc)
    art = imgs["artist"].to_numpy()
    feats, F = _features(imgs, rng)
    feats["px_f0"] = [mu[a] + rng.normal(0, 0.3) for a in art]  # the artist's palette
    plan = AnalysisPlan(crossfit_permutations=199, n_permutations=999, n_bootstrap=20, gates=("blind_baseline",),
                        strata=("artist",))
    g = analyze(table, imgs, plan, feats).gate("blind_baseline")
    assert g.details["stratified"] and g.status == "pass", g.summary


def test_within_stratum_auc_has_null_mean_one_half_whatever_the_mix():
    rng = np.random.default_rng(5)
    codes = np.repeat([0, 1, 2], [30, 60, 90])
    base = codes * 3.0  # strata far apart
    vals = []
    for _ in range(300):
        y = np.zeros(codes.size, int)
        for g, k in ((0, 15), (1, 5), (2, 3)):  # suspects concentrated in the low stratum
            y[rng.choice(np.flatnonzero(codes == g), k, replace=False)] = 1
        vals.append(within_strata_auc((base + rng.normal(size=codes.size))[None], y[None], codes)[0])
    assert abs(np.mean(vals) - 0.5) < 0.02
    # the pooled AUC of the same draws is far from 1/2: this is what the within-stratum statistic removes
    y = np.zeros(codes.size, int)
    y[:15] = 1
    assert within_strata_auc((base + rng.normal(size=codes.size))[None], y[None], None)[0] < 0.2


def test_stratified_crossfit_statistic_is_the_within_stratum_auc():
    rng = np.random.default_rng(6)
    gs, gc = ["a"] * 10 + ["b"] * 10, ["a"] * 40 + ["b"] * 60
    S, C = rng.normal(0.5, 1, (20, 2)), rng.normal(0, 1, (100, 2))
    r = crossfit_test(S, C, 99, 5, 0, suspect_strata=gs, control_strata=gc)
    assert abs(np.mean(r.null) - 0.5) < 0.03 and r.auc > 0.55


# ------------------------------------------------------------------------- difficulty adjustment
def test_difficulty_adjustment_does_not_look_at_roles_and_removes_a_feature_driven_shift():
    rng = np.random.default_rng(7)
    n_s, n_c = 30, 300
    f0 = rng.normal(size=n_s + n_c)
    f0[:n_s] += 0.8  # the confound: no member at all
    score = 0.8 * f0 + 0.5 * rng.normal(size=n_s + n_c)
    table, imgs = _table(score[:n_s], score[n_s:])
    feats, _ = _features(imgs, rng)
    feats["px_f0"] = f0
    adj, rec, _ = difficulty_adjust(table, feats)
    # the same works under other roles get exactly the same adjusted scores
    swapped = table.df.copy()
    swapped["role"] = np.where(swapped["role"] == "suspect", "control", "suspect")
    adj2, _, _ = difficulty_adjust(ScoreTable(swapped), feats)
    a = adj.df.set_index("image_id")["score"]
    b = adj2.df.set_index("image_id")["score"]
    np.testing.assert_array_equal(a.loc[b.index].to_numpy(), b.to_numpy())
    assert rec["attacks"]["loss"]["r2_out_of_fold"] > 0.5
    raw = analyze(table, imgs, AnalysisPlan(gates=(), n_bootstrap=20, auto_strata=False))
    fixed = analyze(table, imgs, AnalysisPlan(gates=(), n_bootstrap=20, auto_strata=False, adjust="features"), feats)
    assert raw.verdict.p_value < 0.01 < fixed.verdict.p_value
    assert fixed.adjustment is not None and "difficulty-adjusted" in " ".join(fixed.notes)


def test_gate_level_follows_the_adjustment_unless_set():
    assert AnalysisPlan(adjust="features").gate_alpha == 0.01
    assert AnalysisPlan().gate_alpha == 0.05 and AnalysisPlan(alpha=0.01).gate_alpha == 0.01  # raw scores: alpha
    assert AnalysisPlan(adjust="features", gate_alpha=0.05).gate_alpha == 0.05
    with pytest.raises(ValueError, match="gate_alpha"):
        AnalysisPlan(gate_alpha=1.5)


def test_difficulty_adjustment_keeps_real_membership():
    rng = np.random.default_rng(8)
    n_s, n_c = 20, 200
    f0 = rng.normal(size=n_s + n_c)
    score = 0.8 * f0 + 0.5 * rng.normal(size=n_s + n_c)
    score[:n_s] += 0.6  # members
    table, imgs = _table(score[:n_s], score[n_s:])
    feats, _ = _features(imgs, rng)
    feats["px_f0"] = f0
    raw = analyze(table, imgs, AnalysisPlan(gates=(), n_bootstrap=20, auto_strata=False))
    fixed = analyze(table, imgs, AnalysisPlan(gates=(), n_bootstrap=20, auto_strata=False, adjust="features"), feats)
    # the difficulty variance is removed, so the membership shift stands out more, not less
    assert fixed.verdict.decision == "reject_h0" and fixed.verdict.p_value <= raw.verdict.p_value
    assert fixed.primary_auc > raw.primary_auc


def test_adjust_without_features_is_a_clear_error():
    table, imgs = _table(np.zeros(5) + 1, np.zeros(20))
    with pytest.raises(ValueError, match="features"):
        analyze(table, imgs, AnalysisPlan(gates=(), adjust="features"), None)


# ------------------------------------------------------------------------- one procedure for bound and per-work claims
def test_named_works_come_from_the_procedure_of_the_bound():
    rng = np.random.default_rng(9)
    table, imgs = _table(rng.normal(3, 1, 16), rng.normal(0, 1, 360))
    res = analyze(table, imgs, AnalysisPlan(gates=(), n_bootstrap=20, auto_strata=False))
    a = res.attack("loss")
    assert a.n_flagged_holm <= a.n_flagged_closed <= a.members_lower_bound
    assert all(w.p_closed is not None for w in a.artworks)
    # the verdict states its resampling (exact here: no ties, no floor)
    assert res.verdict.p_floor is None and not res.verdict.floor_binds


def test_headline_pvalue_says_when_the_permutation_floor_binds():
    rng = np.random.default_rng(10)
    table, imgs = _table(rng.normal(3, 1, (16, 2)), rng.normal(0, 1, (100, 2)), names=("loss", "pia"))
    res = analyze(table, imgs, AnalysisPlan(features=("loss", "pia"), crossfit_permutations=99, gates=(),
                                            n_bootstrap=20, auto_strata=False))
    v = res.verdict
    assert v.n_resamples == 99 and v.p_floor == pytest.approx(0.01) and v.floor_binds


def test_decision_rates_are_measured_from_this_runs_controls():
    rng = np.random.default_rng(11)
    rows = []
    for role, n, mu in (("suspect", 10, 1.0), ("control", 120, 0.0), ("member", 30, 1.0), ("nonmember", 40, 0.0)):
        for i in range(n):
            rows.append(dict(image_id=f"{role}{i}".ljust(64, "0"), role=role, attack="loss", attack_params_hash="p",
                             target_fingerprint="fp", seed=0, score=float(rng.normal(mu, 1))))
    res = analyze(ScoreTable(pd.DataFrame(rows)), None,
                  AnalysisPlan(gates=("placebo", "positive_control", "power"), n_placebo=200, n_power_resamples=200,
                               n_bootstrap=20, auto_strata=False))
    r = res.decision_rates
    assert r["fpr"]["n"] == 200 and r["fpr"]["rate"] <= 0.1
    assert r["fpr_negative_control"]["size"] == 10 and r["power"]["size"] == 10 and r["power"]["rate"] > 0.5
    assert r["note"] is None
