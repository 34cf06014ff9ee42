"""Stable Diffusion 1.x / 2.x (ε- and v-prediction): VAE + CLIP text encoder + conditional UNet."""
from __future__ import annotations

from typing import Any

from audit.targets.base import TargetInfo
from audit.targets.models import LatentTarget
from audit.targets.registry import Family, register


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> LatentTarget:
    res = pipe.unet.config.sample_size
    res = res[0] if isinstance(res, (list, tuple)) else res
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    info = TargetInfo(kind="latent", resolution=int(res) * vae_scale, conditional=True, **info)
    return LatentTarget(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, info, device, dtype)


FAMILY = register(Family(
    name="sd",
    title="Stable-Diffusion-layout",
    pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    pipeline_class="StableDiffusionPipeline",
    required=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    build=build,
    load_kwargs={"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
))
