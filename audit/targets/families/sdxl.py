"""Stable Diffusion XL: two CLIP text encoders (penultimate hidden states concatenated, pooled
projection of the second), size / crop micro-conditioning ids, ε- (or v-) prediction UNet."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Sequence

import torch

from audit.targets.base import TargetInfo
from audit.targets.conditioning import Conditioning, ConditioningChoices
from audit.targets.families._common import (PipelineTarget, choose_caption_template, choose_resolution, length_check,
                                            unet_multiple, vae_scale_factor)
from audit.targets.registry import Family, register


class SDXLTarget(PipelineTarget):
    family = "sdxl"

    def __init__(self, pipe: Any, info: TargetInfo, device, dtype, max_sequence_length: int | None = None,
                 caption_template: str | None = None) -> None:
        super().__init__(pipe, "unet", info, device, dtype)
        self.unet = self.pipe.unet
        self.max_sequence_length = int(max_sequence_length or pipe.tokenizer.model_max_length)
        self.caption_template = caption_template

    @contextmanager
    def _token_length(self):
        """The pipeline's prompt encoder pads both CLIP prompts to ``tokenizer.model_max_length``: set it to the
        length the model was trained with for the call (restored afterwards)."""
        toks = [t for t in (self.pipe.tokenizer, self.pipe.tokenizer_2) if t is not None]
        saved = [t.model_max_length for t in toks]
        try:
            for t in toks:
                t.model_max_length = self.max_sequence_length
            yield
        finally:
            for t, n in zip(toks, saved):
                t.model_max_length = n

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        with self._token_length():
            prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=self.prompts(captions), device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=False)
        res = int(self.info.resolution)
        # (original size, crop top-left, target size): an uncropped image at the model's resolution, as
        # the pipeline does by default and as kohya-style fine-tunes are trained on bucketed images
        time_ids = torch.tensor([[res, res, 0, 0, res, res]], dtype=prompt_embeds.dtype, device=self.device)
        return Conditioning({"encoder_hidden_states": prompt_embeds, "text_embeds": pooled,
                             "time_ids": time_ids.expand(len(captions), 6)})

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        c = self._need(cond)
        return self.unet(x_t, t, encoder_hidden_states=c.batched["encoder_hidden_states"],
                         added_cond_kwargs={"text_embeds": c.batched["text_embeds"],
                                            "time_ids": c.batched["time_ids"]}).sample


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> SDXLTarget:
    ch: ConditioningChoices = options.get("choices") or ConditioningChoices("sdxl")
    scale = vae_scale_factor(pipe.vae)
    res = choose_resolution(ch, pipe, pipe.unet, scale, unet_multiple(pipe.unet, scale))
    limit = min(int(pipe.tokenizer.model_max_length), int(pipe.tokenizer_2.model_max_length))
    max_len = ch.pick("max_sequence_length", limit, "model config", f"tokenizer.model_max_length={limit} (CLIP)",
                      length_check(limit, "the CLIP tokenizers' length"))
    ch.not_applicable("t5_attention_mask", "SDXL has no T5 encoder")
    ch.not_applicable("guidance", "no distilled guidance input (classifier-free guidance is a per-test setting)")
    template = choose_caption_template(ch)
    return SDXLTarget(pipe, TargetInfo(kind="latent", resolution=res, conditional=True, **info), device, dtype,
                      max_sequence_length=max_len, caption_template=template)


FAMILY = register(Family(
    name="sdxl",
    title="Stable Diffusion XL",
    pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    pipeline_class="StableDiffusionXLPipeline",
    required=("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    build=build,
))
