"""PIA and PIAN: Proximal Initialization Attack.

Kong, Li, Wang, Han & Wang, "An Efficient Membership Inference Attack for the Diffusion Model by
Proximal Initialization", ICLR 2024.

Instead of random noise, PIA uses the model's own output at t = 0, ε₀ = ε_θ(x0, 0), as the noise:
it forms x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε₀ and measures how far ε_θ(x_t, t) is from ε₀. For a member the
model's trajectory is consistent, so the distance is small. Two model evaluations per image, no
randomness. PIAN first normalises ε₀ so its entries look like standard-normal noise (the paper's
"normal" variant, meant for models with a stochastic sampler, e.g. DDPM); the paper reports it works
less well than PIA on most models — we keep it because it is part of the published method.

Flow-matching models (SD3, Flux): the maths carries over through ε̂ = x_t + (1 − σ) v̂. ε₀ is the noise
endpoint the model predicts near the clean end (at ``process.clean_t``, σ = 0.01, from the path's
noise-free point (1 − σ) x0: at σ = 0 exactly the input says nothing about the noise), x_t lies on the
straight path from x0 to ε₀, and ε̂(x_t, t) − ε₀ = (1 − σ)(v̂(x_t, t) − v̂₀) + O(σ₀): the attack measures
whether the model's velocity is constant along its own straight trajectory — the flow analogue of a
consistent DDIM trajectory. PIAN is VP-only (its normalisation targets stochastic DDPM sampling).

Measured here (``scripts/attack_regimes.py``): on a DDPM that overfits a few hundred works, PIA beats
the loss attack at a third of its cost, as the paper reports. On a model that has collapsed onto a
handful of training images, ε_θ(x0, 0) of a *non-member* becomes self-consistent (it points from the
image towards the nearest memorised one), and PIA's ranking inverts (AUC well below 0.5) while the
loss attack is near-perfect. Check an attack's direction on known members before relying on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audit.attacks.base import Attack, Batch
from audit.targets.base import Target


def clean_end_eps(target: Target, batch: Batch, t: int | None = None) -> torch.Tensor:
    """ε̂ queried at the clean end of the trajectory (``process.clean_t`` unless ``t`` is given), memoised.

    VP models: ε_θ(x0, 0), as published (key ``"x0"``). Flow models: ε̂ at the path's noise-free point
    (1 − σ) x0 (see the module docstring).
    """
    process = target.process
    t = process.clean_t if t is None else int(t)
    if process.kind == "vp":
        return batch.eps_hat(target, "x0", lambda: batch.x0, t)
    return batch.eps_hat(target, f"clean/t{t}", lambda: process.clean_query(batch.x0, t), t)


@dataclass
class PIA(Attack):
    """Score = −‖ε_θ(x_t, t) − ε₀‖_p averaged over elements (the paper uses p = 4).

    Args:
        t: the attack timestep (paper: 200 of 1000 for DDPM, 100–200 for Stable Diffusion).
        p: the norm's order.
        normalize: PIAN — rescale ε₀ so its mean absolute value matches that of N(0, 1), √(2/π).
    """

    name = "pia"
    paper = "Kong et al., ICLR 2024 (PIA / PIAN)"
    access = "gray"

    t: int = 200
    p: float = 4.0
    normalize: bool = False

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, [self.t])
        self._check_prediction_type(target, "PIA")

    def evaluations_per_image(self) -> int:
        return 2

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        eps0 = clean_end_eps(target, batch)  # shared by PIA, PIAN and SimA (at its default t)
        if self.normalize:
            # match E|z| = sqrt(2/pi) of a standard normal, per image
            scale = math.sqrt(2.0 / math.pi) / eps0.abs().flatten(1).mean(1).clamp_min(1e-12)
            eps0 = eps0 * scale.view(-1, *([1] * (x0.dim() - 1)))
        x_t = target.add_noise(x0, eps0, self.t)
        pred = target.predict_noise(x_t, self.t, batch.cond)  # depends on the (normalised) ε₀: not shared
        dist = (pred - eps0).abs().pow(self.p).flatten(1).mean(1).pow(1.0 / self.p)
        return -dist


@dataclass
class PIAN(PIA):
    """PIA with ε₀ normalised to standard-normal scale (see module docstring)."""

    name = "pian"
    processes = ("vp",)
    support_note = "PIAN's normalisation is meant for stochastic DDPM sampling; use pia on flow models"
    normalize: bool = True
