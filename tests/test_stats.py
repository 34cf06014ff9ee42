"""Statistical invariants: validity under the null, power under a clear shift, hand-checked values."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import auc as trapezoid_auc
from sklearn.metrics import roc_auc_score, roc_curve

from audit.stats import (
    AnalysisPlan,
    analyze,
    auc_with_ci,
    benjamini_hochberg,
    conformal_pvalues,
    format_p,
    holm,
    mann_whitney,
    min_controls_for,
    permutation_test,
    roc_points,
    tpr_at_fpr,
)
from audit.stats import metrics as M
from audit.stats import tests as T
from audit.types import ScoreTable


# ---------------------------------------------------------------- conformal p-values and multiplicity
def test_conformal_pvalues_hand_example():
    controls = [0.1, 0.2, 0.3, 0.4]
    # s=0.35: one control (0.4) ≥ it → (1+1)/5; s=0.3: tie counts against the suspect → (1+2)/5;
    # s=1.0: above all → 1/5 (the floor); s=0.0: below all → 5/5.
    p = conformal_pvalues([0.35, 0.3, 1.0, 0.0], controls)
    np.testing.assert_allclose(p, [2 / 5, 3 / 5, 1 / 5, 1.0])


def test_conformal_pvalues_valid_under_null():
    """Exchangeable suspect → P(p ≤ k/(n+1)) = k/(n+1) exactly; check the empirical CDF and P(p ≤ α) ≤ α."""
    rng = np.random.default_rng(1)
    n_control, draws = 19, 4000
    p = np.array([conformal_pvalues(rng.normal(size=1), rng.normal(size=n_control))[0] for _ in range(draws)])
    grid = np.arange(1, n_control + 2) / (n_control + 1)
    ecdf = (p[:, None] <= grid[None, :] + 1e-12).mean(axis=0)
    se = np.sqrt(grid * (1 - grid) / draws)
    assert np.all(np.abs(ecdf - grid) <= 4 * se + 1e-12)
    assert (p <= 0.05).mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / draws)
    # And a conformal p-value for a clear member is at the floor.
    assert conformal_pvalues([10.0], rng.normal(size=n_control))[0] == pytest.approx(1 / (n_control + 1))


def test_holm_and_bh_match_hand_computation_and_fallback():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    rng = np.random.default_rng(0)
    q = np.round(rng.uniform(size=50), 2)  # ties included
    from statsmodels.stats.multitest import multipletests

    for method, fn in (("holm", holm), ("fdr_bh", benjamini_hochberg), ("hommel", T.hommel)):
        for x in (q, rng.uniform(size=30) ** 3, np.array([0.5]), np.array([0.01, 0.01, 0.9])):
            np.testing.assert_allclose(fn(x), multipletests(x, method=method)[1], atol=1e-15)


def test_hommel_names_no_fewer_than_holm_and_never_more_than_the_bound():
    """Per-work claims and the "at least k of n" bound come from one closed-testing procedure."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        m = int(rng.integers(1, 30))
        p = np.where(rng.random(m) < 0.5, rng.random(m) * 0.01, rng.random(m))
        named = int((T.hommel(p) <= 0.05).sum())
        assert (holm(p) <= 0.05).sum() <= named <= T.true_discovery_bound(p, 0.05)


@pytest.mark.parametrize("alpha,n_tests", [(0.05, 40), (0.01, 40), (0.05, 1), (0.1, 7)])
def test_min_controls_for_is_the_boundary_holm_applies(alpha, n_tests):
    n = min_controls_for(alpha, n_tests)
    assert n == pytest.approx(n_tests / alpha - 1, abs=1)
    # n_tests suspects that all beat every control: all flagged with n controls, none with n-1.
    for n_c, expect in ((n, True), (n - 1, False)):
        p = conformal_pvalues(np.full(n_tests, 1e9), np.zeros(n_c))
        assert bool(np.all(holm(p) <= alpha)) is expect
    assert min_controls_for(0.05, 40) == 799  # docs/methodology.md §3: 85 controls are far too few for 40 works


# ---------------------------------------------------------------- set-level tests
def test_set_tests_detect_a_clear_shift():
    rng = np.random.default_rng(0)
    s, c = rng.normal(1, 1, 50), rng.normal(0, 1, 50)
    mw = mann_whitney(s, c)
    pt = permutation_test(s, c, n_resamples=9999, seed=0)
    assert mw.p_value < 0.01 and pt.p_value < 0.01
    assert pt.p_value >= 1 / 10000  # randomized test: never below 1/(n_resamples+1)
    assert mw.alternative == pt.alternative == "greater"
    assert mw.statistic / (50 * 50) == pytest.approx(roc_auc_score(np.r_[np.ones(50), np.zeros(50)], np.r_[s, c]))
    # One-sided: suspects scoring *lower* is no evidence of membership.
    assert mann_whitney(c - 1, s).p_value > 0.5
    assert permutation_test(c - 1, s, n_resamples=999).p_value > 0.5


def test_set_tests_hold_level_under_null():
    rng = np.random.default_rng(123)
    draws, alpha = 200, 0.05
    rej_mw = rej_pt = 0
    for i in range(draws):
        s, c = rng.normal(size=30), rng.normal(size=40)
        rej_mw += mann_whitney(s, c).p_value <= alpha
        rej_pt += permutation_test(s, c, n_resamples=499, seed=i).p_value <= alpha
    assert rej_mw / draws <= 0.08
    assert rej_pt / draws <= 0.08
    # and the test is not trivially conservative (it can reject at all)
    assert rej_mw + rej_pt > 0


def test_permutation_seed_determinism():
    rng = np.random.default_rng(5)
    s, c = rng.normal(0.3, 1, 25), rng.normal(size=25)
    a = permutation_test(s, c, n_resamples=999, seed=7)
    b = permutation_test(s, c, n_resamples=999, seed=7)
    assert a == b


# ---------------------------------------------------------------- effect sizes
def test_auc_ci_covers_half_under_null_and_excludes_it_under_shift():
    rng = np.random.default_rng(2)
    null = auc_with_ci(rng.normal(size=60), rng.normal(size=60), n_boot=1000, seed=0)
    assert null.lo < 0.5 < null.hi
    shift = auc_with_ci(rng.normal(1.5, 1, 60), rng.normal(size=60), n_boot=1000, seed=0)
    assert shift.lo > 0.5 and shift.auc > 0.8
    assert shift.lo <= shift.auc <= shift.hi


def test_auc_interval_is_deterministic_and_does_not_collapse_at_the_boundary():
    rng = np.random.default_rng(3)
    p, n = rng.normal(0.5, 1, 40), rng.normal(size=40)
    assert auc_with_ci(p, n, seed=11) == auc_with_ci(p, n, seed=12)  # no resampling behind it
    perfect = auc_with_ci(np.arange(10) + 100.0, np.arange(50, dtype=float))
    assert perfect.auc == 1.0 and perfect.hi == 1.0 and 0.8 < perfect.lo < 0.99
    worst = auc_with_ci(np.arange(10, dtype=float), np.arange(50, dtype=float) + 100.0)
    assert worst.auc == 0.0 and worst.lo == 0.0 and 0.01 < worst.hi < 0.2


@pytest.mark.parametrize("n_pos,n_neg,true_auc", [(10, 10, 0.91), (10, 50, 0.983)])
def test_auc_interval_covers_at_small_samples(n_pos, n_neg, true_auc):
    """The review's cases: the percentile bootstrap covered 0.887 and 0.763 here; the score interval ≥ 0.93."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    d = np.sqrt(2) * norm.ppf(true_auc)  # binormal, equal variances: AUC = Φ(d/√2)
    R = 400
    hits = 0
    for _ in range(R):
        ci = auc_with_ci(rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg))
        hits += ci.lo <= true_auc <= ci.hi
    assert hits / R >= 0.93


def test_bootstrap_closed_forms_agree_with_sklearn():
    """The vectorised replicates must equal sklearn's estimates, ties included."""
    rng = np.random.default_rng(4)
    for _ in range(30):
        pos = np.round(rng.normal(0.7, 1, rng.integers(3, 40)), 1)
        neg = np.round(rng.normal(0, 1, rng.integers(3, 300)), 1)
        y, s = np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]
        assert M._auc_rows(pos[None], neg[None])[0] == pytest.approx(roc_auc_score(y, s))
        for f in (0.01, 0.05, 0.2):
            assert M._tpr_rows(pos[None], neg[None], f)[0] == pytest.approx(tpr_at_fpr(pos, neg, f, n_boot=1).tpr)


def test_tpr_at_fpr_hand_example():
    pos = [0.9, 0.8, 0.7, 0.3]
    neg = [0.85, 0.6, 0.5, 0.4, 0.35, 0.2, 0.15, 0.1, 0.05, 0.0]
    # FPR ≤ 10% allows one negative above the threshold: threshold 0.7 catches 0.9, 0.8, 0.7 and
    # negative 0.85 → TPR 3/4, FPR 1/10.
    r = tpr_at_fpr(pos, neg, 0.1, n_boot=200)
    assert r.tpr == pytest.approx(0.75)
    assert r.threshold == pytest.approx(0.7)
    assert r.n_neg_above_threshold == 1 and r.n_neg == 10 and r.achievable
    assert r.lo <= r.tpr <= r.hi
    # FPR ≤ 5% allows no negative: only 0.9 lies above 0.85 → TPR 1/4, and 10 < 1/0.05 negatives.
    r = tpr_at_fpr(pos, neg, 0.05, n_boot=200)
    assert r.tpr == pytest.approx(0.25)
    assert r.n_neg_above_threshold == 0 and not r.achievable


def test_roc_points_match_sklearn():
    rng = np.random.default_rng(6)
    pos, neg = rng.normal(1, 1, 20), rng.normal(size=30)
    r = roc_points(pos, neg)
    f, t, _ = roc_curve(np.r_[np.ones(20), np.zeros(30)], np.r_[pos, neg], drop_intermediate=False)
    np.testing.assert_array_equal(r.fpr, f)
    np.testing.assert_array_equal(r.tpr, t)
    assert r.auc == pytest.approx(trapezoid_auc(f, t))


# ---------------------------------------------------------------- analyze()
def make_table(
    shift: float,
    n_suspect: int = 40,
    n_control: int = 60,
    n_member: int = 0,
    n_nonmember: int = 0,
    attacks: tuple[str, ...] = ("loss",),
    seed: int = 0,
) -> ScoreTable:
    """Synthetic ScoreTable: suspects and members shifted by ``shift``, controls and nonmembers N(0, 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for attack in attacks:
        for role, n, mu in (
            ("suspect", n_suspect, shift),
            ("control", n_control, 0.0),
            ("member", n_member, max(shift, 2.0)),
            ("nonmember", n_nonmember, 0.0),
        ):
            for i in range(n):
                rows.append(
                    dict(
                        image_id=f"{role}-{i:05d}".ljust(64, "0"),
                        role=role,
                        attack=attack,
                        attack_params_hash="p0",
                        target_fingerprint="fp0",
                        seed=0,
                        score=float(rng.normal(mu, 1.0)),
                    )
                )
    return ScoreTable(pd.DataFrame(rows))


# These tables have no model-free image features, so the blind baseline is waived explicitly (it would
# otherwise withhold the verdict: tests/test_gates.py checks that).
NO_BLIND = ("placebo", "positive_control", "power")
FAST = AnalysisPlan(n_permutations=999, n_bootstrap=200, gates=NO_BLIND)


def test_analyze_rejects_for_shifted_suspects():
    res = analyze(make_table(1.0), None, FAST)
    assert res.verdict.decision == "reject_h0"
    assert res.verdict.p_value < 0.01
    s = res.verdict.sentence
    assert "inconsistent with the hypothesis" in s and "'loss'" in s and "Mann–Whitney" in s
    assert "prove" not in s.lower()
    a = res.attack("loss")
    assert a.primary and set(a.set_tests) == {"mann_whitney", "permutation"}
    assert a.auc_suspect_control.lo > 0.5
    assert len(a.artworks) == 40
    ps = [w.p_conformal for w in a.artworks]
    assert ps == sorted(ps)  # most member-like first
    assert all(w.p_holm >= w.p_conformal and w.p_bh >= w.p_conformal for w in a.artworks)


def test_analyze_fails_to_reject_for_null_suspects():
    res = analyze(make_table(0.0, seed=4), None, FAST)
    assert res.verdict.decision == "fail_to_reject"
    assert res.verdict.p_value > FAST.alpha
    assert "consistent with the hypothesis" in res.verdict.sentence
    assert "not proof of absence" in res.verdict.sentence
    assert res.attack("loss").n_flagged_holm == 0


def test_analyze_permutation_plan_uses_permutation_p():
    plan = AnalysisPlan(test="permutation", n_permutations=999, n_bootstrap=100)
    res = analyze(make_table(1.0), None, plan)
    assert res.verdict.p_value == res.attack("loss").set_tests["permutation"].p_value
    assert "permutation" in res.verdict.sentence


def test_analyze_notes_too_few_controls_and_tpr_limits():
    res = analyze(make_table(1.0, n_control=60, n_member=30, n_nonmember=200), None, FAST)
    need = min_controls_for(0.05, 40)
    assert res.attack("loss").min_controls_per_artwork == need == 799
    assert any("60 controls" in n and str(need) in n for n in res.notes)
    # 200 nonmembers suffice for 1% FPR but not for 0.1%.
    tprs = {t.fpr: t for t in res.attack("loss").tpr_member_nonmember}
    assert tprs[0.01].achievable and not tprs[0.001].achievable
    assert any("0.1% FPR" in n and "nonmembers" in n for n in res.notes)
    # Enough controls for a per-artwork claim over 3 suspects → no such note, and flags are possible.
    res = analyze(make_table(4.0, n_suspect=3, n_control=60), None, FAST)
    assert not any("per-artwork claim" in n for n in res.notes)
    assert res.attack("loss").n_flagged_holm == 3


def test_analyze_without_controls_is_not_tested():
    res = analyze(make_table(1.0, n_control=0, n_member=20, n_nonmember=20), None, FAST)
    assert res.verdict.decision == "not_tested"
    assert res.verdict.p_value is None
    assert "no control works" in res.verdict.sentence
    assert res.notes[0] == res.verdict.sentence
    assert not res.verdict.confirmatory  # no plan hash recorded before scoring
    assert res.attack("loss").auc_member_nonmember is not None  # the benchmark still runs


def test_analyze_primary_attack_and_exploratory_labels():
    table = make_table(1.0, attacks=("loss", "pia"))
    res = analyze(table, None, AnalysisPlan(primary_attack="pia", n_permutations=99, n_bootstrap=50))
    assert res.primary_attack == "pia" and res.verdict.attack == "pia"
    assert [a.primary for a in res.attacks] == [False, True]
    assert any("exploratory" in n for n in res.notes)
    with pytest.raises(ValueError, match="not in the ScoreTable"):
        analyze(table, None, AnalysisPlan(primary_attack="nope"))


def test_analyze_is_deterministic_and_json_serialisable():
    table = make_table(0.5, n_member=20, n_nonmember=50)
    a, b = analyze(table, None, FAST), analyze(table, None, FAST)
    assert a.to_dict() == b.to_dict()
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert d["verdict"]["decision"] == a.verdict.decision
    assert d["plan"]["fpr_levels"] == [0.01, 0.001]
    assert d["attacks"][0]["set_tests"]["mann_whitney"]["p_value"] == pytest.approx(a.verdict.p_value)


def test_analyze_averages_seeds_and_rejects_ambiguous_tables():
    base = make_table(1.0).df
    twice = pd.concat([base, base.assign(seed=1, score=base["score"] + 0.2)], ignore_index=True)
    res = analyze(ScoreTable(twice), None, FAST)
    assert res.attack("loss").n_suspect == 40  # one observation per work, not per seed
    assert any("mean over 2 seeds" in n for n in res.notes)
    mixed = pd.concat([base, base.assign(target_fingerprint="fp1")], ignore_index=True)
    with pytest.raises(ValueError, match="target_fingerprint"):
        analyze(ScoreTable(mixed), None, FAST)
    with pytest.raises(ValueError, match="NaN"):
        analyze(ScoreTable(base.assign(score=np.where(base.index == 0, np.nan, base["score"]))), None, FAST)
    images = base[["image_id", "role"]].copy()
    images.loc[0, "role"] = "control"
    with pytest.raises(ValueError, match="different role"):
        analyze(ScoreTable(base), images, FAST)


def test_format_p_never_rounds_across_alpha():
    assert format_p(0.0012) == "0.0012"
    assert format_p(0.41) == "0.41"
    # Rejection is p ≤ α, so "0.05" may stand for 0.049996 but not for 0.050004.
    assert format_p(0.049996, 0.05) == "0.05"
    assert format_p(0.050004) == "0.05"
    assert format_p(0.050004, 0.05) == "0.050004"
    assert format_p(None) == "–"


def test_plan_validation():
    with pytest.raises(ValueError):
        AnalysisPlan(alpha=1.5)
    with pytest.raises(ValueError):
        AnalysisPlan(test="t_test")  # type: ignore[arg-type]
    assert AnalysisPlan(fpr_levels=[0.01]).fpr_levels == (0.01,)  # type: ignore[arg-type]


# ---------------------------------------------------------------- calibration under H0 (Kolmogorov–Smirnov)
def test_mann_whitney_pvalues_are_uniform_under_h0_and_ks_can_tell():
    """2000 null draws: MWU p-values pass a KS test for uniformity; under a shift the same check fails."""
    from scipy.stats import kstest

    rng = np.random.default_rng(11)
    s, c = rng.normal(size=(2000, 20)), rng.normal(size=(2000, 60))
    p = T.mann_whitney_batch(s, c)
    assert kstest(p, "uniform").pvalue > 0.01
    assert abs((p <= 0.05).mean() - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 2000)
    # the batch and the single-call versions agree
    assert p[0] == pytest.approx(mann_whitney(s[0], c[0]).p_value)
    # The KS check has power: a 0.3-sd shift makes the p-values visibly non-uniform.
    assert kstest(T.mann_whitney_batch(s + 0.3, c), "uniform").pvalue < 1e-6


def test_permutation_pvalues_are_uniform_under_h0():
    from scipy.stats import kstest

    rng = np.random.default_rng(12)
    s, c = rng.standard_t(3, size=(1000, 15)), rng.standard_t(3, size=(1000, 45))
    p = T.permutation_pvalues_batch(s, c, n_resamples=999, seed=1)
    assert p.min() >= 1 / 1000  # +1 correction
    assert kstest(p, "uniform").pvalue > 0.01
    # Same p-value as scipy's permutation_test up to Monte-Carlo error.
    ref = permutation_test(s[0], c[0], n_resamples=9999, seed=0).p_value
    assert T.permutation_pvalues_batch(s[:1], c[0], n_resamples=9999, seed=3)[0] == pytest.approx(ref, abs=0.02)


def test_crossfit_permutation_test_is_exactly_valid_under_exchangeability():
    """Heavy-tailed, differently scaled features, 8 suspects vs 28 controls, 3 folds, 19 permutations: the
    observed out-of-fold AUC's rank among the permuted ones is uniform, so the randomised p-value
    p − U/(B+1) is exactly U(0, 1) (KS), and P(p ≤ α) ≤ α at every grid level."""
    from scipy.stats import kstest

    rng = np.random.default_rng(13)
    B, draws = 19, 120
    p = np.empty(draws)
    for i in range(draws):
        X = rng.standard_t(2, size=(36, 3)) * np.array([1.0, 10.0, 0.1])
        p[i] = T.crossfit_test(X[:8], X[8:], n_permutations=B, folds=3, seed=i).test.p_value
    assert set(np.round(p * (B + 1)).astype(int)) <= set(range(1, B + 2))
    u = p - rng.uniform(size=draws) / (B + 1)
    assert kstest(u, "uniform").pvalue > 0.01
    for k in (2, 5):  # α = 0.1, 0.25
        assert (p <= k / (B + 1)).mean() <= k / (B + 1) + 3 * np.sqrt(k / (B + 1) / draws)


def test_crossfit_test_detects_a_known_shift_and_learns_its_direction():
    rng = np.random.default_rng(14)
    X = rng.normal(size=(80, 3))
    X[:20, 1] += 1.2  # suspects differ in feature 1 only
    r = T.crossfit_test(X[:20], X[20:], n_permutations=199, folds=5, seed=0, feature_names=["a", "b", "c"])
    assert r.test.p_value <= 0.01 and r.auc > 0.7
    assert r.test.p_value >= 1 / 200  # +1 correction
    assert np.argmax(r.coef) == 1 and r.coef[1] > 0
    assert r.features == ("a", "b", "c") and len(r.null) == 199
    # Deterministic for a seed; a constant column is dropped, not fatal.
    again = T.crossfit_test(X[:20], X[20:], n_permutations=199, folds=5, seed=0, feature_names=["a", "b", "c"])
    assert again.test == r.test
    Xc = np.c_[X, np.ones(80)]
    assert T.crossfit_test(Xc[:20], Xc[20:], 49, 5, 0, feature_names=list("abcd")).dropped == ("d",)


def test_power_on_a_known_shift_matches_noether():
    """Simulated MWU power at a 0.8-sd shift agrees with Noether's approximation, and the n it solves for
    reaches the target power."""
    from scipy.stats import norm

    rng = np.random.default_rng(15)
    shift, n_c, alpha = 0.8, 100, 0.05
    auc = float(norm.cdf(shift / np.sqrt(2)))  # true AUC of N(δ,1) vs N(0,1)
    n = T.noether_n(auc, n_c, alpha, 0.8)
    assert n is not None and 5 < n < 40
    sim = (T.mann_whitney_batch(rng.normal(shift, 1, (2000, n)), rng.normal(size=(2000, n_c))) <= alpha).mean()
    assert sim == pytest.approx(0.8, abs=0.06)
    assert T.noether_power(auc, n, n_c, alpha) >= 0.8 > T.noether_power(auc, n - 1, n_c, alpha)
    for m in (10, 40):
        sim = (T.mann_whitney_batch(rng.normal(shift, 1, (2000, m)), rng.normal(size=(2000, n_c))) <= alpha).mean()
        assert sim == pytest.approx(T.noether_power(auc, m, n_c, alpha), abs=0.07)
    assert T.noether_n(0.5, 100, 0.05) is None  # no effect, no n
    assert T.noether_n(0.55, 20, 0.05) is None  # too few controls for any number of suspects
    assert T.noether_controls_needed(0.55, 0.05) > 20


def test_storey_estimate_on_a_known_mixture():
    rng = np.random.default_rng(16)
    controls = rng.normal(size=600)
    mixed = np.r_[rng.normal(4.0, 1, 30), rng.normal(size=70)]  # 30 members among 100 suspects
    est = T.storey_estimate(mixed, controls, lam=0.5, n_boot=300, seed=0)
    assert 20 <= est.n_members <= 40 and est.lo <= 30 <= est.hi
    assert est.pi0 == pytest.approx(1 - est.n_members / 100)
    null = T.storey_estimate(rng.normal(size=100), controls, n_boot=300, seed=0)
    assert null.n_members <= 15 and null.lo == 0.0
    assert T.storey_pi0([0.1, 0.2, 0.6, 0.9], lam=0.5) == pytest.approx(2 / (4 * 0.5))
    assert T.storey_pi0([0.9, 0.95, 0.99, 0.7], lam=0.5) == 1.0  # capped


def test_clopper_pearson_hand_values():
    lo, hi = T.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = T.clopper_pearson(50, 1000)
    assert lo < 0.05 < hi and hi - lo < 0.03


# ---------------------------------------------------------------- the analysis plan
def test_plan_hash_auto_test_and_feature_set_validation():
    a, b = AnalysisPlan(), AnalysisPlan()
    assert a.sha256() == b.sha256() and len(a.sha256()) == 64
    assert AnalysisPlan(alpha=0.01).sha256() != a.sha256()
    assert a.test == "mann_whitney"
    fs = AnalysisPlan(features=["loss", "pia"])  # type: ignore[arg-type]
    assert fs.test == "crossfit" and fs.features == ("loss", "pia")
    assert "feature set" in fs.primary_label
    json.dumps(fs.to_dict())
    with pytest.raises(ValueError, match="at least 2"):
        AnalysisPlan(features=["loss"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crossfit"):
        AnalysisPlan(features=["loss", "pia"], test="mann_whitney")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="feature set"):
        AnalysisPlan(test="crossfit")
    with pytest.raises(ValueError, match="not in the feature set"):
        AnalysisPlan(features=["loss", "pia"], primary_attack="pian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="control_role"):
        AnalysisPlan(control_role="suspect")
    with pytest.raises(ValueError, match="unknown gates"):
        AnalysisPlan(gates=["blind"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alternative"):
        AnalysisPlan(alternative="less")


def test_two_sided_plan_detects_lower_scores():
    table = make_table(-1.0)
    assert analyze(table, None, FAST).verdict.decision == "fail_to_reject"
    res = analyze(table, None, AnalysisPlan(alternative="two-sided", n_permutations=999, n_bootstrap=200,
                                            gates=NO_BLIND))
    # rejected, but in the direction opposite to membership: never worded as evidence of it
    assert res.verdict.decision == "reject_lower" and "two-sided" in res.verdict.sentence
    assert "not evidence" in res.verdict.sentence and "inconsistent with the hypothesis" not in res.verdict.sentence
    up = analyze(make_table(1.0), None, AnalysisPlan(alternative="two-sided", n_permutations=999, n_bootstrap=200,
                                                      gates=NO_BLIND))
    assert up.verdict.decision == "reject_h0" and "scoring higher" in up.verdict.sentence
