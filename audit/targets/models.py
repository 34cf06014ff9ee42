"""Concrete targets of the two classic families: unconditional pixel-space DDPMs and Stable Diffusion 1.x/2.x.

The registry entries are in audit/targets/families/pixel.py and sd.py; newer families live there too."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from audit.targets.base import Target, TargetInfo


def _place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a component; cast only when needed (diffusers warns on every dtype cast, even a no-op)."""
    module = module.to(device)
    if module.dtype != dtype:
        module = module.to(dtype=dtype)
    return module.eval()


class PixelTarget(Target):
    """An unconditional pixel-space diffusion model (``UNet2DModel`` + scheduler), e.g. a DDPM."""

    family = "pixel"

    def __init__(self, unet: Any, scheduler: Any, info: TargetInfo, device: torch.device, dtype: torch.dtype):
        super().__init__(scheduler, device, dtype)
        self.unet = _place(unet, device, dtype)
        self.info = info

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, torch.float32)

    def encode_text(self, captions: Sequence[str]) -> None:
        return None

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.unet(x_t, t).sample


class LatentTarget(Target):
    """A latent text-to-image model in the Stable Diffusion layout (VAE + CLIP text encoder + conditional UNet).

    Latents are ``vae.encode(x).latent_dist.mean × vae.config.scaling_factor`` (the posterior mean, so
    encoding is deterministic; the attacks add their own seeded noise).
    """

    family = "sd"
    can_decode = True

    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        info: TargetInfo,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int | None = None,
        caption_template: str | None = None,
    ):
        super().__init__(scheduler, device, dtype)
        self.max_sequence_length = int(max_sequence_length or tokenizer.model_max_length)
        self.caption_template = caption_template
        self.unet = _place(unet, device, dtype)
        self.vae = _place(vae, device, dtype)
        self.text_encoder = _place(text_encoder, device, dtype)
        self.tokenizer = tokenizer
        self.info = info
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = vae.config.get("shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype)
        latents = self.vae.encode(x).latent_dist.mean
        return ((latents - self.shift_factor) * self.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(
            self.prompts(captions),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tok.input_ids.to(self.device))[0]

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None:
            raise ValueError("a text-conditional target needs `cond` (use encode_text; '' for the unconditional branch)")
        return self.unet(x_t, t, encoder_hidden_states=cond.to(self.device, self.dtype)).sample
