"""Denoising-loss attack: the model's own training objective at chosen timesteps.

The simplest gray-box membership signal for diffusion models: training minimises the denoising loss,
so training images tend to get a lower one. The loss is the one the model was trained with, from its
diffusion process (audit/diffusion):

* variance-preserving models (DDPM, SD 1.x/2.x, SDXL, PixArt): the ε-MSE
  E‖ε − ε̂_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖² at integer timesteps (default 100, 200, 300 of 1000);
* flow-matching models (SD3, Flux): the velocity MSE E‖(ε − x0) − v̂_θ((1−σ) x0 + σ ε, σ)‖² with
  σ = t / T, by default at mid-trajectory t = 400, 500, 600 — leakage of rectified-flow models peaks
  away from both ends (arXiv 2603.13421, cited in issue 10). Near σ = 0 the velocity target ε − x0 is
  dominated by the fresh noise draw, which no model can predict from an almost clean input.

Matsumoto, Miura & Yoshimura, "Membership Inference Attacks against Diffusion Models", IEEE SPW 2023;
Hu & Pang, "Membership Inference of Diffusion Models", 2023 (loss at a chosen timestep);
Carlini et al., "Extracting Training Data from Diffusion Models", USENIX Security 2023 (loss threshold).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from audit.attacks.base import Attack, Batch
from audit.targets.base import Target


@dataclass
class LossAttack(Attack):
    """Score = −mean over (timestep, noise draw) of the per-image training-objective MSE.

    Args:
        timesteps: diffusion timesteps to evaluate at; ``None`` (default): the process's default
            (VP: 100, 200, 300; flow: 400, 500, 600 of 1000).
        n_noise: independent noise draws per timestep (averaging reduces the score's variance).
    """

    name = "loss"
    paper = "Matsumoto et al. 2023; Hu & Pang 2023 (denoising loss)"
    access = "gray"

    timesteps: list[int] | None = None
    n_noise: int = 2

    #: every process's default has this many timesteps, so the cost is known before the target is
    DEFAULT_COUNT = 3

    def timesteps_for(self, target: Target) -> list[int]:
        if self.timesteps is not None:
            return [int(t) for t in self.timesteps]
        return list(target.process.default_loss_timesteps)

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, self.timesteps_for(target))

    def evaluations_per_image(self) -> int:
        return (len(self.timesteps) if self.timesteps is not None else self.DEFAULT_COUNT) * self.n_noise

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        total = torch.zeros(x0.shape[0], device=x0.device)
        timesteps = self.timesteps_for(target)
        for t in timesteps:
            for k in range(self.n_noise):
                tag = f"eps/t{int(t)}/k{k}"
                eps = batch.noise(tag)
                pred = batch.eps_hat(target, f"fwd/{tag}", lambda: target.add_noise(x0, eps, int(t)), int(t))
                total += target.process.objective_error(pred, eps, int(t)).pow(2).flatten(1).mean(1)
        return -total / (len(timesteps) * self.n_noise)
