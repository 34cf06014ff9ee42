"""Denoising-loss attack.

The simplest gray-box membership signal for diffusion models: training minimises
E‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖², so training images tend to get a lower loss.
Matsumoto, Miura & Yoshimura, "Membership Inference Attacks against Diffusion Models", IEEE SPW 2023;
Hu & Pang, "Membership Inference of Diffusion Models", 2023 (loss at a chosen timestep);
Carlini et al., "Extracting Training Data from Diffusion Models", USENIX Security 2023 (loss threshold).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.attacks.base import Attack, Batch
from audit.targets.base import Target


@dataclass
class LossAttack(Attack):
    """Score = −mean over (timestep, noise draw) of the per-image ε-prediction MSE.

    Args:
        timesteps: diffusion timesteps to evaluate at (small-to-moderate t carry the most signal;
            at large t the input is nearly pure noise).
        n_noise: independent noise draws per timestep (averaging reduces the score's variance).
    """

    name = "loss"
    paper = "Matsumoto et al. 2023; Hu & Pang 2023 (denoising loss)"
    access = "gray"

    timesteps: list[int] = field(default_factory=lambda: [100, 200, 300])
    n_noise: int = 2

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, self.timesteps)

    def evaluations_per_image(self) -> int:
        return len(self.timesteps) * self.n_noise

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        total = torch.zeros(x0.shape[0], device=x0.device)
        for t in self.timesteps:
            for k in range(self.n_noise):
                tag = f"eps/t{int(t)}/k{k}"
                eps = batch.noise(tag)
                pred = batch.eps_hat(target, f"fwd/{tag}", lambda: target.add_noise(x0, eps, int(t)), int(t))
                total += (pred - eps).pow(2).flatten(1).mean(1)
        return -total / self.evaluations_per_image()
