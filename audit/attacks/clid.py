"""CLiD: Conditional Likelihood Discrepancy.

Zhai, Chen, Dong, Li, Shen, Gao, Su & Liu, "Membership Inference on Text-to-Image Diffusion Models via
Conditional Likelihood Discrepancy", NeurIPS 2024.

Text-to-image models overfit the *conditional* distribution p(x | c) of their training pairs more than
the image distribution p(x) ("conditional overfitting"). CLiD estimates log p(x | c) − log p(x | c*)
with the denoising loss as the (negative) ELBO: the loss with a weakened condition c* minus the loss
with the true caption c, at the same x_t (same seeded noise, same timestep). A training pair's image is
much easier to denoise with its own caption than without it, so members have a larger discrepancy.

The weakened conditions follow the paper's released "clip" variant: the caption cut into ``n_clips``
consecutive character pieces (each piece replaces the caption once) and the null text "". Timesteps
follow the paper too: a few around T/2 (490, 500, 510 of 1000), where the text matters most (at small
t the noisy image already determines x0; at large t nothing does). The paper's importance-based
caption dropping (CLiD-impt) needs a token-importance pass and is not implemented here.
Measured on the tiny LoRA fine-tunes of tests/test_attacks_text_calibration.py (20 members vs 40
held-out works of one artist, each with its own caption): AUC 0.80–0.91 at the paper's timesteps;
timesteps 100–300 did as well there (0.85–0.89). With captions that do not tell works apart (a number
in a caption the tiny text encoder barely distinguishes) it fell to 0.60–0.69: CLiD needs captions that
carry information about the image, as real fine-tuning captions do.

The paper's thresholded statistic (CLiD_th) mixes the discrepancy with the (negated) conditional
loss after robust scaling, with the mixing weight tuned on a shadow model; ``alpha`` exposes that mix
without the scaling (both terms are MSEs of the same ε). The principled way to combine CLiD with the
loss here is to score both (``loss`` and ``clid``) and let the analysis stage's cross-fitted
aggregation weigh them; ``alpha = 1`` (the default) is the pure discrepancy.

Every text-conditional family: the losses are the model's training objective from its process (ε-MSE
for VP models, velocity MSE for flow models such as SD3 and Flux). On Flux dev, a guidance-distilled
model, every prediction carries the adapter's fixed distilled guidance value (``target.guidance``), so
the discrepancy compares conditions at that guidance, not an unguided likelihood.

Sharing: the true-caption ε̂ uses LossAttack's noise tags and keys (``eps/t{t}/k{k}``), and the null-text
ε̂ uses the ``"null"`` conditioning key, so in a suite with ``loss`` (or ``wen`` with ``start=image``) at
the same timesteps those evaluations are made once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.targets.base import Target

WEAK_CONDITIONS = ("clip", "null")


def clip_caption(caption: str, piece: int, n_pieces: int) -> str:
    """Piece ``piece`` of ``n_pieces`` consecutive character ranges of ``caption`` (the paper's clipping)."""
    n = len(caption)
    return caption[(piece * n) // n_pieces:((piece + 1) * n) // n_pieces]


def null_condition(target: Target, batch: Batch) -> torch.Tensor:
    """Embedding of the empty prompt for every image of the batch, computed once per batch."""
    return batch.shared(("cond", "null"), lambda: target.encode_text([""] * len(batch.captions)))


@dataclass
class CLiD(Attack):
    """Score = mean over (timestep, noise draw, weakened condition c*) of
    ‖ε − ε̂(x_t, c*)‖² − ‖ε − ε̂(x_t, c)‖².

    Images without a caption get a discrepancy of exactly 0 (every weakened condition equals the null text).

    Args:
        timesteps: diffusion timesteps (paper: 490, 500, 510 of 1000).
        n_noise: seeded noise draws per timestep (paper: 1).
        weak: weakened conditions: ``"clip"`` (the caption cut into ``n_clips`` character pieces) and/or
            ``"null"`` (the empty prompt).
        n_clips: pieces the caption is cut into for ``"clip"`` (paper: 3).
        alpha: weight of the discrepancy; ``1 − alpha`` weighs the negated true-caption loss (see the
            module docstring). 1 = pure CLiD.
    """

    name = "clid"
    paper = "Zhai et al., NeurIPS 2024 (CLiD)"
    access = "gray"

    timesteps: list[int] = field(default_factory=lambda: [490, 500, 510])
    n_noise: int = 1
    weak: list[str] = field(default_factory=lambda: ["clip", "null"])
    n_clips: int = 3
    alpha: float = 1.0

    def check_target(self, target: Target) -> None:
        if not target.conditional:
            raise AttackSetupError("CLiD needs a text-conditional target")
        self._check_timesteps(target, self.timesteps)
        if None in self.weak:
            raise AttackSetupError('CLiD: weak contains None; in YAML write the null condition quoted, "null"')
        unknown = [w for w in self.weak if w not in WEAK_CONDITIONS]
        if unknown or not self.weak:
            raise AttackSetupError(
                f"CLiD: weak conditions must be a non-empty subset of {WEAK_CONDITIONS}, got {self.weak}")
        if "clip" in self.weak and self.n_clips < 2:
            raise AttackSetupError(f"CLiD: n_clips must be ≥ 2 to weaken the caption, got {self.n_clips}")
        if self.n_noise < 1:
            raise AttackSetupError(f"CLiD: n_noise must be ≥ 1, got {self.n_noise}")

    def _weak_conditions(self, target: Target, batch: Batch) -> list[tuple[str, torch.Tensor]]:
        """(cond_key, embedding) per weakened condition, memoised per batch."""
        out: list[tuple[str, torch.Tensor]] = []
        if "clip" in self.weak:
            for j in range(self.n_clips):
                key = f"clip{j}of{self.n_clips}"
                pieces = [clip_caption(c, j, self.n_clips) for c in batch.captions]
                out.append((key, batch.shared(("cond", key), lambda p=pieces: target.encode_text(p))))
        if "null" in self.weak:
            out.append(("null", null_condition(target, batch)))
        return out

    def n_weak(self) -> int:
        return self.n_clips * ("clip" in self.weak) + ("null" in self.weak)

    def evaluations_per_image(self) -> int:
        return len(self.timesteps) * self.n_noise * (1 + self.n_weak())

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        x0 = batch.x0
        weak = self._weak_conditions(target, batch)
        loss = torch.zeros(x0.shape[0], device=x0.device)
        gap = torch.zeros(x0.shape[0], device=x0.device)
        for t in self.timesteps:
            t = int(t)
            for k in range(self.n_noise):
                tag = f"eps/t{t}/k{k}"  # LossAttack's tag: same draw, shared ε̂ with the true caption
                eps = batch.noise(tag)
                x_t = lambda eps=eps, t=t: target.add_noise(x0, eps, t)  # noqa: E731
                err = target.process.objective_error  # ε for VP, velocity for flow models
                full = err(batch.eps_hat(target, f"fwd/{tag}", x_t, t), eps, t).pow(2).flatten(1).mean(1)
                loss += full
                for key, cond in weak:
                    pred = batch.eps_hat(target, f"fwd/{tag}", x_t, t, cond_key=key, cond=cond)
                    gap += err(pred, eps, t).pow(2).flatten(1).mean(1) - full
        n = len(self.timesteps) * self.n_noise
        return self.alpha * gap / (n * len(weak)) - (1.0 - self.alpha) * loss / n
