"""Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G + T5 conditioning, an MMDiT transformer, rectified flow.

The transformer takes the timestep on the 0 … 1000 scale (t = σ · T) and predicts the flow velocity.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from audit.targets.base import TargetInfo
from audit.targets.conditioning import Conditioning, ConditioningChoices
from audit.targets.families._common import (PipelineTarget, choose_caption_template, choose_resolution, length_check,
                                            vae_scale_factor)
from audit.targets.registry import Family, register


class SD3Target(PipelineTarget):
    family = "sd3"

    def __init__(self, pipe: Any, info: TargetInfo, device, dtype, max_sequence_length: int,
                 caption_template: str | None = None) -> None:
        super().__init__(pipe, "transformer", info, device, dtype)
        self.max_sequence_length = int(max_sequence_length)
        self.caption_template = caption_template

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=self.prompts(captions), prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return Conditioning({"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled})

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        c = self._need(cond)
        return self.denoiser(hidden_states=x_t, timestep=t.to(self.dtype),
                             encoder_hidden_states=c.batched["encoder_hidden_states"],
                             pooled_projections=c.batched["pooled_projections"]).sample


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> SD3Target:
    ch: ConditioningChoices = options.get("choices") or ConditioningChoices("sd3")
    scale = vae_scale_factor(pipe.vae)
    res = choose_resolution(ch, pipe, pipe.transformer, scale, scale * int(pipe.transformer.config.patch_size))
    tok3 = getattr(pipe, "tokenizer_3", None)
    limit = int(tok3.model_max_length) if tok3 is not None else 256
    default = min(256, limit)  # the pipeline's default: 256
    max_len = ch.pick("max_sequence_length", default, "family default",
                      f"StableDiffusion3Pipeline's default T5 length min(256, tokenizer_3.model_max_length={limit})",
                      length_check(max(limit, 256), "T5 prompt length"))
    ch.not_applicable("t5_attention_mask", "diffusers' SD3 prompt encoder passes no T5 attention mask")
    ch.not_applicable("guidance", "no distilled guidance input (classifier-free guidance is a per-test setting)")
    template = choose_caption_template(ch)
    return SD3Target(pipe, TargetInfo(kind="latent", resolution=res, conditional=True, **info), device, dtype,
                     max_len, caption_template=template)


FAMILY = register(Family(
    name="sd3",
    title="Stable Diffusion 3",
    pipelines=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    pipeline_class="StableDiffusion3Pipeline",
    required=("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    build=build,
))
