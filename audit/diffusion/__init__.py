"""The diffusion-process layer: the one place that knows how a model noises, predicts and steps.

``make_process(scheduler)`` reads a scheduler's class and config and returns a
:class:`VariancePreserving` (DDPM / DDIM; ε, v or x0 prediction) or :class:`FlowMatching` (rectified
flow; velocity; SD3 shift, Flux dynamic shifting) process. Attacks and reconstruction ask the target's
process for noising, conversions, steps and schedules; the loops in :mod:`audit.diffusion.loops`
(guided prediction, sampler step, img2img) are written once on top of it; SecMI's memoised DDIM / flow-ODE
inversion (audit/attacks/secmi.py) steps through the same process.
"""
from audit.diffusion.base import DiffusionProcess, make_process
from audit.diffusion.flow import FlowMatching
from audit.diffusion.loops import guided_eps, img2img, move
from audit.diffusion.vp import VariancePreserving

__all__ = [
    "DiffusionProcess",
    "FlowMatching",
    "VariancePreserving",
    "guided_eps",
    "img2img",
    "make_process",
    "move",
]
