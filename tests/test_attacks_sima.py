"""SimA (single-query score norm): detection, null, batch invariance, declared and shared cost."""
from __future__ import annotations

import numpy as np
import pytest
from diffusers import UNet2DModel

from audit.attacks import PIA, AttackSetupError, SimA, score_evidence
from audit.stats import auc_with_ci, mann_whitney
from audit.targets import load_target
from tests.conftest import count_forward_calls, evidence_for, evidence_from_tensors


def _auc(table, attack="sima"):
    pos, neg = table.scores(attack, "member"), table.scores(attack, "nonmember")
    return auc_with_ci(pos, neg, n_boot=500, seed=0), mann_whitney(pos, neg).p_value


def _run(model_dir, ev, attacks, batch_size=16):
    target = load_target(str(model_dir), local_files_only=True, device="cpu")
    return score_evidence(target, ev, attacks, batch_size=batch_size, seed=0, progress=False), target


@pytest.mark.parametrize("fixture,min_auc", [("memorized_ddpm", 0.8), ("overfit_ddpm", 0.75)])
def test_sima_detects_memorising_and_overfit_models(fixture, min_auc, request):
    model = request.getfixturevalue(fixture)
    if fixture == "memorized_ddpm":
        ev = evidence_for(model.member_paths, model.held_out_paths)
    else:
        ev = evidence_from_tensors(model.members, model.held_out)
    table, _ = _run(model.model_dir, ev, {"sima": SimA()}, batch_size=64)
    auc, p = _auc(table)
    assert auc.auc > min_auc and auc.lo > 0.5 and p < 0.05, auc


def test_sima_does_not_separate_on_an_untrained_model(untrained_ddpm):
    ev = evidence_for(untrained_ddpm.member_paths, untrained_ddpm.held_out_paths)
    table, _ = _run(untrained_ddpm.model_dir, ev, {"sima": SimA()})
    auc, p = _auc(table)
    assert auc.lo < 0.5 < auc.hi and p > 0.05, auc


def test_sima_costs_one_evaluation_alone_and_none_beside_pia(memorized_ddpm):
    ev = evidence_for(memorized_ddpm.member_paths[:5], memorized_ddpm.held_out_paths[:3])
    target = load_target(str(memorized_ddpm.model_dir), local_files_only=True, device="cpu")
    with count_forward_calls(UNet2DModel) as calls:
        alone = score_evidence(target, ev, {"sima": SimA()}, batch_size=4, seed=0, progress=False)
    assert calls["n"] == SimA().evaluations_per_image() * len(ev) == len(ev)
    with count_forward_calls(UNet2DModel) as calls:
        both = score_evidence(target, ev, {"pia": PIA(t=100), "sima": SimA()}, batch_size=4, seed=0, progress=False)
    assert calls["n"] == 2 * len(ev)  # PIA's ε₀ is SimA's query
    np.testing.assert_allclose(both.scores("sima", ["member", "nonmember"]), alone.scores("sima", ["member", "nonmember"]))
    one, _ = _run(memorized_ddpm.model_dir, ev, {"sima": SimA(t=10)}, batch_size=1)
    eight, _ = _run(memorized_ddpm.model_dir, ev, {"sima": SimA(t=10)}, batch_size=8)
    np.testing.assert_allclose(one.df["score"], eight.df["score"], rtol=1e-4, atol=1e-6)
    with pytest.raises(AttackSetupError, match="timesteps"):
        SimA(t=5000).check_target(target)
