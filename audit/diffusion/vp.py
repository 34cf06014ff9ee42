"""Variance-preserving diffusion (DDPM, Ho et al. 2020; DDIM, Song et al. 2021): ε-, v- or x0-prediction.

x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε with ᾱ_t the cumulative product of the scheduler's own betas
(``scheduler.alphas_cumprod``, kept in float64 on the CPU and indexed per call). Timesteps are the
integer indices 0 … T−1 of that table; t < 0 is the clean sample (ᾱ = 1), as in DDIM's last step.
"""
from __future__ import annotations

from typing import Any

import torch

from audit.diffusion.base import DiffusionProcess, per_row

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")



def even_timesteps(num_train_timesteps: int, steps: int, start: int | None = None) -> list[int]:
    """``steps`` evenly spaced integer timesteps from ``start`` (default T−1, pure noise) down towards 0."""
    start = num_train_timesteps - 1 if start is None else int(start)
    steps = int(steps)
    if not 1 <= steps <= start + 1:
        raise ValueError(f"need 1 ≤ steps ≤ {start + 1}, got {steps}")
    ts = [round(start * (steps - i) / steps) for i in range(steps)]
    if len(set(ts)) != len(ts):  # only possible for steps close to start; fall back to consecutive steps
        ts = list(range(start, start - steps, -1))
    return ts

class VariancePreserving(DiffusionProcess):
    kind = "vp"
    default_loss_timesteps = (100, 200, 300)  # small-to-moderate t carry the most signal (Hu & Pang 2023)

    def __init__(self, scheduler: Any) -> None:
        cfg = scheduler.config
        self.config = cfg
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64).cpu()
        self.prediction_type = cfg.get("prediction_type", "epsilon")
        self.num_train_timesteps = int(cfg.get("num_train_timesteps", len(self.alphas_cumprod)))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} for a variance-preserving "
                             f"process; expected one of {PREDICTION_TYPES}")

    def clean_query(self, x0: torch.Tensor, t: Any) -> torch.Tensor:
        # The published VP attacks (PIA, SimA) feed x0 itself at t = 0, where √ᾱ_0 ≈ 1; kept as published.
        return x0

    def timestep_tensor(self, t: Any, batch: int) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            t = t.to(torch.long).cpu()
            return t.expand(batch) if t.dim() == 0 else t
        return torch.full((batch,), int(t), dtype=torch.long)

    def alpha_bar(self, t: Any, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast to ``like``'s shape (float32); t < 0 → 1."""
        t = self.timestep_tensor(t, like.shape[0])
        ab = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return per_row(ab, like)

    def coefficients(self, t: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alpha_bar(t, like)
        return ab.sqrt(), (1.0 - ab).sqrt()

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        a, s = self.coefficients(t, x_t)
        if self.prediction_type == "v_prediction":  # v = a ε − s x0  ⇒  ε = a v + s x_t
            return a * out + s * x_t
        return (x_t - a * out) / s  # "sample": the output is x̂0

    def objective_error(self, eps_hat: torch.Tensor, eps: torch.Tensor, t: Any) -> torch.Tensor:
        # The ε-MSE of DDPM training. For a v-prediction model ε̂ − ε = √ᾱ_t (v̂ − v): at a fixed t the
        # ranking is the same as the v-MSE's; only the weighting across timesteps differs.
        return eps_hat - eps

    def step_eta(self, x_t: torch.Tensor, eps: torch.Tensor, t: Any, t_next: Any, eta: float,
                 noise: torch.Tensor | None, clip_x0: bool = False) -> torch.Tensor:
        """DDIM step t → t_next < t (Song et al., eq. 12), optionally stochastic (η > 0) and with x̂0 clipped."""
        x0 = self.pred_x0(x_t, eps, t)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        ab_t = self.alpha_bar(t, x_t)
        ab_n = self.alpha_bar(t_next, x_t)
        if eta > 0:
            if noise is None:
                raise ValueError("eta > 0 needs a noise draw for the step")
            sigma = eta * ((1 - ab_n) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_n).sqrt()
            return ab_n.sqrt() * x0 + (1 - ab_n - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise.to(x_t)
        return ab_n.sqrt() * x0 + (1 - ab_n).sqrt() * eps

    def renoise(self, x_n: torch.Tensor, z: torch.Tensor, t_n: Any, t: Any) -> torch.Tensor:
        ratio = self.alpha_bar(t, x_n) / self.alpha_bar(t_n, x_n)
        return ratio.sqrt() * x_n + (1 - ratio).sqrt() * z

    def sampling_timesteps(self, steps: int, start: int | None = None) -> list[int]:
        """``steps`` evenly spaced integer timesteps from ``start`` (default T−1, pure noise) down towards 0."""
        return even_timesteps(self.num_train_timesteps, steps, start)

    def scheduler_timesteps(self, steps: int) -> list[int]:
        """The DDIM inference schedule for ``steps`` steps from the model's scheduler config (its spacing,
        ``steps_offset``); the model's own scheduler object is not touched (``set_timesteps`` mutates it)."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.config)
        sched.set_timesteps(int(steps))
        return [int(t) for t in sched.timesteps]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta_schedule": self.config.get("beta_schedule")}
