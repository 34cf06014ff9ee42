"""Tiny SD builders: real diffusers/transformers folders, deterministic, LoRA round-trip, training."""
from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from safetensors.torch import load_file

from audit.groundtruth.sd import (
    LORA_TARGET_MODULES,
    LORA_WEIGHT_NAME,
    build_tiny_sd,
    load_sd_pipeline,
    make_lora,
    train_tiny_sd,
)

RES = 32
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
VAE_FILE = "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "base", resolution=RES, seed=0, text_max_length=16)


def _fixed_inputs(batch: int = 2):
    z = torch.randn(batch, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(1))
    c = torch.randn(batch, 16, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 700][:batch])
    return z, t, c


@torch.no_grad()
def _unet_out(pipe):
    z, t, c = _fixed_inputs()
    return pipe.unet(z, t, encoder_hidden_states=c).sample


def _images(n: int = 6, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, RES, RES, generator=g) * 2 - 1


def test_build_loads_as_real_stable_diffusion(base):
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast

    pipe = StableDiffusionPipeline.from_pretrained(
        str(base), local_files_only=True, use_safetensors=True, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.tokenizer, (CLIPTokenizer, CLIPTokenizerFast))
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None
    assert (base / UNET_FILE).is_file() and (base / VAE_FILE).is_file()
    assert not list(base.rglob("*.bin"))

    # latent geometry
    assert pipe.vae_scale_factor == 2
    assert pipe.unet.config.sample_size == RES // 2
    assert pipe.vae.config.latent_channels == 4
    sf = pipe.vae.config.scaling_factor
    assert 0.05 < sf < 100 and sf != pytest.approx(0.18215)
    z, t, c = _fixed_inputs()
    out = _unet_out(pipe)
    assert out.shape == z.shape and torch.isfinite(out).all()

    # scheduler config
    cfg = pipe.scheduler.config
    assert cfg.num_train_timesteps == 1000 and cfg.beta_schedule == "scaled_linear"
    assert cfg.beta_start == pytest.approx(0.00085) and cfg.beta_end == pytest.approx(0.012)
    assert cfg.steps_offset == 1 and cfg.prediction_type == "epsilon" and not cfg.clip_sample

    # tokenizer is non-degenerate (transformers 5 vocab_file= pitfall)
    tok = pipe.tokenizer
    assert 510 <= len(tok) <= 520
    assert tok.model_max_length == 16
    ids = tok("a red circle").input_ids
    assert len(set(ids)) > 2 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok("a red circle").input_ids != tok("a blue square").input_ids
    assert pipe.text_encoder.config.vocab_size == len(tok)
    assert pipe.text_encoder.config.max_position_embeddings >= tok.model_max_length
    emb = pipe.text_encoder(tok(["a red circle"], padding="max_length", return_tensors="pt").input_ids)[0]
    assert emb.shape == (1, 16, pipe.unet.config.cross_attention_dim)

    # VAE round trip geometry and an end-to-end pipeline call
    x = _images(2)
    lat = pipe.vae.encode(x).latent_dist
    assert lat.mean.shape == (2, 4, RES // 2, RES // 2)
    assert float(lat.std.detach().max()) < 0.05  # near-deterministic posterior
    img = pipe("a red circle", num_inference_steps=2, height=RES, width=RES, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, RES, RES)


def test_same_seed_same_weights_different_seed_differs(base, tmp_path):
    again = build_tiny_sd(tmp_path / "again", resolution=RES, seed=0, text_max_length=16)
    other = build_tiny_sd(tmp_path / "other", resolution=RES, seed=1, text_max_length=16)
    for f in (UNET_FILE, VAE_FILE, "text_encoder/model.safetensors"):
        a, b, c = load_file(base / f), load_file(again / f), load_file(other / f)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f
        assert any(not torch.equal(a[k], c[k]) for k in a), f
    assert load_sd_pipeline(again).vae.config.scaling_factor == load_sd_pipeline(base).vae.config.scaling_factor


def test_lora_changes_output_and_round_trips(base, tmp_path):
    lora_dir = make_lora(base, tmp_path / "lora", rank=4, seed=0, init_scale=0.1)
    assert (lora_dir / LORA_WEIGHT_NAME).is_file()
    sd = load_file(lora_dir / LORA_WEIGHT_NAME)
    assert sd and all(k.startswith("unet.") for k in sd)
    assert any(".to_q." in k for k in sd) and any(".to_out.0." in k for k in sd)

    plain = _unet_out(load_sd_pipeline(base))
    p1 = load_sd_pipeline(base)
    p1.load_lora_weights(str(lora_dir))
    with_lora = _unet_out(p1)
    assert not torch.allclose(plain, with_lora, atol=1e-4)
    p2 = load_sd_pipeline(base, lora_dir)
    assert torch.equal(with_lora, _unet_out(p2))

    # the loaded adapter reproduces exactly the adapter make_lora built (rank/alpha metadata survives)
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    ref = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", local_files_only=True)
    torch.manual_seed(0)
    ref.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                               target_modules=list(LORA_TARGET_MODULES)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in sorted(ref.named_parameters()):
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        z, t, c = _fixed_inputs()
        assert torch.allclose(ref(z, t, encoder_hidden_states=c).sample, with_lora, atol=1e-6)

    # a zero-initialised, untrained LoRA is a no-op; a different seed gives a different adapter
    zero_dir = make_lora(base, tmp_path / "zero", rank=4, seed=0, init_scale=0.0)
    assert torch.allclose(_unet_out(load_sd_pipeline(base, zero_dir)), plain, atol=1e-6)
    other = load_file(make_lora(base, tmp_path / "other", rank=4, seed=1, init_scale=0.1) / LORA_WEIGHT_NAME)
    assert any(not torch.equal(sd[k], other[k]) for k in sd)


@pytest.mark.slow
def test_trained_lora_is_deterministic_and_base_frozen(base, tmp_path):
    x = _images(4)
    caps = ["a red circle", "a blue square", "a green line", "a dot"]
    a = make_lora(base, tmp_path / "a", rank=2, seed=5, train_images=x, captions=caps, steps=2, batch_size=2)
    b = make_lora(base, tmp_path / "b", rank=2, seed=5, train_images=x, captions=caps, steps=2, batch_size=2)
    sa, sb = load_file(a / LORA_WEIGHT_NAME), load_file(b / LORA_WEIGHT_NAME)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any("lora.up" in k and sa[k].abs().sum() > 0 for k in sa)  # B (up) moved off zero
    assert all("lora" in k for k in sa)  # only adapter weights saved
    assert not torch.allclose(_unet_out(load_sd_pipeline(base, a)), _unet_out(load_sd_pipeline(base)), atol=1e-6)


@pytest.mark.slow
def test_train_tiny_sd_changes_weights_deterministically(base, tmp_path):
    x = _images(6)
    caps = ["a red circle"] * 3 + ["a blue square"] * 3
    kw = dict(steps=3, batch_size=2, lr=1e-3, seed=0, train_vae_steps=1)
    o1 = train_tiny_sd(base, x, caps, out_dir=tmp_path / "t1", **kw)
    b0, u1 = load_file(base / UNET_FILE), load_file(o1 / UNET_FILE)
    assert any(not torch.equal(b0[k], u1[k]) for k in b0)
    v0, v1 = load_file(base / VAE_FILE), load_file(o1 / VAE_FILE)
    assert any(not torch.equal(v0[k], v1[k]) for k in v0)
    t0, t1 = load_file(base / "text_encoder/model.safetensors"), load_file(o1 / "text_encoder/model.safetensors")
    assert all(torch.equal(t0[k], t1[k]) for k in t0)  # text encoder frozen
    assert (o1 / "train_log.json").is_file()
    p = load_sd_pipeline(o1)
    assert len(p.tokenizer) == len(load_sd_pipeline(base).tokenizer)
    assert p.vae.config.scaling_factor != load_sd_pipeline(base).vae.config.scaling_factor

    # same seed, trained in place on a copy -> bit-identical to the out_dir run (determinism + in-place save)
    inplace = tmp_path / "inplace"
    shutil.copytree(base, inplace)
    assert train_tiny_sd(inplace, x, caps, **kw) == inplace
    ui, vi = load_file(inplace / UNET_FILE), load_file(inplace / VAE_FILE)
    assert all(torch.equal(u1[k], ui[k]) for k in u1)
    assert all(torch.equal(v1[k], vi[k]) for k in v1)
    assert not list(tmp_path.glob("*.old-*")) and not list(tmp_path.glob(".tmp-sd-*"))


def test_train_rejects_bad_inputs(base, tmp_path):
    with pytest.raises(ValueError):
        train_tiny_sd(base, torch.zeros(2, 3, 16, 16), ["a", "b"], 1, 2, 1e-3, 0, out_dir=tmp_path / "x")
    with pytest.raises(ValueError):
        train_tiny_sd(base, torch.zeros(2, 3, RES, RES), ["a"], 1, 2, 1e-3, 0, out_dir=tmp_path / "x")
    with pytest.raises(ValueError):
        make_lora(base, tmp_path / "l", steps=1)
