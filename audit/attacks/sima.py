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
Flow-matching models: the clean-end query is made at σ = 0.01 (``process.clean_t``) on the path's
noise-free point (1 − σ) x0, where ε̂ = −σ ∇log p_σ — at σ = 0 exactly the input carries no information
about the noise and E[ε | x] = 0 for every image. It shares that evaluation with PIA's flow ε₀.
Measured here (``results/attack_table``): see the committed table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.attacks.pia import clean_end_eps
from audit.targets.base import Target


@dataclass
class SimA(Attack):
    """Score = −‖ε_θ(x₀, t, c)‖_p per element (root-mean-p over the image).

    Args:
        t: the query timestep for the clean input; ``None`` (default): the process's clean end (VP: 0, which
            shares PIA's ε₀; flow: 10 of 1000, σ = 0.01).
        p: the norm's order (2 = Euclidean, as in the paper).
    """

    name = "sima"
    paper = "SimA, Score-based Membership Inference on Diffusion Models, arXiv:2509.25003 (2025)"
    access = "gray"

    t: int | None = None
    p: float = 2.0

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, [target.process.clean_t if self.t is None else self.t])
        self._check_prediction_type(target, "SimA")
        if self.p <= 0:
            raise AttackSetupError(f"sima: p must be positive, got {self.p}")

    def evaluations_per_image(self) -> int:
        return 1

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        eps = clean_end_eps(target, batch, self.t)  # PIA's ε₀ at the default t: shared
        return -eps.abs().pow(self.p).flatten(1).mean(1).pow(1.0 / self.p)
