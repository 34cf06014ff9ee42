"""PFAMI (gray box) and GSA (white box) on tiny real models: detection, null behaviour, determinism,
batch invariance, declared costs, sharing with the loss attack, and GSA's hands-off use of the weights."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from audit.attacks import AttackSetupError, Batch, LossAttack, NoiseSource, score_evidence
from audit.attacks.gsa import GSA
from audit.attacks.pfami import PFAMI, center_zoom
from audit.stats import auc_with_ci, mann_whitney
from audit.targets import load_target
from tests.conftest import count_forward_calls, evidence_for

# Paper-shaped but cheap: PFAMI with 3 crop strengths at 2 timesteps (8 evaluations), GSA_1 at 3 timesteps.
ATTACKS = {
    "pfami": PFAMI(strengths=[0.9, 0.8, 0.7], timesteps=[100, 200]),
    "gsa": GSA(timesteps=[50, 100, 200]),
}


def _target(model_dir):
    return load_target(str(model_dir), local_files_only=True, device="cpu")


def _scores(model_dir, members, held_out, attacks=ATTACKS, batch_size=16, seed=0, resolution=16):
    target = _target(model_dir)
    ev = evidence_for(members, held_out, resolution=resolution)
    return score_evidence(target, ev, attacks, batch_size=batch_size, seed=seed, progress=False), target


def _batch(target, paths, seed=0, resolution=16):
    ev = evidence_for(paths, [], resolution=resolution)
    pixels = ev.batch(0, len(ev))
    ids = [r.image_id for r in ev.records]
    captions = ["a painting"] * len(ids)
    return Batch(x0=target.encode(pixels), cond=target.encode_text(captions) if target.conditional else None,
                 captions=captions, image_ids=ids, noise_source=NoiseSource(seed, ids), pixels=pixels)


# ---------------------------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def memorized_scores(memorized_ddpm):
    return _scores(memorized_ddpm.model_dir, memorized_ddpm.member_paths, memorized_ddpm.held_out_paths)[0]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_detects_memorizing_model(memorized_scores, attack):
    pos, neg = memorized_scores.scores(attack, "member"), memorized_scores.scores(attack, "nonmember")
    auc = auc_with_ci(pos, neg, n_boot=500, seed=0)
    assert auc.auc > 0.9 and auc.lo > 0.5, (attack, auc)  # measured: 1.00 for both
    assert mann_whitney(pos, neg).p_value < 0.05


def test_untrained_model_is_not_detected(untrained_ddpm):
    table, _ = _scores(untrained_ddpm.model_dir, untrained_ddpm.member_paths, untrained_ddpm.held_out_paths)
    for attack in ATTACKS:
        pos, neg = table.scores(attack, "member"), table.scores(attack, "nonmember")
        auc = auc_with_ci(pos, neg, n_boot=500, seed=0)
        assert auc.lo < 0.5 < auc.hi, (attack, auc)
        assert mann_whitney(pos, neg).p_value > 0.05


# ---------------------------------------------------------------------------------------------- invariants
def test_same_seed_same_scores_and_other_seed_differs(memorized_ddpm):
    args = (memorized_ddpm.model_dir, memorized_ddpm.member_paths[:3], memorized_ddpm.held_out_paths[:3])
    a, _ = _scores(*args, seed=7)
    b, _ = _scores(*args, seed=7)
    c, _ = _scores(*args, seed=8)
    assert a.df["score"].tolist() == b.df["score"].tolist()
    for attack in ATTACKS:  # both draw seeded noise
        sa = a.df[a.df.attack == attack]["score"].to_numpy()
        sc = c.df[c.df.attack == attack]["score"].to_numpy()
        assert not np.allclose(sa, sc), attack


def test_batch_size_invariant(memorized_ddpm):
    args = (memorized_ddpm.model_dir, memorized_ddpm.member_paths[:4], memorized_ddpm.held_out_paths[:4])
    one, _ = _scores(*args, batch_size=1)
    eight, _ = _scores(*args, batch_size=8)
    m = one.df.merge(eight.df, on=["image_id", "attack"], suffixes=("_1", "_8"))
    assert len(m) == len(one.df) == 8 * len(ATTACKS)
    np.testing.assert_allclose(m["score_1"], m["score_8"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attack", [ATTACKS["pfami"], ATTACKS["gsa"], GSA(timesteps=[100, 300], variant=2)],
                         ids=["pfami", "gsa1", "gsa2"])
def test_declared_evaluations_match_unet_calls(memorized_ddpm, attack):
    from diffusers import UNet2DModel

    n_img = 4
    with count_forward_calls(UNet2DModel) as calls:
        _, target = _scores(memorized_ddpm.model_dir, memorized_ddpm.member_paths[:2],
                            memorized_ddpm.held_out_paths[:2], attacks={"a": attack}, batch_size=3)
    assert calls["n"] == attack.evaluations_per_image() * n_img == target.unet_evals


def test_attacks_check_their_setup(memorized_ddpm):
    target = _target(memorized_ddpm.model_dir)
    for attack in (PFAMI(timesteps=[5000]), GSA(timesteps=[100, 1000])):
        with pytest.raises(AttackSetupError, match="outside the model"):
            attack.check_target(target)
    with pytest.raises(ValueError, match="strengths"):
        PFAMI(strengths=[0.9, 1.2])
    with pytest.raises(ValueError, match="variant"):
        GSA(variant=3)
    with pytest.raises(ValueError, match="group_by"):
        GSA(group_by="neuron")


# ---------------------------------------------------------------------------------------------- PFAMI
def test_pfami_shares_the_unperturbed_eps_with_the_loss_attack(memorized_ddpm):
    """Run with the loss attack, PFAMI's unperturbed ε̂ (same tags) is computed once; scores do not change."""
    args = (memorized_ddpm.model_dir, memorized_ddpm.member_paths[:2], memorized_ddpm.held_out_paths[:2])
    suite = {"loss": LossAttack(timesteps=[100, 200], n_noise=1),
             "pfami": PFAMI(strengths=[0.9, 0.8], timesteps=[100, 200])}
    together, target = _scores(*args, attacks=suite, batch_size=4)
    alone = sum(a.evaluations_per_image() for a in suite.values()) * 4
    assert target.unet_evals == alone - 2 * 4  # the two unperturbed ε̂ per image are shared
    for name, attack in suite.items():
        single, _ = _scores(*args, attacks={name: attack}, batch_size=4)
        np.testing.assert_allclose(single.df["score"], together.df[together.df.attack == name]["score"], rtol=1e-6)


def test_center_zoom_is_a_crop_and_resize():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    torch.testing.assert_close(center_zoom(x, 1.0), x, atol=1e-5, rtol=0)
    # bilinear resampling is exact on a linear ramp: keeping the central fraction s of the image and
    # stretching it to full size maps pixel j to the ramp's value at c + s (j − c), c the centre
    j = torch.arange(16, dtype=torch.float32)
    ramp = j.expand(1, 3, 16, 16).clone()
    for s in (0.95, 0.8, 0.5):
        expected = (7.5 + s * (j - 7.5)).expand(1, 3, 16, 16)
        torch.testing.assert_close(center_zoom(ramp, s), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(center_zoom(ramp.transpose(2, 3), s), expected.transpose(2, 3), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- GSA
def test_gsa_features_and_weights_are_left_untouched(memorized_ddpm):
    target = _target(memorized_ddpm.model_dir)
    unet = target.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    batch = _batch(target, memorized_ddpm.member_paths[:3])
    n_params = len(flags)
    for group_by in ("parameter", "layer", "block"):
        attack = GSA(timesteps=[100], group_by=group_by)
        with torch.inference_mode():  # as the runner calls it
            feats = attack.features(target, batch)
        names = attack.groups(target)
        assert feats.shape == (3, len(names)) and torch.isfinite(feats).all() and (feats >= 0).all()
        assert len(names) == len(set(names))
    assert len(GSA(group_by="parameter").groups(target)) == n_params
    assert len(GSA(group_by="block").groups(target)) < len(GSA(group_by="layer").groups(target)) < n_params
    assert "mid_block" in GSA(group_by="block").groups(target)
    # nothing written to the model
    assert all(p.grad is None for p in unet.parameters())
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == flags
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gsa_norms_match_an_independent_backward(memorized_ddpm):
    """GSA_1's features equal the per-tensor gradient norms of the mean ε-MSE, computed by plain backward()."""
    target = _target(memorized_ddpm.model_dir)
    batch = _batch(target, memorized_ddpm.member_paths[:2])
    ts = [50, 300]
    feats = GSA(timesteps=ts).features(target, batch)
    ref_unet = copy.deepcopy(target.unet)
    ac = target.alphas_cumprod
    for i in range(2):
        ref_unet.zero_grad(set_to_none=True)
        losses = []
        for t in ts:
            eps = batch.noise(f"eps/t{t}/k0")[i : i + 1]
            x_t = ac[t].sqrt().float() * batch.x0[i : i + 1] + (1 - ac[t]).sqrt().float() * eps
            losses.append(torch.nn.functional.mse_loss(ref_unet(x_t, t).sample, eps))
        torch.stack(losses).mean().backward()
        ref = torch.stack([p.grad.norm() for p in ref_unet.parameters()])
        torch.testing.assert_close(feats[i], ref, rtol=1e-4, atol=1e-7)


def test_gsa_variants_agree_with_one_timestep_and_differ_with_several(memorized_ddpm):
    target = _target(memorized_ddpm.model_dir)
    batch = _batch(target, memorized_ddpm.member_paths[:2])
    one1 = GSA(timesteps=[200], variant=1).features(target, batch)
    one2 = GSA(timesteps=[200], variant=2).features(target, batch)
    torch.testing.assert_close(one1, one2, rtol=1e-5, atol=1e-8)
    many1 = GSA(timesteps=[50, 500], variant=1).features(target, batch)
    many2 = GSA(timesteps=[50, 500], variant=2).features(target, batch)
    # mean of norms ≥ norm of the mean (triangle inequality), strictly somewhere
    assert (many2 >= many1 - 1e-6).all() and (many2 > many1 + 1e-6).any()


def test_gsa_declared_backward_passes_equal_the_gradient_calls(memorized_ddpm, monkeypatch):
    """Backward passes are a cost too: the declared count per image equals the autograd.grad calls made."""
    target = _target(memorized_ddpm.model_dir)
    batch = _batch(target, memorized_ddpm.member_paths[:3])
    real_grad = torch.autograd.grad
    calls = {"n": 0}

    def counting_grad(*args, **kwargs):
        calls["n"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    for variant, expected in ((1, 1), (2, 3)):
        attack = GSA(timesteps=[50, 100, 200], variant=variant)
        calls["n"] = 0
        attack.features(target, batch)
        assert attack.backward_passes_per_image() == expected
        assert calls["n"] == 3 * expected
        assert attack.describe()["backward_passes_per_image"] == expected
    assert LossAttack().backward_passes_per_image() == 0


# ---------------------------------------------------------------------------------------------- latent target
def test_both_run_on_a_latent_text_to_image_target(tiny_sd, artworks):
    model, _ = tiny_sd
    members, held_out = artworks
    suite = {"pfami": PFAMI(strengths=[0.9, 0.8], timesteps=[100]), "gsa": GSA(timesteps=[100, 300])}
    table, target = _scores(model, members[:2], held_out[:2], attacks=suite, batch_size=4, resolution=32)
    assert len(table.df) == 8 and np.isfinite(table.df["score"]).all()
    assert target.unet_evals == 4 * sum(a.evaluations_per_image() for a in suite.values())
    assert all(p.grad is None for p in target.unet.parameters())
    batch = _batch(target, members[:2], resolution=32)
    gsa = GSA(timesteps=[100], group_by="block")
    assert gsa.features(target, batch).shape == (2, len(gsa.groups(target)))
