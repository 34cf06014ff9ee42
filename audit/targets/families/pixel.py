"""Unconditional pixel-space models (``UNet2DModel`` + scheduler): DDPM, DDIM, PNDM pipelines."""
from __future__ import annotations

from typing import Any

from audit.targets.base import TargetInfo
from audit.targets.models import PixelTarget
from audit.targets.registry import Family, register


def build(pipe: Any, device, dtype, info: dict[str, Any], options: dict[str, Any]) -> PixelTarget:
    res = pipe.unet.config.sample_size
    res = res[0] if isinstance(res, (list, tuple)) else res
    return PixelTarget(pipe.unet, pipe.scheduler,
                       TargetInfo(kind="pixel", resolution=int(res), conditional=False, **info), device, dtype)


FAMILY = register(Family(
    name="pixel",
    title="pixel-space DDPM",
    pipelines=("DDPMPipeline", "DDIMPipeline", "PNDMPipeline"),
    pipeline_class="DiffusionPipeline",
    required=("unet", "scheduler"),
    build=build,
    single_file=False,
))
