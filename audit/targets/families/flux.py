"""Flux.1 (dev / schnell): CLIP (pooled) + T5 conditioning, a rectified-flow transformer on packed latents.

The process works on the VAE's unpacked latents ``[B, C, H, W]`` (so per-element statistics and masks
mean the same as for other families); the adapter packs 2×2 latent patches into tokens
``[B, H/2 · W/2, 4C]`` with their ``img_ids`` (0, row, column) before the transformer and unpacks the
velocity after it. The transformer takes the timestep as σ = t / 1000. The guidance-distilled dev model
also takes a guidance value (its ``guidance_embeds``); schnell takes none. The scheduler's dynamic
shifting is resolved for this model's image token count.

Conditioning as trained (``target.*``, else the LoRA's training metadata, else the model's config): the resolution
(``vae.config.sample_size``: 1024 for the Flux.1 releases), the T5 prompt length (``max_sequence_length``; FluxPipeline
pads to 512), the T5 attention mask (``t5_attention_mask``, kohya's ``apply_t5_attn_mask``: padding tokens are masked
in the T5 encoder and in the transformer's joint attention; FluxPipeline masks nothing) and the distilled guidance.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from audit.diffusion.base import make_process
from audit.targets.base import TargetInfo
from audit.targets.conditioning import Conditioning, ConditioningChoices
from audit.targets.families._common import (PipelineTarget, choose_caption_template, choose_resolution, length_check,
                                            vae_scale_factor)
from audit.targets.registry import Family, register

DEFAULT_RESOLUTION = 1024  # Flux's default sample size (128 latents × VAE factor 8), when the VAE config has none
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
                 guidance: float, t5_attention_mask: bool = False, caption_template: str | None = None) -> None:
        latent = int(info.resolution) // vae_scale_factor(pipe.vae)
        process = make_process(pipe.scheduler, image_seq_len=(latent // 2) ** 2)
        super().__init__(pipe, "transformer", info, device, dtype, process)
        self.max_sequence_length = int(max_sequence_length)
        self.guidance = float(guidance) if pipe.transformer.config.get("guidance_embeds", False) else None
        self.t5_attention_mask = bool(t5_attention_mask)
        self.caption_template = caption_template

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        prompts = self.prompts(captions)
        if not self.t5_attention_mask:  # the pipeline's own encoder (no mask), as FluxPipeline conditions
            prompt_embeds, pooled, text_ids = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length)
            return Conditioning({"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled},
                                shared={"txt_ids": text_ids})
        # kohya's apply_t5_attn_mask: T5 sees the mask, and the transformer's joint attention ignores the padding
        pooled = self.pipe._get_clip_prompt_embeds(prompt=prompts, device=self.device, num_images_per_prompt=1)
        tok = self.pipe.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length,
                                    truncation=True, return_tensors="pt")
        mask = tok.attention_mask.to(self.device)
        prompt_embeds = self.pipe.text_encoder_2(tok.input_ids.to(self.device), attention_mask=mask)[0]
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=prompt_embeds.dtype)
        return Conditioning({"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled,
                             "txt_mask": mask.to(prompt_embeds.dtype)}, shared={"txt_ids": text_ids})

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        c = self._need(cond)
        b, ch, h, w = x_t.shape
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((b,), self.guidance, device=self.device, dtype=torch.float32)
        kwargs = None
        if "txt_mask" in c.batched:  # [B, L_txt] → a joint-attention mask over [text, image] tokens
            n_img = (h // 2) * (w // 2)
            keep = torch.cat([c.batched["txt_mask"] > 0.5, torch.ones(b, n_img, dtype=torch.bool, device=self.device)],
                             dim=1)
            kwargs = {"attention_mask": keep[:, None, None, :]}
        out = self.denoiser(
            hidden_states=pack(x_t), timestep=(t.float() / 1000.0).to(self.dtype), guidance=guidance,
            pooled_projections=c.batched["pooled_projections"], encoder_hidden_states=c.batched["encoder_hidden_states"],
            txt_ids=c.shared["txt_ids"], img_ids=image_ids(h, w, self.device, self.dtype),
            joint_attention_kwargs=kwargs).sample
        return unpack(out, ch, h, w)


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> FluxTarget:
    ch: ConditioningChoices = options.get("choices") or ConditioningChoices("flux")
    scale = vae_scale_factor(pipe.vae)
    res = choose_resolution(ch, pipe, None, scale, 2 * scale, family_default=DEFAULT_RESOLUTION)
    tok2 = getattr(pipe, "tokenizer_2", None)
    limit = int(tok2.model_max_length) if tok2 is not None else 512
    max_len = ch.pick("max_sequence_length", min(512, limit), "family default",
                      f"FluxPipeline's default T5 length min(512, tokenizer_2.model_max_length={limit})",
                      length_check(max(limit, 512), "T5 prompt length"))
    mask = ch.pick("t5_attention_mask", False, "family default", "FluxPipeline passes no T5 attention mask",
                   check=lambda v: "" if isinstance(v, bool) else "must be true or false")
    if pipe.transformer.config.get("guidance_embeds", False):
        guidance = ch.pick("guidance", DEFAULT_GUIDANCE, "family default", "FluxPipeline's default guidance 3.5",
                           check=lambda v: "" if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                           else "must be a non-negative number")
    else:
        ch.not_applicable("guidance", "this Flux model is not guidance-distilled (schnell: no guidance input)")
        guidance = DEFAULT_GUIDANCE
    template = choose_caption_template(ch)
    return FluxTarget(pipe, TargetInfo(kind="latent", resolution=res, conditional=True, **info), device, dtype,
                      max_sequence_length=max_len, guidance=guidance, t5_attention_mask=mask,
                      caption_template=template)


FAMILY = register(Family(
    name="flux",
    title="Flux.1",
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    pipeline_class="FluxPipeline",
    required=("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    build=build,
))
