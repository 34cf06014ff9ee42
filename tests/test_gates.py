"""Validity gates: the blind baseline, placebo nulls, the positive control and the power analysis each
fire when their assumption is violated and stay quiet when it holds; a failed gate withholds the verdict."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audit.groundtruth.synthetic import render_artwork
from audit.stats import AnalysisPlan, analyze
from audit.stats import gates as G
from audit.stats.blind import blind_features, pixel_features
from audit.types import EvidenceSet, ImageRecord, ScoreTable

ARTISTS = ("stripes", "circles", "grid", "waves")
# Small resampling counts: these tests check the gates' logic, not Monte-Carlo precision.
PLAN = AnalysisPlan(n_permutations=999, n_bootstrap=100, crossfit_permutations=199, n_placebo=400,
                    n_power_resamples=300)
# The same plan with the blind baseline waived, for score tables that come without image features.
NO_BLIND = AnalysisPlan(**{**PLAN.to_dict(), "gates": ["placebo", "positive_control", "power"]})


def _evidence(works: list[tuple[str, str, int]], size: int = 16) -> EvidenceSet:
    """EvidenceSet of synthetic artworks: (role, artist, index) each."""
    px = np.stack([render_artwork(a, i, size=size, seed=3) for _, a, i in works])
    records = [ImageRecord(image_id=f"{role}-{a}-{i:05d}-".ljust(64, "0"), path=f"mem://{a}/{i}.png", role=role,
                           caption=f"a painting in the style of {a}", artist=a, width=size, height=size,
                           format="PNG") for role, a, i in works]
    return EvidenceSet(records, torch.from_numpy(px).permute(0, 3, 1, 2).contiguous())


def _works(role: str, artists: tuple[str, ...], n_per: int, offset: int) -> list[tuple[str, str, int]]:
    return [(role, a, offset + k) for a in artists for k in range(n_per)]


def _scores(ev: EvidenceSet, shift: dict[str, float], seed: int = 0, attacks=("loss",)) -> ScoreTable:
    """A score per image: N(shift[role], 1)."""
    rng = np.random.default_rng(seed)
    rows = [dict(image_id=r.image_id, role=r.role, attack=a, attack_params_hash="p", target_fingerprint="fp",
                 seed=0, score=float(rng.normal(shift.get(r.role, 0.0), 1.0))) for a in attacks for r in ev.records]
    return ScoreTable(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def matched_and_shifted():
    """Suspects from all four artists; controls either from all four (matched) or from one other artist."""
    suspects = _works("suspect", ARTISTS, 8, 0)
    matched = _evidence(suspects + _works("control", ARTISTS, 20, 100))
    shifted = _evidence(suspects + _works("control", ("waves",), 80, 100))
    return matched, shifted


def test_blind_features_are_model_free_numbers_per_image(matched_and_shifted):
    matched, _ = matched_and_shifted
    f = blind_features(matched)
    assert list(f["image_id"]) == [r.image_id for r in matched.records]
    cols = [c for c in f.columns if c not in ("image_id", "role")]
    assert all(c.startswith(("px_", "meta_")) for c in cols) and len(cols) >= 15
    assert f[[c for c in cols if c.startswith("px_")]].notna().all().all()
    # pixel statistics follow the pixels: a brighter image has a higher mean luminance
    px = matched.pixels[:2].numpy().astype(np.int16)
    bright = pixel_features(np.clip(px + 60, 0, 255).astype(np.uint8))
    assert (bright["px_lum_mean"].to_numpy() > pixel_features(px.astype(np.uint8))["px_lum_mean"].to_numpy()).all()


def test_blind_baseline_fires_on_shifted_controls_and_not_on_matched(matched_and_shifted):
    matched, shifted = matched_and_shifted
    for ev, expect in ((matched, "pass"), (shifted, "fail")):
        f = blind_features(ev)
        ids = {role: [r.image_id for r in ev.records if r.role == role] for role in ("suspect", "control")}
        g = G.blind_baseline_gate(f, ids["suspect"], ids["control"], PLAN)
        assert g.status == expect, g.summary
        assert len(g.details["null"]) == PLAN.crossfit_permutations
    assert g.details["auc"] > 0.9 and g.details["p_value"] <= PLAN.alpha


def test_verdict_is_withheld_when_the_blind_baseline_fails(matched_and_shifted):
    """Suspects score higher — but the controls come from another artist, and the pixels alone show it."""
    _, shifted = matched_and_shifted
    scores = _scores(shifted, {"suspect": 1.0})
    unguarded = analyze(scores, None, NO_BLIND)
    assert unguarded.verdict.decision == "reject_h0"  # with the gate waived the raw test "convicts" ...
    assert "waived" in unguarded.verdict.sentence
    missing = analyze(scores, None, PLAN)  # required but not runnable (no features): withheld, not a verdict
    assert missing.gate("blind_baseline").status == "not_run"
    assert missing.verdict.decision == "withheld" and missing.verdict.failed_gates == ["blind_baseline"]
    assert "could not be run" in missing.verdict.sentence
    res = analyze(scores, None, PLAN, features=blind_features(shifted))
    assert res.verdict.decision == "withheld"  # ... with them the verdict is withheld
    assert res.verdict.failed_gates == ["blind_baseline"]
    assert "withheld" in res.verdict.sentence.lower() and "blind baseline" in res.verdict.sentence
    assert res.verdict.p_value == unguarded.verdict.p_value  # reported, not hidden
    assert "inconsistent with the hypothesis" not in res.verdict.sentence


def test_matched_controls_keep_the_verdict(matched_and_shifted):
    matched, _ = matched_and_shifted
    res = analyze(_scores(matched, {"suspect": 1.0}), None, PLAN, features=blind_features(matched))
    assert res.gate("blind_baseline").status == "pass"
    assert res.verdict.decision == "reject_h0"


def _table(n_s: int, n_c: int, shift: float, n_m: int = 0, member_shift: float = 2.0, seed: int = 0,
           n_nm: int = 0) -> ScoreTable:
    rng = np.random.default_rng(seed)
    rows = []
    for role, n, mu in (("suspect", n_s, shift), ("control", n_c, 0.0), ("member", n_m, member_shift),
                        ("nonmember", n_nm, 0.0)):
        rows += [dict(image_id=f"{role}-{i:05d}-".ljust(64, "0"), role=role, attack="loss", attack_params_hash="p",
                      target_fingerprint="fp", seed=0, score=float(rng.normal(mu, 1))) for i in range(n)]
    return ScoreTable(pd.DataFrame(rows))


@pytest.mark.parametrize("test", ["mann_whitney", "permutation"])
def test_placebo_fpr_is_at_most_alpha_for_the_valid_tests(test):
    plan = AnalysisPlan(test=test, n_permutations=499, n_bootstrap=50, n_placebo=1000, n_power_resamples=50)
    res = analyze(_table(15, 200, 0.0, seed=3), None, plan)
    g = res.gate("placebo")
    assert g.status == "pass", g.summary
    d = g.details
    assert d["n_placebo"] == 1000 and d["n_pseudo_suspect"] == 15 and d["n_pseudo_control"] == 185
    assert d["at_alpha"]["lo"] <= plan.alpha <= d["at_alpha"]["hi"] + 0.01
    assert abs(d["at_alpha"]["rate"] - plan.alpha) < 0.025


def test_placebo_self_test_reports_an_anticonservative_test_without_withholding(monkeypatch):
    """A test whose p-values are half what they should be rejects twice as often: the self-test must see it."""
    from audit.stats.gates import placebo as P  # the gate's own module (one file per gate)

    real = P._batch_pvalues
    monkeypatch.setattr(P, "_batch_pvalues", lambda *a, **k: real(*a, **k) / 2)
    res = analyze(_table(15, 200, 1.0), None, AnalysisPlan(n_permutations=99, n_bootstrap=50, n_placebo=1000))
    g = res.gate("placebo")
    # the self-test sees it and says so, but it is a self-test: it never withholds the verdict (random splits of
    # one control set cannot show that the controls are an invalid null, and at 0.05 it would withhold valid
    # audits by chance)
    assert g.details["self_test_outside"] and g.details["at_alpha"]["lo"] > 0.05
    assert g.status == "pass" and "reported" in g.summary and "placebo" not in res.verdict.failed_gates


def test_placebo_not_run_without_enough_controls():
    res = analyze(_table(20, 20, 1.0), None, NO_BLIND)
    assert res.gate("placebo").status == "not_run"
    assert res.verdict.decision == "reject_h0"  # not run ≠ failed
    assert any("Placebo" in n and "not run" in n for n in res.notes)


def test_positive_control_measures_power_and_fails_when_members_are_not_detected():
    works = analyze(_table(16, 300, 1.5, n_m=30, member_shift=1.5, n_nm=40), None, PLAN)
    pc = works.gate("positive_control")
    assert pc.status == "pass" and pc.details["detected"]
    assert pc.details["power"]["rate"] > 0.8 and pc.details["power"]["lo"] <= pc.details["power"]["rate"]
    assert pc.details["p_nonmembers"] > 0.05  # the negative control looks like the controls
    assert len(pc.details["p_values"]) == PLAN.n_power_resamples
    # An attack that cannot tell known members from controls: the gate fails and the verdict is withheld.
    blind_attack = analyze(_table(16, 300, 0.0, n_m=30, member_shift=0.0, seed=2), None, PLAN)
    pc = blind_attack.gate("positive_control")
    assert pc.status == "fail" and not pc.details["detected"]
    assert blind_attack.verdict.decision == "withheld"
    assert "positive control" in blind_attack.verdict.sentence
    # No members: not run, and the verdict stands.
    assert analyze(_table(16, 300, 1.0), None, PLAN).gate("positive_control").status == "not_run"


def test_power_gate_reports_works_needed_at_the_measured_effects():
    res = analyze(_table(10, 300, 0.5, n_m=30, member_shift=1.5), None, PLAN)
    g = res.gate("power")
    assert g.status == "info"
    rows = {r["effect"]: r for r in g.details["rows"]}
    # known members only: the suspects' own effect would be post-hoc "observed power"
    assert set(rows) == {"measured on the known members"}
    from audit.stats.tests import noether_n

    for r in rows.values():
        assert r["n_needed"] == noether_n(r["auc"], 300, PLAN.alpha, PLAN.power_target)
    assert g.details["measured"]["n"] == 10  # the positive control's subsampled power at this size
    # no members: a planning table at hypothetical effects, said to be hypothetical
    g0 = analyze(_table(10, 300, 0.5), None, PLAN).gate("power")
    assert g0.details["hypothetical"] and "hypothetical" in g0.summary
    assert all(r["effect"].startswith("hypothetical") for r in g0.details["rows"])


def test_a_feature_set_plan_uses_the_crossfitted_test_and_its_placebo():
    rng = np.random.default_rng(5)
    base = _table(20, 80, 0.0).df
    pia = base.assign(attack="pia", score=rng.normal(size=len(base)))
    pia.loc[pia["role"] == "suspect", "score"] += 1.2  # only the second attack carries the signal
    table = ScoreTable(pd.concat([base, pia], ignore_index=True))
    plan = AnalysisPlan(features=["loss", "pia"], crossfit_permutations=49, n_placebo=40, n_bootstrap=50,  # type: ignore[arg-type]
                        n_permutations=99)
    plan = AnalysisPlan(**{**plan.to_dict(), "gates": list(NO_BLIND.gates)})
    res = analyze(table, None, plan)
    assert res.primary_test.name == "crossfit" and res.primary_test.p_value <= 0.05
    assert res.verdict.decision == "reject_h0" and "feature set" in res.verdict.sentence
    assert res.primary_attack == "loss" and not any(a.primary for a in res.attacks)
    assert res.crossfit.coef[1] > abs(res.crossfit.coef[0])
    g = res.gate("placebo")
    assert g.status in ("pass", "fail") and len(g.details["p_values"]) == 40 and "relabellings" in g.details["method"]
    null = analyze(ScoreTable(pd.concat([base, pia.assign(score=rng.normal(size=len(pia)))], ignore_index=True)),
                   None, plan)
    assert null.verdict.decision == "fail_to_reject"


def test_a_plan_changed_after_scoring_makes_the_verdict_exploratory():
    table = _table(16, 100, 1.0)
    recorded = PLAN.sha256()
    same = analyze(table, None, PLAN, recorded_plan_sha256=recorded)
    assert same.verdict.confirmatory and same.plan_recorded_sha256 == same.plan_sha256
    other = AnalysisPlan(**{**PLAN.to_dict(), "alpha": 0.01})
    changed = analyze(table, None, other, recorded_plan_sha256=recorded)
    assert not changed.verdict.confirmatory
    assert "differs from the plan recorded before scoring" in changed.notes[0]


def test_gates_can_be_switched_off_and_say_so():
    plan = AnalysisPlan(gates=["power"], n_permutations=99, n_bootstrap=50)  # type: ignore[arg-type]
    res = analyze(_table(16, 100, 1.0, n_m=10), None, plan)
    assert [g.status for g in res.gates] == ["not_run", "not_run", "not_run", "info"]
    assert all("switched off" in g.summary for g in res.gates[:3])
