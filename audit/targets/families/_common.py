"""What the latent text-to-image families share: VAE coding, placement, the pipeline's own prompt encoder.

The adapters call the loaded pipeline's ``encode_prompt`` (the model's own conditioning code: which
text encoders, which hidden layer, pooling, padding) but never subclass or run the pipeline; the
denoising itself goes through the target's process.
"""
from __future__ import annotations

from typing import Any

import torch

from audit.diffusion.base import DiffusionProcess
from audit.targets.base import Target, TargetInfo
from audit.targets.models import _place


def vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


class PipelineTarget(Target):
    """A latent text-to-image model: VAE + text encoder(s) + a denoiser (UNet or transformer)."""

    can_decode = True

    def __init__(self, pipe: Any, denoiser_name: str, info: TargetInfo, device: torch.device, dtype: torch.dtype,
                 process: DiffusionProcess | None = None) -> None:
        super().__init__(pipe.scheduler, device, dtype, process)
        self.pipe = pipe
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                setattr(pipe, name, _place(module, device, dtype))
        self._denoiser_name = denoiser_name
        self.vae = pipe.vae
        self.info = info
        self.scaling_factor = float(self.vae.config.scaling_factor)
        shift = self.vae.config.get("shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self._denoiser_name)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean (deterministic), shifted and scaled by the VAE's own config."""
        latents = self.vae.encode(images.to(self.device, self.dtype)).latent_dist.mean
        return ((latents - self.shift_factor) * self.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    def _need(self, cond: Any) -> Any:
        if cond is None:
            raise ValueError("a text-conditional target needs `cond` (use encode_text; '' for the unconditional branch)")
        return cond.to(self.device, self.dtype)


def native_resolution(pipe: Any, denoiser: Any, scale: int) -> tuple[int | None, str]:
    """The pixel resolution the model's own configs give: the denoiser's ``sample_size`` × the VAE factor, else the
    VAE's ``sample_size`` (Flux's transformer has none; the Flux.1 and SDXL VAEs say 1024, SD 1.5's 512)."""
    ss = denoiser.config.get("sample_size", None) if denoiser is not None else None
    if ss:
        ss = ss[0] if isinstance(ss, (list, tuple)) else ss
        return int(ss) * scale, f"{type(denoiser).__name__}.config.sample_size={ss} × VAE factor {scale}"
    vae = getattr(pipe, "vae", None)
    vs = vae.config.get("sample_size", None) if vae is not None else None
    if vs:
        vs = vs[0] if isinstance(vs, (list, tuple)) else vs
        return int(vs), f"vae.config.sample_size={vs}"
    return None, ""


def choose_resolution(ch: Any, pipe: Any, denoiser: Any, scale: int, multiple: int,
                      family_default: int | None = None) -> int:
    """``target.resolution``, else the training metadata's, else :func:`native_resolution`, else the family's."""
    native, why = native_resolution(pipe, denoiser, scale)
    source = "model config"
    if native is None:
        if family_default is None:
            raise ValueError("the model's configs give no resolution; set target.resolution")
        native, source, why = family_default, "family default", "the model's configs give none"

    def check(v: Any) -> str:
        ok = isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % multiple == 0
        return "" if ok else f"must be a positive multiple of {multiple} for this model"
    return int(ch.pick("resolution", native, source, why, check))


def choose_caption_template(ch: Any) -> str | None:
    from audit.targets.conditioning import check_caption_template

    return ch.pick("caption_template", None, "family default", "captions are encoded as they are",
                   check=check_caption_template)


def length_check(limit: int, what: str):
    """A check for ``max_sequence_length``: 1 … ``limit`` (the tokenizer's / text encoder's own limit)."""
    def check(v: Any) -> str:
        ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit
        return "" if ok else f"must be an integer from 1 to {limit} ({what})"
    return check


def unet_multiple(unet: Any, scale: int) -> int:
    return scale * 2 ** (len(unet.config.block_out_channels) - 1)
