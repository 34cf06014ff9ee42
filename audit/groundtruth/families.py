"""Tiny, real-class models of today's families (SDXL, SD3, Flux, PixArt), saved as diffusers folders.

Each builder makes the family's real diffusers pipeline at a toy size (a 16×16 latent grid at 32 px,
transformers of one or two blocks), with tokenizers written locally (a byte-level CLIP vocabulary, a
character-level T5 Unigram vocabulary; PITFALLS.md), and saves it with ``save_pretrained`` so the audit
loads it through ``load_target`` like any user model. Nothing is downloaded. Same ``seed`` →
bit-identical weights. :func:`train_denoiser` fits a loaded target's denoiser to a few images with the
model's own training objective (ε-MSE for VP, velocity MSE for flow), for ground-truth tests.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from audit.groundtruth.sd import _LOGVAR_INIT, _build_tokenizer, _latent_scaling_factor

__all__ = ["FAMILY_BUILDERS", "build_tiny_family", "build_t5_tokenizer", "train_denoiser"]

RESOLUTION = 32
CLIP_LEN = 16
T5_LEN = 24


def build_t5_tokenizer(model_max_length: int = T5_LEN):
    """A character-level T5 Unigram tokenizer (transformers 5: ``vocab`` as a list of (piece, score))."""
    from transformers import T5TokenizerFast

    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    tok = T5TokenizerFast(vocab=pieces, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
                          model_max_length=model_max_length)
    ids = tok("a red circle").input_ids
    if len(set(ids)) <= 3:
        raise RuntimeError(f"character-level T5 tokenizer is degenerate: 'a red circle' -> {ids}")
    return tok


def _t5(tokenizer, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=1,
                                   num_heads=2, decoder_start_token_id=0, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id))


def _clip(tokenizer, seed: int, *, projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                         projection_dim=32, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _vae(seed: int, *, shift: bool, resolution: int = RESOLUTION):
    """AutoencoderKL (16, 32): VAE factor 2, 4 latent channels, near-deterministic posterior."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=resolution)
    with torch.no_grad():
        vae.quant_conv.weight[4:].zero_()
        vae.quant_conv.bias[4:].fill_(_LOGVAR_INIT)
    vae.register_to_config(scaling_factor=_latent_scaling_factor(vae, resolution, seed))
    if shift:  # SD3 / Flux VAEs carry a shift as well as a scale
        vae.register_to_config(shift_factor=0.05)
    return vae


def _sdxl(seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = _build_tokenizer(CLIP_LEN), _build_tokenizer(CLIP_LEN)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", steps_offset=1, prediction_type="epsilon")
    return StableDiffusionXLPipeline(
        vae=_vae(seed + 1, shift=False), text_encoder=_clip(tok, seed + 2, projection=False), tokenizer=tok,
        text_encoder_2=_clip(tok2, seed + 3, projection=True), tokenizer_2=tok2, unet=unet, scheduler=sched)


def _sd3(seed: int, width: int = 16, resolution: int = RESOLUTION, text_len: int = CLIP_LEN):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2 = _build_tokenizer(text_len), _build_tokenizer(text_len)
    tok3 = build_t5_tokenizer(max(T5_LEN, text_len))
    torch.manual_seed(seed)
    # joint_attention_dim = T5 width (64) ≥ the two CLIP widths concatenated (32 + 32), as SD3 pads to it
    tr = SD3Transformer2DModel(sample_size=resolution // 2, patch_size=2, in_channels=4, num_layers=2,
                               attention_head_dim=8, num_attention_heads=width // 8, joint_attention_dim=64,
                               caption_projection_dim=width, pooled_projection_dim=64, out_channels=4)
    return StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(seed + 1, shift=True, resolution=resolution), text_encoder=_clip(tok, seed + 2, projection=True),
        tokenizer=tok, text_encoder_2=_clip(tok2, seed + 3, projection=True), tokenizer_2=tok2,
        text_encoder_3=_t5(tok3, 64, seed + 4), tokenizer_3=tok3)


def _flux(seed: int, resolution: int = RESOLUTION, text_len: int = T5_LEN):
    """``text_len``: the T5 tokenizer's ``model_max_length`` (FluxPipeline pads prompts to min(512, it))."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = _build_tokenizer(CLIP_LEN), build_t5_tokenizer(text_len)
    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                axes_dims_rope=[4, 6, 6], guidance_embeds=True)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    return FluxPipeline(transformer=tr, scheduler=sched, vae=_vae(seed + 1, shift=True, resolution=resolution),
                        text_encoder=_clip(tok, seed + 2, projection=False), tokenizer=tok,
                        text_encoder_2=_t5(tok2, 32, seed + 3), tokenizer_2=tok2)


def _pixart(seed: int):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tok = build_t5_tokenizer()
    torch.manual_seed(seed)
    tr = PixArtTransformer2DModel(sample_size=RESOLUTION // 2, num_layers=1, patch_size=2, attention_head_dim=8,
                                  num_attention_heads=2, caption_channels=32, in_channels=4, cross_attention_dim=16,
                                  out_channels=8, norm_type="ada_norm_single")
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
                                        beta_end=0.02, prediction_type="epsilon")
    return PixArtAlphaPipeline(tokenizer=tok, text_encoder=_t5(tok, 32, seed + 2), vae=_vae(seed + 1, shift=False),
                               transformer=tr, scheduler=sched)


FAMILY_BUILDERS: dict[str, Callable[[int], Any]] = {"sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "pixart": _pixart}


def build_tiny_family(family: str, out_dir: str | os.PathLike, *, seed: int = 0, **size: int) -> Path:
    """Build the tiny ``family`` model (sdxl, sd3, flux, pixart) and save it to ``out_dir``.

    ``size``: builder-specific sizes (sd3: ``width``, the transformer's inner dimension, default 16,
    ``resolution`` in pixels, default 32, and ``text_len``, the tokenizers' length, default 16; flux: ``resolution``
    (the VAE's ``sample_size``) and ``text_len``, the T5 tokenizer's length, default 24).
    """
    if family not in FAMILY_BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; choose from {sorted(FAMILY_BUILDERS)}")
    pipe = FAMILY_BUILDERS[family](seed, **size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def train_denoiser(target: Any, images: torch.Tensor, captions: Sequence[str], *, steps: int, lr: float = 1e-3,
                   seed: int = 0, t_range: tuple[int, int] | None = None) -> list[float]:
    """Fit ``target.denoiser`` (in place) to ``images`` with the model's own training objective.

    x_t = a(t) x0 + s(t) ε with t uniform in ``t_range`` (default: the whole chain), loss = MSE of the
    process's objective (ε for VP, velocity ε − x0 for flow), all of a batch at once. Seeded.
    """
    g = torch.Generator().manual_seed(seed)
    process = target.process
    lo, hi = t_range or (0, process.num_train_timesteps - 1)
    net = target.denoiser
    with torch.no_grad():
        x0 = target.encode(images).detach()
        cond = target.encode_text(list(captions)) if target.conditional else None
    # only what is trainable: the whole denoiser, or just a LoRA added with ``add_adapter``
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    net.train()
    losses = []
    for _ in range(int(steps)):
        t = torch.randint(lo, hi + 1, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t = process.add_noise(x0, eps, t)
        pred = process.to_eps(target._model_output(x_t, t, cond).float(), x_t, t)
        loss = process.objective_error(pred, eps, t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def make_random_lora(model_dir: str | os.PathLike, family: str, out_dir: str | os.PathLike, *, rank: int = 4,
                     seed: int = 0, init_scale: float = 0.3) -> Path:
    """A seeded, non-zero LoRA on the denoiser's attention projections, saved in the diffusers/peft layout
    (``pytorch_lora_weights.safetensors``) by the family's own ``save_lora_weights``."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipes = {"sd": ("StableDiffusionPipeline", "unet", "UNet2DConditionModel"),
             "sdxl": ("StableDiffusionXLPipeline", "unet", "UNet2DConditionModel"),
             "sd3": ("StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel"),
             "flux": ("FluxPipeline", "transformer", "FluxTransformer2DModel")}
    if family not in pipes:
        raise ValueError(f"no LoRA maker for {family!r}; choose from {sorted(pipes)}")
    pipe_name, sub, cls_name = pipes[family]
    net = getattr(diffusers, cls_name).from_pretrained(str(model_dir), subfolder=sub, local_files_only=True,
                                                       use_safetensors=True)
    torch.manual_seed(seed)
    net.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                               target_modules=list(LORA_TARGETS)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if "lora_B" in name:
                p.copy_(init_scale * torch.randn(p.shape, generator=g))
    layers = get_peft_model_state_dict(net)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    getattr(diffusers, pipe_name).save_lora_weights(str(out), **{f"{sub}_lora_layers": layers},
                                                    safe_serialization=True)
    return out


def peft_to_kohya(state: dict[str, torch.Tensor], rank: int, alpha: float | None = None,
                  unet_config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Rewrite a diffusers/peft UNet LoRA (``unet.<module>.lora_A.weight``) in the kohya / A1111 key layout
    (``lora_unet_<module with _>.lora_down.weight``, ``lora_up``, and ``alpha``; the adapter's scale is
    alpha / rank, default alpha = rank, i.e. scale 1).

    Module names stay diffusers' (``down_blocks_1_attentions_0_…``, as kohya's SD 1.x scripts write them),
    or, given ``unet_config``, become the SGM / LDM names kohya's SDXL scripts write
    (``input_blocks_4_1_transformer_blocks_0_attn1_to_q``)."""
    from audit.groundtruth.single_file import unet_to_ldm

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("unet."):
            raise ValueError(f"only UNet LoRA keys can be rewritten here, got {key}")
        module, _, rest = key[len("unet."):].rpartition(".lora_")
        if unet_config is not None:
            (ldm,) = unet_to_ldm({module + ".weight": value}, unet_config)
            module = ldm[: -len(".weight")]
        kohya = "lora_unet_" + module.replace(".", "_")
        part = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[rest]
        out[f"{kohya}.{part}"] = value.clone()
        out[f"{kohya}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    return out


def make_kohya_flux_lora(model_dir: str | os.PathLike, out_file: str | os.PathLike, *, rank: int = 4, seed: int = 0,
                         alpha: float | None = None, init_scale: float = 0.3) -> Path:
    """A seeded Flux LoRA in the kohya / sd-scripts layout, on the original (BFL) module names: the fused
    ``double_blocks_0_img_attn_qkv`` / ``txt_attn_qkv`` (one down-projection for q, k and v together), the
    attention output projections, the image MLP, and ``single_blocks_0_linear2``; ``alpha`` per module
    (default: rank). (The single blocks' fused ``linear1`` is left out: diffusers 0.42 splits it with
    Flux.1's fixed widths, 3072 / 12288, which a toy model does not have.)"""
    import json

    from safetensors.torch import save_file

    cfg = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
    inner = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    mlp = int(inner * float(cfg.get("mlp_ratio", 4.0)))
    shapes = {"double_blocks_0_img_attn_qkv": (3 * inner, inner), "double_blocks_0_txt_attn_qkv": (3 * inner, inner),
              "double_blocks_0_img_attn_proj": (inner, inner), "double_blocks_0_txt_attn_proj": (inner, inner),
              "double_blocks_0_img_mlp_0": (mlp, inner), "single_blocks_0_linear2": (inner, inner + mlp)}
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, (n_out, n_in) in shapes.items():
        key = f"lora_unet_{name}"
        state[f"{key}.lora_down.weight"] = init_scale * torch.randn(rank, n_in, generator=g)
        state[f"{key}.lora_up.weight"] = init_scale * torch.randn(n_out, rank, generator=g)
        state[f"{key}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    path = Path(out_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
