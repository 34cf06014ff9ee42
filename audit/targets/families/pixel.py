"""Unconditional pixel-space models (``UNet2DModel`` + scheduler): DDPM, DDIM, PNDM pipelines."""
from __future__ import annotations

from typing import Any

from audit.targets.base import TargetInfo
from audit.targets.conditioning import ConditioningChoices
from audit.targets.families._common import choose_resolution, unet_multiple
from audit.targets.models import PixelTarget
from audit.targets.registry import Family, register


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> PixelTarget:
    ch: ConditioningChoices = options.get("choices") or ConditioningChoices("pixel")
    res = choose_resolution(ch, pipe, pipe.unet, 1, unet_multiple(pipe.unet, 1))
    for key in ("max_sequence_length", "t5_attention_mask", "caption_template"):
        ch.not_applicable(key, "an unconditional model takes no prompt")
    ch.not_applicable("guidance", "an unconditional model takes no guidance")
    return PixelTarget(pipe.unet, pipe.scheduler,
                       TargetInfo(kind="pixel", resolution=res, conditional=False, **info), device, dtype)


FAMILY = register(Family(
    name="pixel",
    title="pixel-space DDPM",
    pipelines=("DDPMPipeline", "DDIMPipeline", "PNDMPipeline"),
    pipeline_class="DiffusionPipeline",
    required=("unet", "scheduler"),
    build=build,
    single_file=False,
))
