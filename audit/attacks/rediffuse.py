"""ReDiffuse: black-box membership inference through an image-variation (img2img) interface.

Li, Dong, He & Zhang, "Towards Black-Box Membership Inference Attack for Diffusion Models", 2024
(arXiv 2405.20771; ICML 2025).

The attacker can only ask for *variations* of an image: the service noises it to strength t and
denoises it back with its deterministic (DDIM) sampler. Each variation is x0 plus an error driven by
the model's noise predictions; for a training image those predictions are closer to unbiased, so the
errors of independent variations cancel when averaged. ReDiffuse requests n variations with different
noise, averages them and scores the distance of the average to the original (smaller = member):

    x̂ = (1/n) Σ_i V_θ(x0, t; ε_i),     score = −D(x̂, x0).

The variation interface is :func:`audit.diffusion.loops.img2img`, built only from the target's process
(forward noising + deterministic steps: DDIM for VP models, the flow ODE's Euler steps for flow
models); reconstruction reuses it.

Distance (``space``): the paper compares what the API returns, i.e. images. For a pixel-space DDPM
that is the reconstruction itself (the paper uses the squared L2 distance there); for a latent model
each variation is decoded by the VAE, the decoded images are averaged in pixel space and compared
with the original artwork (the paper uses SSIM for Stable Diffusion; we use the per-pixel MSE for
both so the score has one meaning, and clamp to the image range [-1, 1] as an API returning images
would). ``space="diffusion"`` instead compares raw reconstructions with x0 in the diffusion space
(pixels or latents, no clamping), as the paper's DDIM code does.

Each variation's noise draw uses the loss attack's tag for that timestep (``eps/t{t}/k{i}``), so in a
suite with ``LossAttack`` at the same timestep the first denoising step of each variation is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.diffusion.base import DiffusionProcess
from audit.diffusion.loops import img2img
from audit.targets.base import Target

SPACES = ("pixel", "diffusion")
img2img_timesteps = DiffusionProcess.img2img_timesteps
__all__ = ["ReDiffuse", "img2img", "img2img_timesteps"]


@dataclass
class ReDiffuse(Attack):
    """Score = −MSE(mean of ``n`` img2img variations, original image); see the module docstring.

    Args:
        t: variation strength as a diffusion timestep (the reference code's DDIM setting noises to
            t = 100–200 of 1000; larger t averages over more of the model but loses the image).
        steps: deterministic DDIM steps from t back to the clean image (reference: t / 10).
        n: variations averaged per image (paper: 10; the gain flattens after a few).
        space: ``"pixel"`` (compare images, decoded for latent targets, as the black-box API returns
            them) or ``"diffusion"`` (compare raw reconstructions with x0 in the diffusion space).
    """

    name = "rediffuse"
    paper = "Li et al., 2024 (ReDiffuse, arXiv 2405.20771)"
    access = "black"

    t: int = 100
    steps: int = 10
    n: int = 4
    space: str = "pixel"

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, [self.t])
        if self.t < 1:
            raise AttackSetupError(f"rediffuse: strength t must be ≥ 1, got {self.t}")
        if not 1 <= self.steps <= self.t:
            raise AttackSetupError(f"rediffuse: steps must be in 1..t={self.t}, got {self.steps}")
        if self.n < 1:
            raise AttackSetupError(f"rediffuse: n must be ≥ 1, got {self.n}")
        if self.space not in SPACES:
            raise AttackSetupError(f"rediffuse: space must be one of {SPACES}, got {self.space!r}")
        if self.space == "pixel" and target.info.kind != "pixel" and not target.can_decode:
            raise AttackSetupError("rediffuse: space='pixel' on a latent target needs a decoder (target.decode)")

    def evaluations_per_image(self) -> int:
        return self.n * self.steps

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0, t = batch.x0, int(self.t)
        to_image = self._to_image(target)
        total = None
        for i in range(self.n):
            tag = f"eps/t{t}/k{i}"  # the loss attack's draw at this timestep: the first ε̂ is shared
            noise = batch.noise(tag)
            first = batch.eps_hat(target, f"fwd/{tag}", lambda: target.add_noise(x0, noise, t), t)
            recon = to_image(img2img(target, x0, noise, t, self.steps, batch.cond, first_eps=first))
            total = recon if total is None else total + recon
        mean = total / self.n
        reference = self._reference(target, batch)
        return -(mean - reference).pow(2).flatten(1).mean(1)

    def _to_image(self, target: Target):
        if self.space == "diffusion":
            return lambda x: x
        if target.info.kind == "pixel":
            return lambda x: x.clamp(-1, 1)
        return lambda x: target.decode(x).float()

    def _reference(self, target: Target, batch: Batch) -> torch.Tensor:
        if self.space == "diffusion" or target.info.kind == "pixel":
            return batch.x0
        if batch.pixels is None:
            raise ValueError("rediffuse: space='pixel' on a latent target needs batch.pixels (the original images)")
        return batch.pixels.to(batch.x0.device, torch.float32)
