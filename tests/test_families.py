"""Every model family through load_target: registry, process, attacks, costs, refusals, LoRA formats.

Tiny random-weight models of each family (real diffusers classes at toy sizes, saved with
``save_pretrained``, tokenizers built locally: audit/groundtruth/families.py) are loaded through the same
``load_target`` path a user's model takes. Membership detection on the new process is checked on a
tiny SD3-layout (flow-matching) model fine-tuned on 8 works until it memorises them, against its own
untrained base.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from audit.attacks import (  # noqa: E402
    PIA, PIAN, PFAMI, AttackSetupError, Calibrated, CLiD, LossAttack, ReDiffuse, SecMI, SimA, Wen, score_evidence)
from audit.attacks.gsa import GSA  # noqa: E402
from audit.groundtruth.synthetic import ARTISTS, render_artwork  # noqa: E402
from audit.diffusion import FlowMatching, VariancePreserving, img2img, make_process  # noqa: E402
from audit.stats import auc_with_ci, mann_whitney  # noqa: E402
from audit.targets import FAMILIES, TargetLoadError, load_target  # noqa: E402
from audit.types import EvidenceSet, ImageRecord  # noqa: E402

import audit.targets.families  # noqa: E402,F401  (every family registers itself: the lists below come from it)
from audit.groundtruth.families import FAMILY_BUILDERS  # noqa: E402

NEW_FAMILIES = tuple(sorted(FAMILY_BUILDERS))  # the families built by audit.groundtruth.families
#: the diffusion process each family is expected to have; a registered family missing here fails its tests
EXPECTED_PROCESS = {"pixel": "vp", "sd": "vp", "sdxl": "vp", "sd3": "flow", "flux": "flow", "pixart": "vp"}
PROCESS = {name: EXPECTED_PROCESS.get(name, "not declared in tests/test_families.py") for name in sorted(FAMILIES)}


def _render(res: int, offset: int, n: int, seed: int = 7) -> torch.Tensor:
    arr = np.stack([render_artwork(ARTISTS[i % 4], offset + i, size=res, seed=seed) for i in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _evidence(members: torch.Tensor, held_out: torch.Tensor, captions: list[str] | None = None) -> EvidenceSet:
    pixels = torch.cat([members, held_out]).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    roles = ["member"] * len(members) + ["nonmember"] * len(held_out)
    caps = captions or [f"a painting number {i}" for i in range(len(roles))]
    recs = [ImageRecord(image_id=hashlib.sha256(p.numpy().tobytes()).hexdigest(), path=f"mem://{i}", role=r,
                        caption=c) for i, (p, r, c) in enumerate(zip(pixels, roles, caps))]
    return EvidenceSet(recs, pixels)


@contextmanager
def count_denoiser_calls(cls):
    """Count the images passed through ``cls.forward`` (UNet or transformer, positional or keyword input)."""
    calls = {"n": 0}
    orig = cls.forward

    def counting(self, *a, **k):
        x = a[0] if a else k.get("hidden_states", k.get("sample"))
        calls["n"] += int(x.shape[0])
        return orig(self, *a, **k)

    cls.forward = counting
    try:
        yield calls
    finally:
        cls.forward = orig


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_sd, untrained_ddpm) -> dict[str, Path]:
    from audit.groundtruth.families import build_tiny_family

    root = tmp_path_factory.mktemp("families")
    dirs = {f: build_tiny_family(f, root / f, seed=0) for f in NEW_FAMILIES}
    dirs["sd"] = tiny_sd[0]
    dirs["pixel"] = untrained_ddpm.model_dir
    return dirs


def _load(dirs: dict[str, Path], family: str, **kw):
    extra = {"resolution": 32} if family == "flux" else {}
    return load_target(str(dirs[family]), local_files_only=True, device="cpu", **extra, **kw)


def _family_evidence(target, n_members: int = 3, n_held: int = 2) -> EvidenceSet:
    res = int(target.info.resolution)
    return _evidence(_render(res, 0, n_members), _render(res, 500, n_held))


# --------------------------------------------------------------------------------------------- the process layer
def test_flow_process_conversions_steps_and_shifted_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler

    proc = make_process(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    assert isinstance(proc, FlowMatching) and proc.kind == "flow"
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([100.0, 450.0, 900.0])
    x_t = proc.add_noise(x0, eps, t)
    sigma = (t / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    v = eps - x0  # the flow-matching target
    torch.testing.assert_close(proc.to_eps(v, x_t, t), eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(proc.pred_x0(x_t, eps, t), x0, rtol=1e-5, atol=1e-5)
    # the deterministic step is the Euler step of the flow ODE, dx/dσ = v, and it inverts exactly
    up = proc.step(x_t, eps, t, t + 50)
    torch.testing.assert_close(up, x_t + 0.05 * v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(proc.step(up, eps, t + 50, t), x_t, rtol=1e-5, atol=1e-5)
    # the loss attack's residual is the velocity residual
    v_hat = v + 0.1 * torch.randn(v.shape, generator=g)
    torch.testing.assert_close(proc.objective_error(proc.to_eps(v_hat, x_t, t), eps, t), v_hat - v,
                               rtol=1e-4, atol=1e-4)
    # the sampling schedule: σ evenly spaced in the unshifted domain, then shifted by shift·σ / (1 + (shift−1)σ)
    ts = np.array(proc.sampling_timesteps(4)) / 1000
    s = np.linspace(1.0, 1.0 / 1000, 4)
    s = 3 * s / (1 + 2 * s)  # the scheduler's table is shifted once at construction ...
    s = np.linspace(s[0], s[-1], 4)
    np.testing.assert_allclose(ts[1:], (3 * s / (1 + 2 * s))[1:], rtol=1e-5)  # ... and the inference σ again
    assert ts[0] == pytest.approx(0.999)  # σ = 1 (singular for ε̂) starts one step in, as VP samplers do


def test_flow_dynamic_shift_follows_the_image_token_count():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    small, large = make_process(sched, image_seq_len=256), make_process(sched, image_seq_len=4096)
    assert small.mu() == pytest.approx(0.5) and large.mu() == pytest.approx(1.15)
    # a larger image is shifted further towards noise at every step
    assert all(a < b for a, b in zip(small.sampling_timesteps(6)[1:], large.sampling_timesteps(6)[1:]))
    with pytest.raises(ValueError, match="image_seq_len"):
        make_process(sched).sampling_timesteps(4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_vp_process_converts_every_prediction_type_to_eps(prediction_type):
    from diffusers import DDPMScheduler

    proc = make_process(DDPMScheduler(prediction_type=prediction_type))
    assert isinstance(proc, VariancePreserving)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([10, 700])
    x_t = proc.add_noise(x0, eps, t)
    a, s = proc.coefficients(t, x0)
    out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction_type]
    torch.testing.assert_close(proc.to_eps(out, x_t, t), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(proc.objective_error(eps + 1.0, eps, t), torch.ones_like(eps))


# --------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("family", list(PROCESS))
def test_registry_loads_each_family_with_its_process(family, family_dirs):
    target = _load(family_dirs, family)
    assert target.family == target.info.family == family
    assert target.process.kind == PROCESS[family] == target.info.process["kind"]
    assert isinstance(target.denoiser, torch.nn.Module)
    x0 = target.encode(torch.zeros(2, 3, target.info.resolution, target.info.resolution))
    cond = target.encode_text(["a", "b"]) if target.conditional else None
    eps = target.predict_noise(target.add_noise(x0, torch.randn_like(x0), 300), 300, cond)
    assert eps.shape == x0.shape and torch.isfinite(eps).all()


def test_unknown_pipeline_class_is_refused_in_one_line(family_dirs, tmp_path):
    copy = tmp_path / "other"
    shutil.copytree(family_dirs["pixart"], copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "WuerstchenCombinedPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(TargetLoadError) as err:
        load_target(str(copy), local_files_only=True)
    msg = str(err.value)
    assert "\n" not in msg and "WuerstchenCombinedPipeline" in msg
    assert all(name in msg for name in FAMILIES)


def test_single_file_checkpoint_needs_its_config_and_refuses_pickles(family_dirs, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(family_dirs["sd"] / "unet" / "diffusion_pytorch_model.safetensors", ckpt)
    with pytest.raises(TargetLoadError, match="single-file checkpoint: set target.config"):
        load_target(str(ckpt), local_files_only=True)
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"not opened")
    with pytest.raises(TargetLoadError, match="refusing pickle checkpoint"):
        load_target(str(pickled), config=str(family_dirs["sd"]), local_files_only=True)
    with pytest.raises(TargetLoadError, match="not supported for PixArt"):
        load_target(str(ckpt), config=str(family_dirs["pixart"]), local_files_only=True)


# --------------------------------------------------------------------------------------------- attacks per family
def _suite(target) -> dict:
    suite = {"loss": LossAttack(timesteps=[100, 500], n_noise=1), "pia": PIA(t=200), "sima": SimA(),
             "secmi": SecMI(t_sec=20, interval=10), "rediffuse": ReDiffuse(t=100, steps=2, n=1, space="diffusion"),
             "pfami": PFAMI(strengths=[0.9], timesteps=[100]), "gsa": GSA(timesteps=[100])}
    if target.process.kind == "vp":
        suite["pian"] = PIAN(t=200)
    if target.conditional:
        suite["clid"] = CLiD(timesteps=[500], n_clips=2)
        suite["wen"] = Wen(n_generations=1, num_inference_steps=10)
    return suite


@pytest.mark.parametrize("family", list(PROCESS))
def test_declared_evaluations_equal_counted_denoiser_calls(family, family_dirs):
    target = _load(family_dirs, family)
    ev = _family_evidence(target)
    cls = type(target.denoiser)
    for name, attack in _suite(target).items():
        with count_denoiser_calls(cls) as calls:
            score_evidence(target, ev, {name: attack}, batch_size=4, seed=0, progress=False)
        assert calls["n"] == attack.evaluations_per_image() * len(ev), (family, name)


@pytest.mark.parametrize("family", list(PROCESS))
def test_scores_do_not_depend_on_batch_size_and_repeat_exactly(family, family_dirs):
    target = _load(family_dirs, family)
    ev = _family_evidence(target)
    suite = {k: v for k, v in _suite(target).items() if k != "gsa"}

    def run(batch_size, seed=3, attacks=suite):
        df = score_evidence(target, ev, attacks, batch_size=batch_size, seed=seed, progress=False).df
        return df.sort_values(["attack", "image_id"]).reset_index(drop=True)

    a, b, again = run(2), run(5), run(2)
    assert list(a["image_id"]) == list(b["image_id"])
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(a["score"], again["score"])
    other = run(2, seed=4, attacks={"loss": suite["loss"]})
    assert not np.allclose(other["score"], a[a["attack"] == "loss"]["score"])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_attacks_that_do_not_carry_over_refuse_flow_models_in_one_line(family, family_dirs):
    target = _load(family_dirs, family)
    with pytest.raises(AttackSetupError) as err:
        PIAN().check_target(target)
    assert "\n" not in str(err.value) and "flow-matching" in str(err.value)
    with pytest.raises(AttackSetupError) as err:  # refused by the runner too, before any work
        score_evidence(target, _family_evidence(target), {"pian": PIAN()}, progress=False)
    vp_reference = _load(family_dirs, "sdxl")
    with pytest.raises(AttackSetupError, match="reference is a vp model"):
        Calibrated(LossAttack(), reference=vp_reference).check_target(target)


def test_loss_attack_uses_each_process_default_timesteps(family_dirs):
    flow, vp = _load(family_dirs, "sd3"), _load(family_dirs, "sdxl")
    attack = LossAttack()
    assert attack.timesteps_for(flow) == [400, 500, 600] and attack.timesteps_for(vp) == [100, 200, 300]
    assert len(FlowMatching.default_loss_timesteps) == len(VariancePreserving.default_loss_timesteps) == 3


@pytest.mark.parametrize("family", list(PROCESS))
def test_reference_calibration_on_every_family(family, family_dirs, tmp_path):
    """Against itself every calibrated score is exactly 0; against a different model it is not."""
    target = _load(family_dirs, family)
    ev = _family_evidence(target)
    same = score_evidence(target, ev, {"cal": Calibrated(LossAttack(timesteps=[300], n_noise=1), reference=target)},
                          batch_size=4, seed=0, progress=False)
    assert (same.df["score"] == 0).all()
    if family in ("pixel", "sd"):
        return
    from audit.groundtruth.families import build_tiny_family

    other = _load({family: build_tiny_family(family, tmp_path / "other", seed=5)}, family)
    diff = score_evidence(target, ev, {"cal": Calibrated(LossAttack(timesteps=[300], n_noise=1), reference=other)},
                          batch_size=4, seed=0, progress=False)
    assert (diff.df["score"].abs() > 0).all()


# --------------------------------------------------------------------------------------------- LoRA formats
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_kohya_and_peft_lora_layouts_give_the_unfused_adapter(family, family_dirs, tmp_path):
    import diffusers
    from safetensors.torch import load_file, save_file

    from audit.groundtruth.families import make_random_lora, peft_to_kohya

    lora = make_random_lora(family_dirs[family], family, tmp_path / "peft", rank=4, seed=1)
    kohya = tmp_path / "kohya.safetensors"
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    save_file(peft_to_kohya(state, rank=4), str(kohya))
    assert all(k.startswith("lora_unet_") for k in load_file(str(kohya)))
    base = _load(family_dirs, family)
    via_peft = _load(family_dirs, family, lora=str(lora))
    via_kohya = _load(family_dirs, family, lora=str(kohya))
    assert len({base.fingerprint, via_peft.fingerprint, via_kohya.fingerprint}) == 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    cond = base.encode_text(["a red circle", "blue"])
    with torch.inference_mode():
        e_base, e_peft, e_kohya = (t.predict_noise(x, 300, cond) for t in (base, via_peft, via_kohya))
        pipe_cls = {"sd": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline}[family]
        pipe = pipe_cls.from_pretrained(str(family_dirs[family]), local_files_only=True)
        pipe.load_lora_weights(str(lora))  # the adapter as peft applies it, not fused
        kwargs = {}
        if family == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.batched["text_embeds"],
                                           "time_ids": cond.batched["time_ids"]}
        hidden = cond.batched["encoder_hidden_states"] if family == "sdxl" else cond
        unfused = pipe.unet(x, torch.tensor([300, 300]), encoder_hidden_states=hidden, **kwargs).sample
    assert (e_peft - e_base).abs().max() > 1e-3  # the adapter changes the model
    torch.testing.assert_close(e_kohya, e_peft, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e_peft, unfused, rtol=1e-4, atol=1e-5)
    # a kohya alpha ≠ rank scales the adapter by alpha / rank: the same as halving every up-projection
    save_file(peft_to_kohya(state, rank=4, alpha=2.0), str(tmp_path / "kohya_half.safetensors"))
    halved = {k: v * 0.5 if "lora_B" in k else v for k, v in state.items()}
    save_file(halved, str(tmp_path / "peft_half.safetensors"))
    e_kh, e_ph = (_load(family_dirs, family, lora=str(tmp_path / f)).predict_noise(x, 300, cond).detach()
                  for f in ("kohya_half.safetensors", "peft_half.safetensors"))
    torch.testing.assert_close(e_kh, e_ph, rtol=1e-4, atol=1e-5)
    assert (e_kh - e_peft).abs().max() > 1e-4


def test_sdxl_kohya_file_in_sgm_block_names_gives_the_unfused_adapter(family_dirs, tmp_path):
    """kohya's SDXL scripts name modules as the original UNet does (``input_blocks_4_1_…``); diffusers renumbers
    them with the UNet's own layers_per_block (the tiny UNet has 1, SDXL 2: a wrong guess maps to wrong blocks)."""
    from safetensors.torch import load_file, save_file

    from audit.groundtruth.families import make_random_lora, peft_to_kohya

    lora = make_random_lora(family_dirs["sdxl"], "sdxl", tmp_path / "peft", rank=4, seed=3)
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    config = json.loads((family_dirs["sdxl"] / "unet" / "config.json").read_text())
    sgm = peft_to_kohya(state, rank=4, alpha=2.0, unet_config=config)
    assert any("_input_blocks_" in k for k in sgm) and any("_output_blocks_" in k for k in sgm)
    assert not any("down_blocks" in k or "up_blocks" in k for k in sgm)
    save_file(sgm, str(tmp_path / "sgm.safetensors"))
    fused = _load(family_dirs, "sdxl", lora=str(tmp_path / "sgm.safetensors"))
    unfused = _load(family_dirs, "sdxl")
    unfused.pipe.load_lora_weights(str(tmp_path / "sgm.safetensors"))  # peft adapter, not fused
    base = _load(family_dirs, "sdxl")
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = base.encode_text(["a red circle", "blue"])
    with torch.inference_mode():
        e_fused, e_unfused, e_base = (t.predict_noise(x, 300, cond) for t in (fused, unfused, base))
    assert (e_fused - e_base).abs().max() > 1e-3
    torch.testing.assert_close(e_fused, e_unfused, rtol=1e-4, atol=1e-5)
    # and it is the peft adapter at scale alpha / rank = 0.5
    half = {k: v * 0.5 if "lora_B" in k else v for k, v in state.items()}
    save_file(half, str(tmp_path / "peft_half.safetensors"))
    with torch.inference_mode():
        e_peft = _load(family_dirs, "sdxl", lora=str(tmp_path / "peft_half.safetensors")).predict_noise(x, 300, cond)
    torch.testing.assert_close(e_fused, e_peft, rtol=1e-4, atol=1e-5)


def test_flux_kohya_lora_fused_equals_the_unfused_adapter_and_the_weight_update(family_dirs, tmp_path):
    """A kohya / sd-scripts Flux file (original BFL names, fused qkv, alpha ≠ rank) applied and fused by
    load_target = the same file as diffusers' unfused peft adapter = the base weights plus (α/r)·up·down
    written by hand into the matching diffusers projections (q, k, v as row blocks of the fused update)."""
    from safetensors.torch import load_file

    from audit.groundtruth.families import make_kohya_flux_lora

    rank, alpha = 4, 2.0
    kohya = make_kohya_flux_lora(family_dirs["flux"], tmp_path / "flux_kohya.safetensors", rank=rank, seed=4,
                                 alpha=alpha)
    fused = _load(family_dirs, "flux", lora=str(kohya))
    assert fused.info.lora == (str(kohya),)  # every module of the file was applied (strict)
    unfused = _load(family_dirs, "flux")
    unfused.pipe.load_lora_weights(str(kohya))
    by_hand = _load(family_dirs, "flux")
    net, sd = by_hand.denoiser, load_file(str(kohya))
    inner = net.config.num_attention_heads * net.config.attention_head_dim
    targets = {"double_blocks_0_img_attn_qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                                "transformer_blocks.0.attn.to_v"],
               "double_blocks_0_txt_attn_qkv": ["transformer_blocks.0.attn.add_q_proj",
                                                "transformer_blocks.0.attn.add_k_proj",
                                                "transformer_blocks.0.attn.add_v_proj"],
               "double_blocks_0_img_attn_proj": ["transformer_blocks.0.attn.to_out.0"],
               "double_blocks_0_txt_attn_proj": ["transformer_blocks.0.attn.to_add_out"],
               "double_blocks_0_img_mlp_0": ["transformer_blocks.0.ff.net.0.proj"],
               "single_blocks_0_linear2": ["single_transformer_blocks.0.proj_out"]}
    modules = dict(net.named_modules())
    with torch.no_grad():
        for name, dests in targets.items():
            delta = (alpha / rank) * sd[f"lora_unet_{name}.lora_up.weight"] @ sd[f"lora_unet_{name}.lora_down.weight"]
            rows = delta.split(inner) if len(dests) == 3 else [delta]
            for dest, d in zip(dests, rows):
                modules[dest].weight += d
    cond = by_hand.encode_text(["a red circle", "blue"])
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    base = _load(family_dirs, "flux")
    with torch.inference_mode():
        e = {k: t.predict_noise(x, 400, cond) for k, t in
             {"fused": fused, "unfused": unfused, "by_hand": by_hand, "base": base}.items()}
    assert (e["fused"] - e["base"]).abs().max() > 1e-3
    torch.testing.assert_close(e["fused"], e["unfused"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e["fused"], e["by_hand"], rtol=1e-4, atol=1e-5)


def test_flux_lora_applies_and_pixart_lora_is_refused(family_dirs, tmp_path):
    from audit.groundtruth.families import make_random_lora

    lora = make_random_lora(family_dirs["flux"], "flux", tmp_path / "flux_lora", rank=4, seed=2)
    base, tuned = _load(family_dirs, "flux"), _load(family_dirs, "flux", lora=str(lora))
    assert tuned.info.lora and tuned.fingerprint != base.fingerprint
    ev = _family_evidence(base)
    cal = score_evidence(tuned, ev, {"cal": Calibrated(LossAttack(n_noise=1), reference=base)},
                         batch_size=4, seed=0, progress=False)
    assert (cal.df["score"].abs() > 0).all()
    with pytest.raises(TargetLoadError, match="LoRA adapters are not supported for PixArt"):
        _load(family_dirs, "pixart", lora=str(lora))


# --------------------------------------------------------------------------------------------- reconstruction loops
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_generation_and_img2img_are_deterministic_and_counted(family, family_dirs):
    from audit.reconstruction.sampling import GenerationRecord, generate

    target = _load(family_dirs, family)
    rec = GenerationRecord.new(target, "a red circle", 3, seed=0, steps=4, guidance_scale=2.0, batch_size=2)
    # the flow scheduler's own shifted schedule, from (almost) pure noise down: σ = 1 − 1/T, then shifted points
    assert rec.timesteps[0] == pytest.approx(999.0) and rec.timesteps == sorted(rec.timesteps, reverse=True)
    assert all(0 < t < 999 for t in rec.timesteps[1:])
    before = target.unet_evals
    a = generate(target, rec)
    assert target.unet_evals - before == 3 * 4 * 2  # images × steps × (guided: conditional + unconditional)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, generate(target, rec))
    assert len(torch.unique(a)) > 10  # real images, not a constant from a singular first step
    x0 = target.encode(_render(32, 0, 2))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    before = target.unet_evals
    out = img2img(target, x0, noise, 300, 3, target.encode_text(["a", "b"]))
    assert target.unet_evals - before == 2 * 3 and out.shape == x0.shape


# --------------------------------------------------------------------------------------------- detection (flow)
@pytest.fixture(scope="session")
def flow_finetune(tmp_path_factory):
    """A tiny SD3-layout flow model, and a copy fine-tuned on 8 works until it memorises them."""
    from audit.groundtruth.families import build_tiny_family, train_denoiser

    root = tmp_path_factory.mktemp("flow_ft")
    base_dir = build_tiny_family("sd3", root / "base", seed=0, width=64, resolution=16)
    members, held_out = _render(16, 0, 8), _render(16, 1000, 16)
    target = load_target(str(base_dir), local_files_only=True, device="cpu")
    train_denoiser(target, members, ["a painting"] * len(members), steps=300, lr=3e-3, seed=0)
    target.pipe.save_pretrained(root / "tuned", safe_serialization=True)
    return base_dir, root / "tuned", _evidence(members, held_out, ["a painting"] * 24)


def _auc(table, attack):
    pos, neg = table.scores(attack, "member"), table.scores(attack, "nonmember")
    return auc_with_ci(pos, neg, n_boot=500, seed=0), mann_whitney(pos, neg).p_value


def test_flow_model_memorisation_is_detected_and_its_untrained_base_is_not(flow_finetune):
    base_dir, tuned_dir, ev = flow_finetune
    base = load_target(str(base_dir), local_files_only=True, device="cpu")
    tuned = load_target(str(tuned_dir), local_files_only=True, device="cpu")
    suite = {"loss": LossAttack(), "pia": PIA(), "sima": SimA(), "secmi": SecMI(),
             "loss_cal": Calibrated(LossAttack(), reference=base)}
    on_tuned = score_evidence(tuned, ev, suite, batch_size=12, seed=0, progress=False)
    for name in suite:
        auc, p = _auc(on_tuned, name)
        assert auc.auc > 0.8 and p < 0.01, (name, auc)
    on_base = score_evidence(base, ev, {"loss": LossAttack()}, batch_size=12, seed=0, progress=False)
    auc, p = _auc(on_base, "loss")
    assert auc.lo < 0.5 < auc.hi and p > 0.05, auc


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_reconstruction_screen_runs_on_every_family_at_its_declared_cost(family, family_dirs):
    from audit.reconstruction.runner import run_reconstruction

    target = _load(family_dirs, family)
    pixels = _render(32, 0, 4).add(1).mul(127.5).round().to(torch.uint8)
    roles = ["suspect", "suspect", "control", "control"]
    recs = [ImageRecord(image_id=hashlib.sha256(p.numpy().tobytes()).hexdigest(), path=f"mem://{i}", role=r,
                        caption=f"work {i}") for i, (p, r) in enumerate(zip(pixels, roles))]
    ev = EvidenceSet(recs, pixels)
    gen_n, gen_steps, in_steps, resample, i2i_steps, i2i_n = 2, 3, 3, 2, 2, 1
    cfg = {"enabled": True, "batch_size": 4,
           "generate": {"n": gen_n, "steps": gen_steps, "guidance_scale": 2.0, "min_clique": 2},
           "inpaint": {"masks": ["half"], "steps": in_steps, "resample": resample},
           "img2img": {"strength": 0.5, "steps": i2i_steps, "n": i2i_n}, "figures": {"enabled": False}}
    out = run_reconstruction(target, ev, cfg, None, seed=0, progress=False)
    expected = (4 * gen_n * gen_steps * 2  # 4 distinct prompts, guided: conditional + unconditional
                + 4 * (in_steps * resample - (resample - 1))  # RePaint, unguided
                + 4 * i2i_n * i2i_steps)
    assert out.unet_evals == expected
    assert {"recon_gen_tiled_l2", "recon_inpaint_half", "recon_img2img_tiled_l2"} <= set(out.scores.df["attack"])
    assert out.scores.df["score"].notna().all()


def test_dry_run_counts_and_estimates_before_a_run(family_dirs, tmp_path):
    """scripts/dry_run.py: per-attack counted evaluations equal the declared ones; the suite shares calls."""
    import importlib.util

    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR

    spec = importlib.util.spec_from_file_location("dry_run", Path(__file__).resolve().parents[1] / "scripts" / "dry_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = ["path,role,caption"]
    for i, img in enumerate(_render(32, 0, 6).add(1).mul(127.5).round().to(torch.uint8)):
        from PIL import Image

        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / f"w{i}.png")
        rows.append(f"{tmp_path / f'w{i}.png'},{'suspect' if i < 3 else 'control'},work {i}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("audit", overrides=["experiment=own_model", f"target.source={family_dirs['sd3']}",
                                          "target.local_files_only=true", f"data.manifest={tmp_path / 'm.csv'}",
                                          "attack=[loss,pia,sima]", "runtime.batch_size=4", "runtime.device=cpu"])
    r = mod.dry_run(cfg)
    assert r["family"] == "sd3" and r["n_works"] == 6 and r["batch"] == 4
    assert all(row["counted"] == row["declared"] for row in r["rows"])
    assert r["suite"]["counted"] == 6 + 2  # loss 6, PIA 2; SimA's query is PIA's clean-end ε₀ (shared)
    assert r["suite"]["estimate_s"] == pytest.approx(r["suite"]["batch_s"] / 4 * 6)
