"""Target loading: real diffusers folders, the SD layout, LoRA, fingerprints, safety refusals, DDIM maths."""
from __future__ import annotations

import shutil

import pytest
import torch

from audit.attacks import PIA, LossAttack, score_evidence
from audit.targets import LatentTarget, PixelTarget, TargetLoadError, load_target
from tests.conftest import evidence_for


def test_pixel_target_reads_constants_from_configs(memorized_ddpm):
    t = load_target(str(memorized_ddpm.model_dir), local_files_only=True)
    assert isinstance(t, PixelTarget) and t.info.kind == "pixel" and not t.conditional
    assert t.info.resolution == 16 and t.num_train_timesteps == 1000
    torch.testing.assert_close(t.alphas_cumprod.float(), t.scheduler.alphas_cumprod.float())
    assert len(t.fingerprint) == 64 and "unet/diffusion_pytorch_model.safetensors" in t.info.files


def test_ddim_inversion_then_denoise_round_trips(memorized_ddpm):
    """DDIM steps with the same ε in both directions are exact inverses (the basis of SecMI-style attacks)."""
    t = load_target(str(memorized_ddpm.model_dir), local_files_only=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    eps = torch.randn_like(x)
    up = t.ddim_step(x, eps, 100, 110)
    back = t.ddim_step(up, eps, 110, 100)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)
    # t_next = -1 means the clean image: the step returns the x0 prediction
    torch.testing.assert_close(t.ddim_step(x, eps, 100, -1), t.pred_x0(x, eps, 100))


def test_fingerprint_changes_with_any_weight_byte(memorized_ddpm, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(memorized_ddpm.model_dir, copy)
    a = load_target(str(copy), local_files_only=True).fingerprint
    assert load_target(str(copy), local_files_only=True).fingerprint == a
    w = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert load_target(str(copy), local_files_only=True).fingerprint != a


def test_pickle_weights_are_refused_unless_allowed(memorized_ddpm, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(memorized_ddpm.model_dir, copy)
    st = copy / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(st), copy / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(TargetLoadError, match="pickle"):
        load_target(str(copy), local_files_only=True)
    assert isinstance(load_target(str(copy), local_files_only=True, allow_pickle=True), PixelTarget)


def test_not_a_model_folder_gives_clear_error(tmp_path, memorized_ddpm):
    with pytest.raises(TargetLoadError, match="model_index.json"):
        load_target(str(tmp_path), local_files_only=True)
    with pytest.raises(TargetLoadError, match="not a Stable-Diffusion-layout model"):
        load_target(str(memorized_ddpm.model_dir), kind="latent", local_files_only=True)


def test_sd_layout_and_lora_score_through_the_same_attack_code(tiny_sd, artworks):
    model, lora = tiny_sd
    base = load_target(str(model), local_files_only=True)
    tuned = load_target(str(model), lora=str(lora), local_files_only=True)
    assert isinstance(base, LatentTarget) and base.conditional and base.info.resolution == 32
    assert base.scaling_factor == pytest.approx(float(base.vae.config.scaling_factor))
    assert tuned.info.lora and tuned.fingerprint != base.fingerprint
    assert any(k.startswith("lora/") for k in tuned.info.files)

    members, held_out = artworks
    ev = evidence_for(members[:3], held_out[:3], resolution=32)
    attacks = {"loss": LossAttack(timesteps=[100], n_noise=1), "pia": PIA(t=100)}
    s_base = score_evidence(base, ev, attacks, batch_size=4, seed=0, progress=False)
    s_tuned = score_evidence(tuned, ev, attacks, batch_size=4, seed=0, progress=False)
    assert len(s_base.df) == len(s_tuned.df) == 12 and s_base.df["score"].notna().all()
    # the fused LoRA really changes the model's predictions
    assert (s_base.df["score"] - s_tuned.df["score"]).abs().max() > 1e-6
    assert base.unet_evals == tuned.unet_evals == 6 * 3


def test_lora_fused_matches_unfused_adapter(tiny_sd):
    """Fusing at load time must give the same predictions as the LoRA applied as an adapter."""
    from audit.groundtruth.sd import load_sd_pipeline

    model, lora = tiny_sd
    tuned = load_target(str(model), lora=str(lora), local_files_only=True)
    pipe = load_sd_pipeline(model, lora_dir=lora)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cond = tuned.encode_text(["a red circle", ""])
        ours = tuned.predict_noise(x, 500, cond)
        ref = pipe.unet(x, torch.tensor([500, 500]), encoder_hidden_states=cond).sample
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
