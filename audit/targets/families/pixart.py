"""PixArt-α / Σ: T5 conditioning (with its attention mask), a DiT with adaLN-single, VP diffusion.

The released models learn the variance too (``out_channels = 2 × in_channels``); the audit uses the
prediction half (the first ``in_channels`` channels), as the pipelines do.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from audit.targets.base import TargetInfo
from audit.targets.conditioning import Conditioning, ConditioningChoices
from audit.targets.families._common import (PipelineTarget, choose_caption_template, choose_resolution, length_check,
                                            vae_scale_factor)
from audit.targets.registry import Family, register


class PixArtTarget(PipelineTarget):
    family = "pixart"

    def __init__(self, pipe: Any, info: TargetInfo, device, dtype, max_sequence_length: int,
                 caption_template: str | None = None) -> None:
        super().__init__(pipe, "transformer", info, device, dtype)
        self.max_sequence_length = int(max_sequence_length)
        self.caption_template = caption_template

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        prompt_embeds, mask, _, _ = self.pipe.encode_prompt(
            self.prompts(captions), do_classifier_free_guidance=False, num_images_per_prompt=1, device=self.device,
            clean_caption=False, max_sequence_length=self.max_sequence_length)
        return Conditioning({"encoder_hidden_states": prompt_embeds, "encoder_attention_mask": mask})

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        c = self._need(cond)
        tr = self.denoiser
        added = {"resolution": None, "aspect_ratio": None}
        if tr.config.sample_size == 128:  # PixArt-α 1024 px takes size and aspect-ratio conditioning
            b, res = x_t.shape[0], float(self.info.resolution)
            added = {"resolution": torch.tensor([[res, res]], device=self.device, dtype=self.dtype).expand(b, 2),
                     "aspect_ratio": torch.ones(b, 1, device=self.device, dtype=self.dtype)}
        out = tr(x_t, encoder_hidden_states=c.batched["encoder_hidden_states"],
                 encoder_attention_mask=c.batched["encoder_attention_mask"], timestep=t,
                 added_cond_kwargs=added).sample
        if out.shape[1] == 2 * x_t.shape[1]:  # learned sigma: keep the prediction half
            out = out[:, : x_t.shape[1]]
        return out


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> PixArtTarget:
    ch: ConditioningChoices = options.get("choices") or ConditioningChoices("pixart")
    scale = vae_scale_factor(pipe.vae)
    res = choose_resolution(ch, pipe, pipe.transformer, scale, scale * int(pipe.transformer.config.patch_size))
    sigma = type(pipe).__name__.startswith("PixArtSigma")
    default_len = 300 if sigma else 120  # the pipelines' defaults (Σ: 300 tokens, α: 120)
    limit = int(pipe.tokenizer.model_max_length)
    max_len = ch.pick("max_sequence_length", min(default_len, limit), "family default",
                      f"the PixArt-{'Σ' if sigma else 'α'} pipeline's default T5 length {default_len} "
                      f"(tokenizer.model_max_length={limit})", length_check(max(limit, default_len), "T5 prompt length"))
    ch.pick("t5_attention_mask", True, "model config", "PixArt always passes the T5 attention mask",
            check=lambda v: "" if v is True else "PixArt is trained with the T5 attention mask; it cannot be switched off")
    ch.not_applicable("guidance", "no distilled guidance input (classifier-free guidance is a per-test setting)")
    template = choose_caption_template(ch)
    return PixArtTarget(pipe, TargetInfo(kind="latent", resolution=res, conditional=True, **info), device, dtype,
                        max_len, caption_template=template)


FAMILY = register(Family(
    name="pixart",
    title="PixArt",
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    pipeline_class="DiffusionPipeline",
    required=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    build=build,
    single_file=False,
))
