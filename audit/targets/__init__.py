"""Model adapters: load a diffusion model under audit and expose its components to the attacks."""
from audit.targets.base import Target, TargetInfo
from audit.targets.loading import TargetLoadError, load_target, resolve_device, resolve_dtype
from audit.targets.models import LatentTarget, PixelTarget

__all__ = [
    "LatentTarget",
    "PixelTarget",
    "Target",
    "TargetInfo",
    "TargetLoadError",
    "load_target",
    "resolve_device",
    "resolve_dtype",
]
