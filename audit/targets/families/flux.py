"""Flux.1 (dev / schnell): CLIP (pooled) + T5 conditioning, a rectified-flow transformer on packed latents.

The process works on the VAE's unpacked latents ``[B, C, H, W]`` (so per-element statistics and masks
mean the same as for other families); the adapter packs 2×2 latent patches into tokens
``[B, H/2 · W/2, 4C]`` with their ``img_ids`` (0, row, column) before the transformer and unpacks the
velocity after it. The transformer takes the timestep as σ = t / 1000. The guidance-distilled dev model
also takes a guidance value (its ``guidance_embeds``); schnell takes none. The scheduler's dynamic
shifting is resolved for this model's image token count.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from audit.diffusion.base import make_process
from audit.targets.base import TargetInfo
from audit.targets.conditioning import Conditioning
from audit.targets.families._common import PipelineTarget, vae_scale_factor
from audit.targets.registry import Family, register

DEFAULT_RESOLUTION = 1024  # Flux's default sample size (128 latents × VAE factor 8)
DEFAULT_GUIDANCE = 3.5  # FluxPipeline's default guidance for the distilled dev model


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, (H/2)(W/2), 4C]: 2×2 patches as tokens, row-major."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    b = tokens.shape[0]
    x = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """``[(H/2)(W/2), 3]`` position ids (0, row, column) of the packed tokens."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxTarget(PipelineTarget):
    family = "flux"

    def __init__(self, pipe: Any, info: TargetInfo, device, dtype, *, max_sequence_length: int,
                 guidance: float) -> None:
        latent = int(info.resolution) // vae_scale_factor(pipe.vae)
        process = make_process(pipe.scheduler, image_seq_len=(latent // 2) ** 2)
        super().__init__(pipe, "transformer", info, device, dtype, process)
        self.max_sequence_length = int(max_sequence_length)
        self.guidance = float(guidance) if pipe.transformer.config.get("guidance_embeds", False) else None

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        prompt_embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=list(captions), prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length)
        return Conditioning({"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled},
                            shared={"txt_ids": text_ids})

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        c = self._need(cond)
        b, ch, h, w = x_t.shape
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((b,), self.guidance, device=self.device, dtype=torch.float32)
        out = self.denoiser(
            hidden_states=pack(x_t), timestep=(t.float() / 1000.0).to(self.dtype), guidance=guidance,
            pooled_projections=c.batched["pooled_projections"], encoder_hidden_states=c.batched["encoder_hidden_states"],
            txt_ids=c.shared["txt_ids"], img_ids=image_ids(h, w, self.device, self.dtype)).sample
        return unpack(out, ch, h, w)


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> FluxTarget:
    res = int(options.get("resolution") or DEFAULT_RESOLUTION)
    if res % (2 * vae_scale_factor(pipe.vae)):
        raise ValueError(f"flux: resolution {res} must be a multiple of {2 * vae_scale_factor(pipe.vae)}")
    tok2 = getattr(pipe, "tokenizer_2", None)
    max_len = min(512, int(tok2.model_max_length)) if tok2 is not None else 512
    guidance = options.get("guidance")
    return FluxTarget(pipe, TargetInfo(kind="latent", resolution=res, conditional=True, **info), device, dtype,
                      max_sequence_length=options.get("max_sequence_length") or max_len,
                      guidance=DEFAULT_GUIDANCE if guidance is None else guidance)


FAMILY = register(Family(
    name="flux",
    title="Flux.1",
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    pipeline_class="FluxPipeline",
    required=("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    build=build,
))
