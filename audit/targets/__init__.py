"""Model adapters: load a diffusion model under audit and expose its components to the attacks.

One adapter file per family in :mod:`audit.targets.families`, chosen by the model folder's
``model_index.json`` ``_class_name`` through :mod:`audit.targets.registry`.
"""
from audit.targets.base import Target, TargetInfo
from audit.targets.conditioning import Conditioning
from audit.targets.loading import TargetLoadError, load_target, resolve_device, resolve_dtype
from audit.targets.models import LatentTarget, PixelTarget
from audit.targets.registry import FAMILIES, Family, supported_families

__all__ = [
    "FAMILIES",
    "Conditioning",
    "Family",
    "LatentTarget",
    "PixelTarget",
    "Target",
    "TargetInfo",
    "TargetLoadError",
    "load_target",
    "resolve_device",
    "resolve_dtype",
    "supported_families",
]
