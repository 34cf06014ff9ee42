"""Wen et al.: magnitude of the text-conditional noise prediction.

Wen, Liu, Chen & Lyu, "Detecting, Explaining, and Mitigating Memorization in Diffusion Models", ICLR 2024.

A memorised prompt pulls the sampler hard towards its training image from the very first step, so the
text-conditional part of the prediction, ε̂(x_t, c) − ε̂(x_t, ∅) (the direction classifier-free
guidance amplifies), is large. The paper's detector samples with DDIM and classifier-free guidance
(scale 7.5, 50 steps) from x_T ~ N(0, I) and averages ‖ε̂(x_t, c) − ε̂(x_t, ∅)‖₂ over the first steps and
over a few generations per prompt; the first step alone already detects memorised prompts well.

Two starting points (``start``):

* ``"noise"`` (the paper's detector): x_T is seeded per image, so the score is a property of the
  image's *caption*: it says whether that prompt is memorised. It cannot tell apart two works that share
  a caption (e.g. "a painting in the style of A" for every work of artist A), so it is a prompt-level
  memorisation screen rather than an artwork-level membership test.
* ``"image"`` (default; our adaptation for artwork audits): start from the artwork noised to the
  timestep an img2img run at ``strength`` starts from, so the magnitude measures how strongly the
  caption pulls *this* image's neighbourhood, which is image-specific even when captions are shared.
  Its first-step ε̂ use LossAttack's / CLiD's noise tags, so in a suite at the same timestep they cost
  nothing extra.

Why ``"image"`` is the default: on the tiny LoRA fine-tunes of tests/test_attacks_text_calibration.py
(one artist, each work with its own caption) the noise start never separated members from held-out
works (AUC 0.41–0.60, also with 5–10 steps), while the image start reached AUC ≈ 0.79 once the LoRA
memorised its works (8 works, 600 steps); with moderate memorisation (20 works, 200 steps) neither
separates (0.41–0.61, CI covering 0.5) while the loss-based attacks and CLiD do. Large models that
memorise duplicated prompts are the paper's regime; use ``start: noise`` to reproduce it.

Scores are higher for larger magnitudes (member-like). Text-conditional targets only; on flow models the
walk uses the scheduler's shifted schedule and flow-ODE steps. Flux dev is guidance-distilled: it never
runs classifier-free guidance, so ε̂(x_t, c) − ε̂(x_t, ∅) is a conditional-vs-empty-prompt discrepancy at
its fixed distilled guidance, not the guidance direction the paper measures.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.attacks.clid import null_condition
from audit.targets.base import Target

STARTS = ("noise", "image")


def sampling_timesteps(target: Target, num_inference_steps: int) -> list:
    """The sampling schedule for ``num_inference_steps`` steps, from the target's own scheduler config.

    VP models: DDIM's schedule (as in the paper, whatever scheduler class the model ships with); flow
    models: the flow scheduler's shifted schedule. The target's scheduler object is not touched.
    """
    return target.process.scheduler_timesteps(int(num_inference_steps))


@dataclass
class Wen(Attack):
    """Score = mean of ‖ε̂(x_t, c) − ε̂(x_t, ∅)‖₂ over the first ``n_steps`` sampling steps and
    ``n_generations`` seeded starts.

    Between steps x_t moves by a deterministic DDIM step with the guided prediction
    ε̂(x_t, ∅) + w (ε̂(x_t, c) − ε̂(x_t, ∅)).

    Args:
        start: ``"image"`` (default: the artwork noised to the img2img start timestep for ``strength``) or
            ``"noise"`` (the paper: seeded x_T); see the module docstring.
        n_steps: sampling steps averaged over (paper: 1 already works; more adds little).
        n_generations: independent seeded starts per image (paper: up to 4 images per prompt).
        num_inference_steps: length of the DDIM schedule the steps are taken from (paper: 50).
        guidance_scale: classifier-free guidance weight w that moves x_t between steps (paper: 7.5);
            irrelevant when ``n_steps == 1``.
        strength: ``start="image"`` only: img2img strength; the walk starts at the schedule's
            ``int(num_inference_steps * strength)``-th step from the end (0.5 of 50 steps → t = 481).
    """

    name = "wen"
    paper = "Wen et al., ICLR 2024 (text-conditional noise magnitude)"
    access = "gray"

    start: str = "image"
    n_steps: int = 1
    n_generations: int = 4
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    strength: float = 0.5

    def check_target(self, target: Target) -> None:
        if not target.conditional:
            raise AttackSetupError("Wen et al.'s detector needs a text-conditional target")
        if self.start not in STARTS:
            raise AttackSetupError(f"wen: start must be one of {STARTS}, got {self.start!r}")
        if self.n_steps < 1 or self.n_generations < 1:
            raise AttackSetupError(
                f"wen: n_steps and n_generations must be ≥ 1, got {self.n_steps}, {self.n_generations}")
        if self.start == "image" and not 0.0 < self.strength <= 1.0:
            raise AttackSetupError(f"wen: strength must be in (0, 1], got {self.strength}")
        available = len(self._timesteps(target))
        if self.n_steps > available:
            raise AttackSetupError(
                f"wen: n_steps={self.n_steps} but the schedule from this start has {available} steps")

    def evaluations_per_image(self) -> int:
        return 2 * self.n_steps * self.n_generations

    def _timesteps(self, target: Target) -> list[int]:
        ts = sampling_timesteps(target, self.num_inference_steps)
        if self.start == "image":
            init = min(int(self.num_inference_steps * self.strength), self.num_inference_steps)
            ts = ts[self.num_inference_steps - init:]  # img2img's start, as in diffusers' get_timesteps
        return ts

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        ts = self._timesteps(target)
        walk = ts[: self.n_steps] + [ts[self.n_steps] if self.n_steps < len(ts) else -1]
        null = null_condition(target, batch)
        total = torch.zeros(x0.shape[0], device=x0.device)
        for g in range(self.n_generations):
            if self.start == "noise":
                tag = f"wen/xT/g{g}"
                x_key = f"raw/{tag}"  # x_T is the noise draw itself
                x_t = batch.noise(tag)
            else:
                tag = f"eps/t{walk[0]}/k{g}"  # LossAttack's / CLiD's draw at this timestep: shared ε̂
                x_key = f"fwd/{tag}"
                x_t = target.add_noise(x0, batch.noise(tag), walk[0])
            for i, (t, t_next) in enumerate(zip(walk[:-1], walk[1:])):
                cond_eps = batch.eps_hat(target, x_key, lambda x=x_t: x, t)
                null_eps = batch.eps_hat(target, x_key, lambda x=x_t: x, t, cond_key="null", cond=null)
                text = cond_eps - null_eps
                total += text.flatten(1).norm(dim=1)
                if i + 1 < self.n_steps:
                    x_t = target.ddim_step(x_t, null_eps + self.guidance_scale * text, t, t_next)
                    # the key names everything x_t now depends on (start, draw, schedule, guidance, step)
                    x_key = (f"wen/{self.start}/{tag}/s{self.strength}/n{self.num_inference_steps}"
                             f"/w{self.guidance_scale}/step{i + 1}")
        return total / (self.n_steps * self.n_generations)
