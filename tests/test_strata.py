"""Stratified analysis (per-artist controls) and the "at least k of n" lower confidence bound (issue 12)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from audit.stats import AnalysisPlan, analyze
from audit.stats.analysis import composition, resolve_strata
from audit.stats.tests import (
    stratified_conformal_pvalues,
    true_discovery_bound,
    van_elteren_test,
)
from audit.types import ScoreTable

NO_BLIND = ("placebo", "positive_control", "power")


# ---------------------------------------------------------------- by hand
def test_van_elteren_p_value_by_hand():
    # stratum a: suspect 3 among controls 1, 2 → within-stratum rank 3 of 3 → weight 3/4
    # stratum b: suspect 1 among controls 2, 3 → rank 1 of 3 → weight 1/4;  T = 1.0
    # exact null: each suspect takes each of its 3 positions with prob. 1/3 → 6 of 9 pairs have T ≥ 1
    r = van_elteren_test([3.0, 1.0], [1.0, 2.0, 2.0, 3.0], ["a", "b"], ["a", "a", "b", "b"], n_resamples=40000,
                         seed=1)
    assert r.statistic == pytest.approx(1.0)
    assert r.p_value == pytest.approx(6 / 9, abs=0.01)
    assert r.n_suspect == 2 and r.n_control == 4 and r.method == "permutation within strata"


def test_van_elteren_leaves_out_strata_without_both_sides_and_refuses_when_none_is_left():
    r = van_elteren_test([3.0, 9.0], [1.0, 2.0], ["a", "z"], ["a", "a"], n_resamples=999)
    assert r.n_suspect == 1 and r.n_control == 2
    with pytest.raises(ValueError, match="no stratum"):
        van_elteren_test([3.0], [1.0], ["a"], ["b"])


def test_stratified_conformal_p_values_by_hand():
    p = stratified_conformal_pvalues([5.0, 5.0, 1.0], [1.0, 6.0, 7.0, 0.0, 0.0, 0.0],
                                     ["a", "b", "c"], ["a", "a", "a", "b", "b", "b"])
    assert p[0] == pytest.approx((1 + 2) / 4)  # own stratum a: two controls ≥ 5 (pooled would give 3/7)
    assert p[1] == pytest.approx(1 / 4)  # stratum b: none ≥ 5 → the floor 1/(n_b + 1)
    assert np.isnan(p[2])  # no control of stratum c: no valid comparison


def _closed_testing_bound(p: np.ndarray, alpha: float) -> int:
    """Brute force: Simes local tests, closed testing, d = n − max{|I| : H_I not rejected}."""
    n = p.size

    def simes_rejects(idx: tuple[int, ...]) -> bool:
        ps = np.sort(p[list(idx)])
        return bool((ps <= np.arange(1, len(idx) + 1) * alpha / len(idx)).any())

    all_sets = [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]
    rejected = {s: simes_rejects(s) for s in all_sets}
    best = 0
    for s in all_sets:
        ss = set(s)
        closed_rejects = all(rejected[j] for j in all_sets if ss <= set(j))
        if not closed_rejects:
            best = max(best, len(s))
    return n - best


def test_true_discovery_bound_by_hand_and_against_brute_force_closed_testing():
    assert true_discovery_bound(np.array([0.001, 0.002, 0.5, 0.9]), 0.05) == 2
    assert true_discovery_bound(np.full(10, 0.5), 0.05) == 0
    assert true_discovery_bound(np.full(10, 0.001), 0.05) == 10
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        p = np.where(rng.random(n) < 0.5, rng.random(n) * 0.02, rng.random(n))
        assert true_discovery_bound(p, 0.05) == _closed_testing_bound(p, 0.05), p


def test_true_discovery_bound_covers_the_true_count():
    """30 suspects, 6 of them members (large effect), 200 controls: the bound may not exceed 6 in ≥ 90% of draws
    (nominal 95%; the full study is scripts/strata_study.py)."""
    from audit.stats.tests import conformal_pvalues

    rng = np.random.default_rng(1)
    over, bounds = 0, []
    for _ in range(150):
        c = rng.normal(size=200)
        s = np.r_[rng.normal(3.0, 1, 6), rng.normal(size=24)]
        k = true_discovery_bound(conformal_pvalues(s, c), 0.05)
        over += k > 6
        bounds.append(k)
    assert over / 150 <= 0.10
    assert np.mean(bounds) >= 1.0  # and it is informative


# ---------------------------------------------------------------- confounded artists
def _confounded(member_shift: float, seed: int = 0, n_control: int = 40) -> tuple[ScoreTable, pd.DataFrame]:
    """Controls of 4 artists whose scores differ by artist; the 20 suspects are works of the highest-scoring
    artist ('waves'), shifted by ``member_shift`` within that artist (0 = not members)."""
    rng = np.random.default_rng(seed)
    mus = {"grid": -0.8, "stripes": -0.3, "circles": 0.2, "waves": 0.8}
    rows, imgs = [], []

    def add(role, artist, i, score):
        iid = f"{role}-{artist}-{i:04d}".ljust(64, "0")
        rows.append(dict(image_id=iid, role=role, attack="loss", attack_params_hash="p", target_fingerprint="fp",
                         seed=0, score=float(score)))
        imgs.append(dict(image_id=iid, role=role, artist=artist))

    for a, mu in mus.items():
        for i in range(n_control):
            add("control", a, i, mu + rng.normal(0, 0.5))
    for i in range(20):
        add("suspect", "waves", i, mus["waves"] + member_shift + rng.normal(0, 0.5))
    return ScoreTable(pd.DataFrame(rows)), pd.DataFrame(imgs)


def test_stratified_plan_removes_the_artist_confound_and_keeps_real_membership():
    pooled = AnalysisPlan(n_permutations=999, n_bootstrap=50, n_placebo=100, gates=NO_BLIND, auto_strata=False)
    strat = AnalysisPlan(n_permutations=999, n_bootstrap=50, n_placebo=100, gates=NO_BLIND, strata=["artist"])  # type: ignore[arg-type]
    assert strat.test == "van_elteren"
    table, imgs = _confounded(0.0)
    r_pool, r_strat = analyze(table, imgs, pooled), analyze(table, imgs, strat)
    # pooled: the raw test "convicts", and Storey's count says most suspects were trained on ...
    assert r_pool.verdict.p_value < 1e-4 and r_pool.attack("loss").storey.n_members >= 10
    # ... but the placebo's leave-one-artist-out check sees the structure and withholds the verdict
    assert r_pool.verdict.decision == "withheld" and r_pool.verdict.failed_gates == ["placebo"]
    # stratified: consistent with no training, nobody named
    assert r_strat.verdict.decision == "fail_to_reject"
    assert r_strat.attack("loss").n_flagged_holm == 0 and r_strat.attack("loss").members_lower_bound == 0
    assert r_strat.attack("loss").storey.n_members <= 5
    assert "own artist" in r_strat.verdict.sentence
    # real members of 'waves' are still detected within the stratum; with 150 controls per artist the per-work
    # p-values (floor 1/151) are small enough for the "at least k" bound to count some of them
    t_mem, i_mem = _confounded(0.8, seed=1, n_control=150)
    r_mem = analyze(t_mem, i_mem, strat)
    assert r_mem.verdict.decision == "reject_h0"
    assert r_mem.attack("loss").members_lower_bound >= 1
    comp = {r["stratum"]: r for r in r_mem.composition["rows"]}
    assert comp["waves"]["suspect"] == 20 and comp["grid"]["control"] == 150 and r_mem.composition["stratified"]


def test_resolve_strata_defaults_to_artist_only_when_every_suspect_artist_has_controls():
    plan = AnalysisPlan(n_permutations=99)
    works = [{"role": "suspect", "artist": "A"}, {"role": "control", "artist": "A"}, {"role": "control", "artist": "B"}]
    p2, why = resolve_strata(plan, works)
    assert p2.strata == ("artist",) and p2.test == "van_elteren" and "Stratified" in why
    assert p2.sha256() != plan.sha256()  # the recorded plan says so
    p3, why = resolve_strata(plan, works + [{"role": "suspect", "artist": "C"}])
    assert p3.strata is None and "'C'" in why
    p4, _ = resolve_strata(AnalysisPlan(auto_strata=False), works)
    assert p4.strata is None
    p5, why = resolve_strata(plan, [{"role": "suspect"}, {"role": "control"}])
    assert p5.strata is None and "no artist column" in why


def test_composition_table_and_a_stratified_plan_without_the_column_is_refused():
    table, imgs = _confounded(0.0)
    comp = composition(imgs, AnalysisPlan())
    assert comp["column"] == "artist" and not comp["stratified"] and len(comp["rows"]) == 4
    with pytest.raises(ValueError, match="no such column"):
        analyze(table, imgs.drop(columns="artist"), AnalysisPlan(strata=["artist"], gates=NO_BLIND))  # type: ignore[arg-type]


def test_sensitivity_table_shows_pooled_vs_stratified_and_each_artist_left_out():
    table, imgs = _confounded(0.0)
    res = analyze(table, imgs, AnalysisPlan(n_permutations=499, n_bootstrap=50, n_placebo=50, gates=NO_BLIND,
                                            strata=["artist"]))  # type: ignore[arg-type]
    rows = {r["variant"]: r for r in res.sensitivity}
    assert rows["as planned"]["p_value"] == pytest.approx(res.verdict.p_value, abs=0.02)  # fewer resamples
    assert rows["pooled controls"]["p_value"] < 1e-4 and rows["pooled controls"]["significant"]["0.001"]
    assert not rows["as planned"]["significant"]["0.05"]
    assert "without artist grid" in rows
    assert "without artist waves" not in rows  # every suspect is by 'waves': nothing left to compare
    assert rows["without artist grid"]["n_control"] == 40  # within strata only 'waves' controls count
    pooled = analyze(table, imgs, AnalysisPlan(n_permutations=499, n_bootstrap=50, n_placebo=50, gates=NO_BLIND,
                                               auto_strata=False))
    prow = {r["variant"]: r for r in pooled.sensitivity}
    assert prow["without artist grid"]["n_control"] == 120 and prow["within artist strata"]["p_value"] > 0.05
