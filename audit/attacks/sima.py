"""SimA: single-query score-norm attack.

"Score-based Membership Inference on Diffusion Models" (SimA), arXiv:2509.25003, 2025.

The paper shows that the expected denoiser output at a point is directed towards a kernel-weighted local
mean of nearby training samples, so the norm of the predicted noise (equivalently, of the score) on a
clean input encodes how close that input is to the training set: small for members. The attack is one
denoiser query per image and no randomness: score = −‖ε_θ(x₀, t)‖ with the clean image (or latent) fed
at a small timestep t.

We default to t = 0, where the query is exactly PIA's ε₀ = ε_θ(x₀, 0): run together with PIA / PIAN it
costs no extra evaluation. Latent targets are attacked on the VAE latent of the image, as the paper does
for latent diffusion models (which it finds markedly less vulnerable than pixel-space models).
Measured here (``results/attack_table``): see the committed table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.targets.base import Target


@dataclass
class SimA(Attack):
    """Score = −‖ε_θ(x₀, t, c)‖_p per element (root-mean-p over the image).

    Args:
        t: the query timestep (the clean input is fed at this timestep; 0 shares PIA's ε₀).
        p: the norm's order (2 = Euclidean, as in the paper).
    """

    name = "sima"
    paper = "SimA, Score-based Membership Inference on Diffusion Models, arXiv:2509.25003 (2025)"
    access = "gray"

    t: int = 0
    p: float = 2.0

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, [self.t])
        self._check_prediction_type(target, "SimA")
        if self.p <= 0:
            raise AttackSetupError(f"sima: p must be positive, got {self.p}")

    def evaluations_per_image(self) -> int:
        return 1

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        key = "x0"  # the clean input, as PIA's ε₀: at t = 0 the two attacks share this evaluation
        eps = batch.eps_hat(target, key, lambda: x0, int(self.t))
        return -eps.abs().pow(self.p).flatten(1).mean(1).pow(1.0 / self.p)
