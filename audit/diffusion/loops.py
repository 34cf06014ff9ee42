"""Samplers and inversions written once, on top of a target's process and denoiser.

Every loop here uses only ``target.predict_noise`` (ε̂ in float32 whatever the model predicts) and the
target's :class:`~audit.diffusion.base.DiffusionProcess` (noising, deterministic steps), so it runs
unchanged on variance-preserving models (DDIM) and flow-matching models (Euler on the flow ODE).
"""
from __future__ import annotations

from typing import Any

import torch


def guided_eps(target: Any, x: torch.Tensor, t: Any, cond: Any, uncond: Any, guidance_scale: float) -> torch.Tensor:
    """ε̂(x_t, t) with classifier-free guidance ε̂_∅ + w (ε̂_c − ε̂_∅) when ``uncond`` is given and w ≠ 1."""
    if cond is None or uncond is None or float(guidance_scale) == 1.0:
        return target.predict_noise(x, t, cond)
    e = target.predict_noise(torch.cat([x, x]), t, torch.cat([uncond, cond]))
    e_u, e_c = e.chunk(2)
    return e_u + float(guidance_scale) * (e_c - e_u)


def move(target: Any, x: torch.Tensor, eps: torch.Tensor, t: Any, t_next: Any, *, eta: float = 0.0,
         clip_x0: bool = False, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One sampler step t → t_next < t given ε̂ at t, optionally stochastic (η > 0, VP only) with x̂0 clipped.

    With η = 0 and no clipping this is the process's deterministic step (DDIM / flow Euler).
    """
    process = target.process
    if process.kind == "vp":
        return process.step_eta(x, eps, t, t_next, eta, noise, clip_x0)
    if eta > 0:
        raise ValueError("a stochastic (eta > 0) sampler is defined for variance-preserving models only; use eta=0")
    if clip_x0:
        x0 = process.pred_x0(x, eps, t).clamp(-1.0, 1.0)
        a, s = process.coefficients(t_next, x)
        return a * x0 + s * eps
    return process.step(x, eps, t, t_next)


def img2img(
    target: Any,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: int,
    steps: int,
    cond: Any = None,
    *,
    first_eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """An image variation (SDEdit-style img2img, deterministic sampler): noise to ``t``, step back to clean.

    x_t = a(t) x0 + s(t) ``noise``, then ``steps`` deterministic steps through the evenly spaced
    timesteps t, …, ≈ t/steps, the last one straight to the clean sample. Returns the reconstruction in
    the diffusion space (decode it for latent targets). Costs ``steps`` denoiser evaluations per image,
    one fewer when ``first_eps`` (ε̂(x_t, t, cond), already computed elsewhere) is given.
    """
    process = target.process
    ts = process.img2img_timesteps(t, steps)
    x = process.add_noise(x0, noise, int(t))
    for i, (s, s_next) in enumerate(zip(ts, ts[1:] + [-1])):
        eps = first_eps if i == 0 and first_eps is not None else target.predict_noise(x, s, cond)
        x = process.step(x, eps, s, s_next)
    return x

