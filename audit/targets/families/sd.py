"""Stable Diffusion 1.x / 2.x (ε- and v-prediction): VAE + CLIP text encoder + conditional UNet."""
from __future__ import annotations

from typing import Any

from audit.targets.base import TargetInfo
from audit.targets.conditioning import ConditioningChoices
from audit.targets.families._common import (choose_caption_template, choose_resolution, length_check, unet_multiple,
                                            vae_scale_factor)
from audit.targets.models import LatentTarget
from audit.targets.registry import Family, register


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> LatentTarget:
    ch: ConditioningChoices = options.get("choices") or ConditioningChoices("sd")
    scale = vae_scale_factor(pipe.vae)
    res = choose_resolution(ch, pipe, pipe.unet, scale, unet_multiple(pipe.unet, scale))
    limit = int(pipe.tokenizer.model_max_length)
    max_len = ch.pick("max_sequence_length", limit, "model config", f"tokenizer.model_max_length={limit} (CLIP)",
                      length_check(limit, "the CLIP tokenizer's length"))
    ch.not_applicable("t5_attention_mask", "SD 1.x/2.x has no T5 encoder (CLIP prompts attend to every position)")
    ch.not_applicable("guidance", "no distilled guidance input (classifier-free guidance is a per-test setting)")
    template = choose_caption_template(ch)
    info = TargetInfo(kind="latent", resolution=res, conditional=True, **info)
    return LatentTarget(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, info, device, dtype,
                        max_sequence_length=max_len, caption_template=template)


FAMILY = register(Family(
    name="sd",
    title="Stable-Diffusion-layout",
    pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    pipeline_class="StableDiffusionPipeline",
    required=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    build=build,
    load_kwargs={"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
))
