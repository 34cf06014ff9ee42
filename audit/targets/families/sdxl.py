"""Stable Diffusion XL: two CLIP text encoders (penultimate hidden states concatenated, pooled
projection of the second), size / crop micro-conditioning ids, ε- (or v-) prediction UNet."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from audit.targets.base import TargetInfo
from audit.targets.conditioning import Conditioning
from audit.targets.families._common import PipelineTarget, vae_scale_factor
from audit.targets.registry import Family, register


class SDXLTarget(PipelineTarget):
    family = "sdxl"

    def __init__(self, pipe: Any, info: TargetInfo, device, dtype) -> None:
        super().__init__(pipe, "unet", info, device, dtype)
        self.unet = self.pipe.unet

    def encode_text(self, captions: Sequence[str]) -> Conditioning:
        prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(captions), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
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
    res = pipe.unet.config.sample_size
    res = res[0] if isinstance(res, (list, tuple)) else res
    return SDXLTarget(pipe, TargetInfo(kind="latent", resolution=int(res) * vae_scale_factor(pipe.vae),
                                       conditional=True, **info), device, dtype)


FAMILY = register(Family(
    name="sdxl",
    title="Stable Diffusion XL",
    pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    pipeline_class="StableDiffusionXLPipeline",
    required=("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    build=build,
))
