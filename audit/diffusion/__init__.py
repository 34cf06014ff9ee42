"""The diffusion-process layer: the one place that knows how a model noises, predicts and steps.

``make_process(scheduler)`` reads a scheduler's class and config and returns a
:class:`VariancePreserving` (DDPM / DDIM; ε, v or x0 prediction) or :class:`FlowMatching` (rectified
flow; velocity; SD3 shift, Flux dynamic shifting) process. Attacks and reconstruction ask the target's
process for noising, conversions, steps and schedules; the loops in :mod:`audit.diffusion.loops`
(guided prediction, sampler step, img2img, inversion) are written once on top of it.
"""
from audit.diffusion.base import DiffusionProcess, check_timesteps, make_process
from audit.diffusion.flow import FlowMatching
from audit.diffusion.loops import guided_eps, img2img, invert, move
from audit.diffusion.vp import VariancePreserving

__all__ = [
    "DiffusionProcess",
    "FlowMatching",
    "VariancePreserving",
    "check_timesteps",
    "guided_eps",
    "img2img",
    "invert",
    "make_process",
    "move",
]
