"""PFAMI: Probabilistic Fluctuation Assessing Membership Inference.

Fu, Wang, Gao, Liu, Li & Jiang, "A Probabilistic Fluctuation based Membership Inference Attack for
Diffusion Models" (arXiv 2308.12143, 2023; ICLR 2024 submission "Are overfitting-free generative models
vulnerable to membership inference attack?").

Idea: training pushes the model's likelihood up *around* each training record, so a member sits near a
local maximum of p_θ. Perturb the record slightly and its likelihood drops noticeably; a non-member
sits on a flatter part of the density and changes less. With the denoising loss as the (negative)
log-likelihood proxy, the per-image statistic is the *probabilistic fluctuation*

    ΔL(x) = mean over perturbations λ, timesteps t and noise draws ε of
            ‖ε − ε_θ(x̃_λ,t)‖² − ‖ε − ε_θ(x_t)‖²

where x̃_λ is x perturbed with strength λ and both losses use the same seeded ε (so the difference
measures the perturbation, not the noise). Members get a larger ΔL. The perturbation is a centre
crop keeping a fraction λ of each side, resized back to full size (the authors' Stable-Diffusion code
sweeps λ from 0.95 down to 0.7).

What we do, and where it differs from the authors' code:
- the crop is a continuous centre zoom (bilinear ``grid_sample`` of the central λ-fraction), so
  strengths stay distinct on small images where ``int(λ·H)`` would round several of them together;
  on 512-px images it equals a crop-and-resize up to sub-pixel rounding;
- the perturbation is applied to the ``[-1, 1]`` pixels and re-encoded with ``target.encode`` (for a
  latent model this costs one VAE encoding per strength, no denoiser evaluations); a pixel target's
  x0 *is* its pixels, so ``x0`` is zoomed directly when a batch carries no pixels;
- the unperturbed ε̂ uses the loss attack's noise tags and memo keys (``fwd/eps/t{t}/k{k}``), so run
  together with :class:`~audit.attacks.loss.LossAttack` the original's denoiser calls are shared;
- no reference model inside the attack: reference calibration is done by the analysis layer, the
  same way for every gray-box score.

Measured here with the defaults (member vs held-out, AUC with 95% bootstrap CI): on the DDPM that
memorised 16 works (``memorized_ddpm``) 1.00 [1.00, 1.00] (loss attack 0.99); on the DDPM overfit on
256 works (``overfit_ddpm``) 0.67 [0.62, 0.71], below the plain loss attack with the same timesteps
and noise draws (0.77): on these DDPMs PFAMI does not beat the loss it is built from (the paper aims
at models that do not overfit, where the loss alone is weak). The ``relative`` variant ranked worse
there (0.60).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.targets.base import Target


def center_zoom(images: torch.Tensor, strength: float) -> torch.Tensor:
    """Keep the central ``strength`` fraction of each side of ``[B, C, H, W]`` images, resized back to H×W.

    A continuous crop-and-resize: bilinear sampling of the zoomed grid (align_corners=False, so
    ``strength=1`` returns the images unchanged up to float rounding).
    """
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3, dtype=torch.float32, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = float(strength)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(images.dtype)


@dataclass
class PFAMI(Attack):
    """Score = mean over (strength, timestep, noise draw) of loss(perturbed) − loss(original).

    Args:
        strengths: crop strengths λ (fraction of each side kept). The paper sweeps λ from 0.95 down
            to 0.7; smaller λ perturbs more. Each strength costs ``len(timesteps) × n_noise``
            denoiser evaluations per image.
        timesteps: diffusion timesteps of the loss (the paper sums over a range of small-to-moderate
            t, e.g. 50…500 of 1000).
        n_noise: seeded noise draws per timestep, shared by the original and every perturbed copy.
        relative: divide each difference by the original's loss, ``(L(x̃) − L(x)) / L(x)``, the
            normalised fluctuation of the authors' Stable-Diffusion code. Off by default: it blows up
            when a member's loss is near zero, and on ``overfit_ddpm`` it ranked worse (0.60 vs 0.67).
    """

    name = "pfami"
    paper = "Fu et al. 2023, arXiv 2308.12143 (PFAMI, probabilistic fluctuation)"
    access = "gray"

    strengths: list[float] = field(default_factory=lambda: [0.95, 0.9, 0.85, 0.8, 0.75, 0.7])
    timesteps: list[int] = field(default_factory=lambda: [100, 200, 300])
    n_noise: int = 1
    relative: bool = False

    def __post_init__(self) -> None:
        bad = [s for s in self.strengths if not 0.0 < float(s) < 1.0]
        if not self.strengths or bad:
            raise ValueError(f"pfami: strengths must be non-empty and in (0, 1), got {list(self.strengths)}")
        if self.n_noise < 1:
            raise ValueError(f"pfami: n_noise must be ≥ 1, got {self.n_noise}")

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, self.timesteps)

    def evaluations_per_image(self) -> int:
        return (1 + len(self.strengths)) * len(self.timesteps) * self.n_noise

    def perturbed_x0(self, target: Target, batch: Batch, strength: float) -> torch.Tensor:
        """x0 of the batch's images zoomed by ``strength`` (memoised per batch, shared by PFAMI configs)."""

        def compute() -> torch.Tensor:
            if batch.pixels is not None:
                return target.encode(center_zoom(batch.pixels, strength)).float()
            if target.info.kind == "pixel":  # x0 is the pixels
                return center_zoom(batch.x0, strength)
            raise AttackSetupError("pfami: a latent target needs the batch's pixels to perturb (Batch.pixels is None)")

        return batch.shared(("pfami/center_zoom", float(strength)), compute)

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        perturbed = {float(s): self.perturbed_x0(target, batch, float(s)) for s in self.strengths}
        total = torch.zeros(x0.shape[0], device=x0.device)
        for t in self.timesteps:
            t = int(t)
            for k in range(self.n_noise):
                tag = f"eps/t{t}/k{k}"
                eps = batch.noise(tag)
                pred = batch.eps_hat(target, f"fwd/{tag}", lambda: target.add_noise(x0, eps, t), t)
                base = target.process.objective_error(pred, eps, t).pow(2).flatten(1).mean(1)
                for s, xs in perturbed.items():
                    pred_s = batch.eps_hat(target, f"pfami/zoom{s!r}/{tag}", lambda: target.add_noise(xs, eps, t), t)
                    diff = target.process.objective_error(pred_s, eps, t).pow(2).flatten(1).mean(1) - base
                    total += diff / base.clamp_min(1e-12) if self.relative else diff
        return total / (len(self.strengths) * len(self.timesteps) * self.n_noise)
