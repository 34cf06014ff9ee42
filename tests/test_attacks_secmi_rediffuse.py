"""SecMI and ReDiffuse on tiny real models: detection, null behaviour, determinism, batch invariance, costs."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from audit.attacks import PIA, AttackSetupError, LossAttack, score_evidence
from audit.attacks.rediffuse import ReDiffuse, img2img, img2img_timesteps
from audit.attacks.secmi import SecMI
from audit.stats import auc_with_ci, mann_whitney
from audit.targets import load_target
from audit.types import EvidenceSet
from tests.conftest import count_forward_calls, evidence_for, evidence_from_tensors

ATTACKS = {"secmi": SecMI(t_sec=100, interval=10), "rediffuse": ReDiffuse(t=100, steps=10, n=4)}
# cheaper settings for the mechanical properties (seeding, batching), which do not depend on them
CHEAP = {"secmi": SecMI(t_sec=30, interval=10), "rediffuse": ReDiffuse(t=50, steps=3, n=2)}


def _load(model_dir):
    return load_target(str(model_dir), local_files_only=True, device="cpu")


def _scores(model_dir, members, held_out, attacks=ATTACKS, batch_size=16, seed=0, resolution=16):
    target = _load(model_dir)
    ev = evidence_for(members, held_out, resolution=resolution)
    return score_evidence(target, ev, attacks, batch_size=batch_size, seed=seed, progress=False), target


def _auc(table, attack):
    return auc_with_ci(table.scores(attack, "member"), table.scores(attack, "nonmember"), n_boot=500, seed=0)


@pytest.fixture(scope="module")
def overfit_scores(overfit_ddpm):
    """SecMI at t_sec = 10 on these 8×8 images: its signal lives at small t here (see audit.attacks.secmi;
    measured: AUC 0.76 at t_sec = 10, 0.66 at 20, 0.41–0.51 at 50–200), as the other attacks' overfit tests
    also use timesteps a few times smaller than the papers' 32×32 settings."""
    target = _load(overfit_ddpm.model_dir)
    ev = evidence_from_tensors(overfit_ddpm.members, overfit_ddpm.held_out)
    attacks = {"secmi": SecMI(t_sec=10, interval=10), "rediffuse": ATTACKS["rediffuse"],
               "rediffuse_n1": ReDiffuse(t=100, steps=10, n=1)}
    return score_evidence(target, ev, attacks, batch_size=128, seed=0, progress=False)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_overfit_model_is_detected(overfit_scores, attack):
    auc = _auc(overfit_scores, attack)
    assert auc.auc > 0.65 and auc.lo > 0.5, (attack, auc)
    pos, neg = overfit_scores.scores(attack, "member"), overfit_scores.scores(attack, "nonmember")
    assert mann_whitney(pos, neg).p_value < 0.05


def test_rediffuse_averaging_variations_beats_one_variation(overfit_scores):
    """The paper's point: averaging n variations cancels the noise-driven error for members (measured here:
    AUC 0.72 for n = 1, 0.82 for n = 4; the n = 1 draw is the first of the four)."""
    assert _auc(overfit_scores, "rediffuse").auc > _auc(overfit_scores, "rediffuse_n1").auc + 0.03


@pytest.fixture(scope="module")
def memorized_scores(memorized_ddpm):
    return _scores(memorized_ddpm.model_dir, memorized_ddpm.member_paths, memorized_ddpm.held_out_paths)[0]


def test_rediffuse_detects_memorizing_model(memorized_scores):
    auc = _auc(memorized_scores, "rediffuse")
    assert auc.auc > 0.9 and auc.lo > 0.5, auc


def test_secmi_ranking_inverts_on_a_collapsed_model(memorized_scores):
    """Like PIA, SecMI starts from ε̂(x0, 0), which is small for a memorised image, so a member's inverted
    trajectory carries too little noise and is the less self-consistent one (measured AUC 0.10). Pinned
    so the warning in audit.attacks.secmi stays true."""
    assert _auc(memorized_scores, "secmi").auc < 0.5


def test_untrained_model_is_not_detected(untrained_ddpm):
    table, _ = _scores(untrained_ddpm.model_dir, untrained_ddpm.member_paths, untrained_ddpm.held_out_paths)
    for attack in ATTACKS:
        auc = _auc(table, attack)
        assert auc.lo < 0.5 < auc.hi, (attack, auc)


def test_same_seed_same_scores_and_other_seed_differs(memorized_ddpm):
    args = (memorized_ddpm.model_dir, memorized_ddpm.member_paths[:3], memorized_ddpm.held_out_paths[:3])
    a, _ = _scores(*args, attacks=CHEAP, seed=7)
    b, _ = _scores(*args, attacks=CHEAP, seed=7)
    c, _ = _scores(*args, attacks=CHEAP, seed=8)
    assert a.df["score"].tolist() == b.df["score"].tolist()
    by = {name: [t.df[t.df.attack == name]["score"].to_numpy() for t in (a, c)] for name in CHEAP}
    assert not np.allclose(*by["rediffuse"])  # seeded variations
    np.testing.assert_allclose(*by["secmi"], rtol=1e-6)  # deterministic inversion: no randomness at all


def test_batch_size_invariant(memorized_ddpm):
    args = (memorized_ddpm.model_dir, memorized_ddpm.member_paths[:4], memorized_ddpm.held_out_paths[:4])
    one, _ = _scores(*args, attacks=CHEAP, batch_size=1)
    eight, _ = _scores(*args, attacks=CHEAP, batch_size=8)
    m = one.df.merge(eight.df, on=["image_id", "attack"], suffixes=("_1", "_8"))
    assert len(m) == len(one.df) == 8 * len(CHEAP)
    np.testing.assert_allclose(m["score_1"], m["score_8"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_declared_evaluations_match_unet_calls(memorized_ddpm, name):
    from diffusers import UNet2DModel

    with count_forward_calls(UNet2DModel) as calls:
        _, target = _scores(memorized_ddpm.model_dir, memorized_ddpm.member_paths[:2],
                            memorized_ddpm.held_out_paths[:1], attacks={name: ATTACKS[name]}, batch_size=2)
    assert calls["n"] == ATTACKS[name].evaluations_per_image() * 3 == target.unet_evals
    assert ATTACKS["secmi"].evaluations_per_image() == 12 and ATTACKS["rediffuse"].evaluations_per_image() == 40


@pytest.fixture(scope="module")
def memorized_target(memorized_ddpm):
    return _load(memorized_ddpm.model_dir)


@pytest.mark.parametrize("attack,match", [
    (SecMI(t_sec=990, interval=10), "outside the model"),  # the round trip would need t = 1000
    (SecMI(t_sec=105, interval=10), "multiple of interval"),
    (SecMI(t_sec=0), "multiple of interval"),
    (SecMI(interval=0), "interval must be"),
    (ReDiffuse(t=5000), "outside the model"),
    (ReDiffuse(t=0), "must be ≥ 1"),
    (ReDiffuse(t=10, steps=20), "steps must be"),
    (ReDiffuse(space="latent"), "space must be"),
])
def test_check_target_rejects_bad_settings(memorized_target, attack, match):
    with pytest.raises(AttackSetupError, match=match) as err:
        attack.check_target(memorized_target)
    assert "\n" not in str(err.value)


def test_suite_shares_evaluations_and_scores_do_not_change(memorized_ddpm):
    """SecMI configs with one interval share the DDIM inversion (and ε̂(x0, 0) with PIA); ReDiffuse's first
    denoising step of each variation is the loss attack's ε̂ at the same timestep and draw."""
    args = (memorized_ddpm.model_dir, memorized_ddpm.member_paths[:2], memorized_ddpm.held_out_paths[:1])
    suite = {"secmi": SecMI(t_sec=100), "secmi60": SecMI(t_sec=60), "pia": PIA(t=100),
             "loss": LossAttack(timesteps=[100], n_noise=2), "rediffuse": ReDiffuse(t=100, steps=5, n=2)}
    together, target = _scores(*args, attacks=suite, batch_size=4)
    alone = sum(a.evaluations_per_image() for a in suite.values())
    # secmi60 reuses all 8 of its evaluations, PIA its ε̂(x0, 0), ReDiffuse the loss attack's 2 ε̂
    assert target.unet_evals == (alone - 8 - 1 - 2) * 3
    for name, attack in suite.items():
        single, _ = _scores(*args, attacks={name: attack}, batch_size=4)
        np.testing.assert_allclose(single.df["score"], together.df[together.df.attack == name]["score"], rtol=1e-6)


def test_img2img_near_t0_returns_the_input_and_far_t_does_not(memorized_ddpm):
    target = _load(memorized_ddpm.model_dir)
    x0 = evidence_for(memorized_ddpm.held_out_paths[:4], []).batch(0, 4)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        near = img2img(target, x0, noise, t=1, steps=1)
        far = img2img(target, x0, noise, t=600, steps=10)
    assert (near - x0).pow(2).mean() < 1e-3
    assert (far - x0).pow(2).mean() > 10 * (near - x0).pow(2).mean()
    assert img2img_timesteps(100, 10) == [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    assert target.unet_evals == 4 * (1 + 10)


def test_attacks_run_on_a_text_conditional_latent_target_through_the_same_code(tiny_sd, artworks):
    """SecMI walks the latent DDIM trajectory conditioned on the captions; ReDiffuse decodes its variations."""
    from diffusers import UNet2DConditionModel

    members, held_out = artworks
    target = _load(tiny_sd[0])
    attacks = {"secmi": SecMI(t_sec=20, interval=10), "rediffuse": ReDiffuse(t=20, steps=2, n=2)}
    ev = evidence_for(members[:2], held_out[:1], resolution=32)
    calls = {"n": 0}
    orig = UNet2DConditionModel.forward

    def counting_forward(self, sample, *a, **k):
        assert k.get("encoder_hidden_states") is not None
        calls["n"] += sample.shape[0]
        return orig(self, sample, *a, **k)

    UNet2DConditionModel.forward = counting_forward
    try:
        table = score_evidence(target, ev, attacks, batch_size=4, seed=0, progress=False)
    finally:
        UNet2DConditionModel.forward = orig
    assert calls["n"] == target.unet_evals == 3 * (4 + 4)
    assert np.isfinite(table.df["score"]).all() and (table.df["score"] < 0).all()
    # the captions condition the trajectory: other captions, other scores
    recaptioned = EvidenceSet([replace(r, caption="a completely different caption") for r in ev.records], ev.pixels)
    other = score_evidence(target, recaptioned, attacks, batch_size=4, seed=0, progress=False)
    assert not np.allclose(table.df["score"], other.df["score"], rtol=1e-7, atol=0)
