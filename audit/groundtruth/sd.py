"""Tiny but real Stable-Diffusion-layout models for tests, the demo and benchmarks.

Everything here produces ordinary diffusers folders: a model built by :func:`build_tiny_sd` loads with
``StableDiffusionPipeline.from_pretrained(dir, local_files_only=True, use_safetensors=True,
safety_checker=None)`` and a LoRA made by :func:`make_lora` loads with ``pipe.load_lora_weights(dir)``.
Nothing is downloaded: the CLIP tokenizer is a byte-level vocabulary written from scratch.

Design notes
------------
* The VAE is untrained at build time. Its posterior log-variance is initialised to ``_LOGVAR_INIT``
  (std ~ 0.007), so ``latent_dist.sample()`` is practically ``latent_dist.mean`` and latents carry the
  image deterministically. ``scaling_factor`` is set to 1/std of the latent means of a fixed,
  seeded batch of smooth random images.
* Training (:func:`train_tiny_sd`, :func:`make_lora`) precomputes the (frozen) text embeddings and
  the VAE latent means once, then runs the standard epsilon-prediction loss
  ``|| eps - unet(sqrt(a_t) z + sqrt(1-a_t) eps, t, c) ||^2`` with a DDPM noise schedule taken from
  the saved scheduler config. All randomness (batches, timesteps, noise, caption dropout) comes from
  one seeded ``torch.Generator``, so a run is repeatable on the same machine.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from audit.diffusion import make_process

__all__ = [
    "LORA_TARGET_MODULES",
    "LORA_WEIGHT_NAME",
    "build_tiny_sd",
    "load_sd_pipeline",
    "make_lora",
    "train_tiny_sd",
    "write_byte_level_clip_vocab",
]

LORA_TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_LOGVAR_INIT = -10.0  # posterior log-variance bias of the untrained VAE: std = exp(-5) ~ 0.0067
_SCHEDULER_KW = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
    prediction_type="epsilon",
)


# --------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-unicode table (256 printable characters)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_byte_level_clip_vocab(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write a minimal byte-level CLIP ``vocab.json`` (514 tokens) and an empty ``merges.txt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab_path, merges_path


def _build_tokenizer(model_max_length: int):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = write_byte_level_clip_vocab(tmp)
        # transformers 5: vocab_file=/merges_file= silently gives a 2-token tokenizer (PITFALLS.md)
        tok = CLIPTokenizer(vocab=str(vocab_path), merges=str(merges_path), model_max_length=model_max_length)
    if len(tok) < 500:
        raise RuntimeError(f"byte-level CLIP tokenizer came out with {len(tok)} tokens (expected 514)")
    ids = tok("a red circle").input_ids
    if len(set(ids)) <= 2:
        raise RuntimeError(f"byte-level CLIP tokenizer is degenerate: 'a red circle' -> {ids}")
    return tok


# --------------------------------------------------------------------------------------------------
# build / load
# --------------------------------------------------------------------------------------------------
def _smooth_random_images(n: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded, image-like (low-frequency) random batch in [-1, 1]: coarse noise upsampled bilinearly."""
    coarse = max(2, resolution // 8)
    low = torch.rand(n, 3, coarse, coarse, generator=generator) * 2 - 1
    img = F.interpolate(low, size=(resolution, resolution), mode="bilinear", align_corners=False)
    img = img + 0.1 * torch.randn(img.shape, generator=generator)
    return img.clamp(-1, 1)


@torch.no_grad()
def _latent_scaling_factor(vae, resolution: int, seed: int, n: int = 16) -> float:
    g = torch.Generator().manual_seed(seed + 12345)
    x = _smooth_random_images(n, resolution, g)
    lat = vae.encode(x).latent_dist.mean
    std = float(lat.float().std())
    return 1.0 / max(std, 1e-6)


def build_tiny_sd(
    out_dir: str | os.PathLike,
    *,
    resolution: int = 32,
    seed: int = 0,
    text_max_length: int = 16,
) -> Path:
    """Build a tiny untrained Stable Diffusion pipeline and save it (safetensors) to ``out_dir``.

    Layout: UNet2DConditionModel (32, 64) with cross-attention in the second block,
    AutoencoderKL (16, 32) -> vae_scale_factor 2 and 4 latent channels, a 2-layer CLIPTextModel of width 32,
    a byte-level CLIPTokenizer (514 tokens, ``model_max_length=text_max_length``) and a DDIMScheduler
    (scaled_linear 0.00085..0.012, 1000 steps, epsilon). Latents are ``resolution // 2`` on a side.
    Same ``seed`` -> bit-identical weights.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if resolution % 4 != 0:
        raise ValueError(f"resolution must be a multiple of 4 (VAE x2, UNet x2), got {resolution}")
    out_dir = Path(out_dir)
    vae_channels = (16, 32)
    vae_scale_factor = 2 ** (len(vae_channels) - 1)

    tokenizer = _build_tokenizer(text_max_length)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=resolution // vae_scale_factor,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,  # diffusers' legacy name: number of heads (64 ch -> 4 heads of 16)
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        block_out_channels=vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )
    with torch.no_grad():  # near-deterministic posterior: sample() ~ mean (see module docstring)
        lc = vae.config.latent_channels
        vae.quant_conv.weight[lc:].zero_()
        vae.quant_conv.bias[lc:].fill_(_LOGVAR_INIT)
    vae.register_to_config(scaling_factor=_latent_scaling_factor(vae, resolution, seed))

    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max(text_max_length, tokenizer.model_max_length),
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(**_SCHEDULER_KW)

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_sd_pipeline(model_dir: str | os.PathLike, lora_dir: str | os.PathLike | None = None, *, device: str = "cpu"):
    """Load a local SD folder offline (safetensors, no safety checker, progress bar off); optionally a LoRA."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir), local_files_only=True, use_safetensors=True, safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME)
    return pipe.to(device)


# --------------------------------------------------------------------------------------------------
# training helpers
# --------------------------------------------------------------------------------------------------
def _check_images(images: torch.Tensor, captions: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError("images must be a float tensor [N, 3, H, W] in [-1, 1]")
    images = images.detach().float().cpu()
    if images.numel() and (images.min() < -1.0001 or images.max() > 1.0001):
        raise ValueError("images must be scaled to [-1, 1]")
    captions = [""] * images.shape[0] if captions is None else [str(c) for c in captions]
    if len(captions) != images.shape[0]:
        raise ValueError(f"{len(captions)} captions for {images.shape[0]} images")
    return images, captions


@torch.no_grad()
def _encode_text(tokenizer, text_encoder, captions: Sequence[str], batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(captions), batch):
        ids = tokenizer(
            list(captions[i : i + batch]), padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids
        out.append(text_encoder(ids)[0])
    return torch.cat(out)


@torch.no_grad()
def _encode_latents(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    sf = float(vae.config.scaling_factor)
    return torch.cat([vae.encode(images[i : i + batch]).latent_dist.mean * sf for i in range(0, len(images), batch)])


def _diffusion_train_loop(
    unet, params, latents, cond, uncond, *, steps, batch_size, lr, generator, caption_dropout,
    weight_decay: float = 1e-2,
) -> list[float]:
    """Epsilon-prediction training of ``unet`` on precomputed latents / text embeddings."""
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler(**{k: v for k, v in _SCHEDULER_KW.items() if k != "set_alpha_to_one"})
    process = make_process(noise_sched)  # forward noising from the scheduler's own ᾱ table (audit/diffusion)
    T = noise_sched.config.num_train_timesteps
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = latents.shape[0]
    losses: list[float] = []
    unet.train()
    for _ in range(int(steps)):
        idx = torch.randint(0, n, (min(batch_size, n) if batch_size else n,), generator=generator)
        z0 = latents[idx]
        c = cond[idx]
        if caption_dropout > 0:
            drop = torch.rand(len(idx), generator=generator) < caption_dropout
            c = torch.where(drop[:, None, None], uncond.expand_as(c), c)
        t = torch.randint(0, T, (len(idx),), generator=generator)
        eps = torch.randn(z0.shape, generator=generator)
        zt = process.add_noise(z0, eps, t)
        pred = unet(zt, t, encoder_hidden_states=c).sample
        loss = F.mse_loss(pred.float(), eps.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    unet.eval()
    return losses


def _train_vae(vae, images, *, steps, batch_size, lr, generator) -> list[float]:
    """Brief autoencoder training (MSE on decode(mean)) so latents carry the image."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    n = images.shape[0]
    losses = []
    vae.train()
    for _ in range(int(steps)):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        x = images[idx]
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        loss = F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    vae.eval()
    return losses


def _replace_dir(src_tmp: Path, dst: Path) -> None:
    """Move the freshly saved ``src_tmp`` onto ``dst`` (never truncating files that may be mmapped)."""
    if dst.exists():
        backup = dst.with_name(dst.name + f".old-{os.getpid()}-{time.time_ns()}")
        os.replace(dst, backup)
        os.replace(src_tmp, dst)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src_tmp, dst)


def train_tiny_sd(
    model_dir: str | os.PathLike,
    images: torch.Tensor,
    captions: list[str],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    train_vae_steps: int = 0,
    out_dir: str | os.PathLike | None = None,
    *,
    vae_lr: float = 1e-3,
    caption_dropout: float = 0.1,
) -> Path:
    """Train the UNet of a local SD folder (epsilon prediction on text-conditioned VAE latents).

    ``images``: float [N, 3, H, W] in [-1, 1] at the model's resolution; ``captions``: N strings.
    If ``train_vae_steps > 0`` the VAE is first trained as an autoencoder (MSE, lr ``vae_lr``) and its
    ``scaling_factor`` is recomputed as 1/std of the training latents. The text encoder stays frozen.
    Captions are replaced by "" with probability ``caption_dropout`` (for classifier-free guidance).
    Deterministic under ``seed``. Saves in place (``out_dir=None``) or to ``out_dir``; returns the folder.
    A ``train_log.json`` with the losses is written next to the model.
    """
    from diffusers import StableDiffusionPipeline

    images, captions = _check_images(images, captions)
    model_dir = Path(model_dir)
    target = Path(out_dir) if out_dir is not None else model_dir
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir), local_files_only=True, use_safetensors=True, safety_checker=None,
        requires_safety_checker=False,
    )
    res = pipe.vae.config.sample_size
    if images.shape[-1] != res or images.shape[-2] != res:
        raise ValueError(f"images are {tuple(images.shape[-2:])}, the model expects {res}x{res}")
    pipe.text_encoder.requires_grad_(False)

    vae_losses: list[float] = []
    if train_vae_steps > 0:
        pipe.unet.requires_grad_(False)
        pipe.vae.requires_grad_(True)
        vae_losses = _train_vae(pipe.vae, images, steps=train_vae_steps, batch_size=batch_size, lr=vae_lr, generator=g)
        with torch.no_grad():
            lat = torch.cat([pipe.vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
        pipe.vae.register_to_config(scaling_factor=1.0 / max(float(lat.std()), 1e-6))
    pipe.vae.requires_grad_(False)
    pipe.unet.requires_grad_(True)

    latents = _encode_latents(pipe.vae, images)
    cond = _encode_text(pipe.tokenizer, pipe.text_encoder, captions)
    uncond = _encode_text(pipe.tokenizer, pipe.text_encoder, [""])
    losses = _diffusion_train_loop(
        pipe.unet, list(pipe.unet.parameters()), latents, cond, uncond, steps=steps, batch_size=batch_size,
        lr=lr, generator=g, caption_dropout=caption_dropout,
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-sd-", dir=target.parent))
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "train_log.json").write_text(json.dumps({
        "base_model": str(model_dir), "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
        "seed": int(seed), "train_vae_steps": int(train_vae_steps), "caption_dropout": float(caption_dropout),
        "n_images": int(images.shape[0]), "losses": losses, "vae_losses": vae_losses,
        "scaling_factor": float(pipe.vae.config.scaling_factor),
    }, indent=1))
    del pipe
    _replace_dir(tmp, target)
    return target


# --------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------
def make_lora(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    rank: int = 4,
    seed: int = 0,
    train_images: torch.Tensor | None = None,
    captions: list[str] | None = None,
    steps: int = 0,
    lr: float = 1e-3,
    batch_size: int = 8,
    init_scale: float = 0.0,
    caption_dropout: float = 0.0,
) -> Path:
    """Create a LoRA on the UNet attention projections (to_q, to_k, to_v, to_out.0) of a local SD folder.

    With ``steps > 0`` and ``train_images`` (+ ``captions``), only the LoRA parameters are trained with the
    epsilon-prediction loss (base frozen). With ``steps == 0`` and ``init_scale > 0``, the LoRA B matrices
    (zero at init) are set to seeded ``init_scale * randn`` so the adapter changes the model.
    Saved with ``StableDiffusionPipeline.save_lora_weights`` as ``out_dir/pytorch_lora_weights.safetensors``
    (plus ``lora_info.json``); load with ``pipe.load_lora_weights(out_dir)``. Deterministic under ``seed``.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []

    if steps > 0:
        if train_images is None:
            raise ValueError("make_lora(steps>0) needs train_images")
        images, captions = _check_images(train_images, captions)
        pipe = StableDiffusionPipeline.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True, safety_checker=None,
            requires_safety_checker=False,
        )
        unet = pipe.unet
        latents = _encode_latents(pipe.vae, images)
        cond = _encode_text(pipe.tokenizer, pipe.text_encoder, captions)
        uncond = _encode_text(pipe.tokenizer, pipe.text_encoder, [""])
        del pipe
    else:
        unet = UNet2DConditionModel.from_pretrained(
            str(model_dir), subfolder="unet", local_files_only=True, use_safetensors=True
        )

    unet.requires_grad_(False)
    lora_config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGET_MODULES),
    )
    torch.manual_seed(seed)
    unet.add_adapter(lora_config)
    lora_params = [p for n, p in unet.named_parameters() if "lora_" in n]
    if not lora_params:
        raise RuntimeError("add_adapter created no LoRA parameters")
    for p in lora_params:
        p.requires_grad_(True)

    if steps == 0 and init_scale > 0:
        with torch.no_grad():
            for name, p in sorted(unet.named_parameters()):
                if "lora_B" in name:
                    p.copy_(init_scale * torch.randn(p.shape, generator=g))
    elif steps > 0:
        losses = _diffusion_train_loop(
            unet, lora_params, latents, cond, uncond, steps=steps, batch_size=batch_size, lr=lr,
            generator=g, caption_dropout=caption_dropout, weight_decay=0.0,
        )

    unet_lora_state_dict = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(out_dir),
        unet_lora_layers=unet_lora_state_dict,
        safe_serialization=True,
        weight_name=LORA_WEIGHT_NAME,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    (out_dir / "lora_info.json").write_text(json.dumps({
        "base_model": str(model_dir), "rank": int(rank), "seed": int(seed), "steps": int(steps), "lr": float(lr),
        "batch_size": int(batch_size), "init_scale": float(init_scale), "caption_dropout": float(caption_dropout),
        "target_modules": list(LORA_TARGET_MODULES), "n_lora_tensors": len(unet_lora_state_dict),
        "losses": losses,
    }, indent=1))
    return out_dir
