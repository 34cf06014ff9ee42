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
