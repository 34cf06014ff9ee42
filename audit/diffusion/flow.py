"""Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023; Esser et al. 2024 for SD3; Flux).

x_σ = (1 − σ) x0 + σ ε with σ = t / T ∈ [0, 1]; the denoiser predicts the velocity v = ε − x0 (the
time derivative of the straight path), trained with ‖v̂ − v‖². Conversions:

    x̂0 = x_t − σ v̂,        ε̂ = x_t + (1 − σ) v̂,        so  ε̂ − ε = (1 − σ)(v̂ − v).

The sampling schedule comes from the model's scheduler (``FlowMatchEulerDiscreteScheduler``): its
``shift`` (SD3: 3.0) or, with ``use_dynamic_shifting`` (Flux dev), the resolution-dependent shift
μ = linear in the image's token count between (``base_image_seq_len``, ``base_shift``) and
(``max_image_seq_len``, ``max_shift``). Timesteps are floats on 0 … T (t = σ · T), as the scheduler's.
Attack timesteps (the forward process at a chosen t) are unshifted: σ = t / T.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from audit.diffusion.base import DiffusionProcess, per_row

UNSUPPORTED_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                       "stochastic_sampling")


class FlowMatching(DiffusionProcess):
    kind = "flow"
    prediction_type = "flow"
    # Mid-trajectory: membership leakage of rectified-flow models peaks away from both ends
    # (arXiv 2603.13421, cited in issue 10); the ε-style small-t defaults of VP models see almost clean
    # inputs here, where the velocity target is dominated by the noise draw.
    default_loss_timesteps = (400, 500, 600)
    # At σ = 0 the input carries no information about the noise, so E[ε | x] = 0 for every image and a
    # clean-end query says nothing; σ = 0.01 is the noise level of a VP model's t = 0 under the DDPM
    # linear schedule (√(1 − ᾱ_0) = 0.01). The query input is the path's noise-free point (1 − σ) x0.
    clean_t = 10

    def __init__(self, config: Any, *, scheduler_class: str = "FlowMatchEulerDiscreteScheduler",
                 image_seq_len: int | None = None) -> None:
        self.config = config
        self.scheduler_class = scheduler_class
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.shift = float(config.get("shift", 1.0))
        self.dynamic = bool(config.get("use_dynamic_shifting", False))
        self.image_seq_len = image_seq_len
        bad = [k for k in UNSUPPORTED_OPTIONS if config.get(k)]
        if bad:
            raise ValueError(f"flow-matching scheduler options {bad} are not supported by the audit's sampler")

    def timestep_tensor(self, t: Any, batch: int) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            t = t.to(torch.float32).cpu()
            return t.expand(batch) if t.dim() == 0 else t
        return torch.full((batch,), float(t), dtype=torch.float32)

    def sigma(self, t: Any, like: torch.Tensor) -> torch.Tensor:
        """σ = t / T per row (t < 0 → 0, the clean sample)."""
        t = self.timestep_tensor(t, like.shape[0]).to(torch.float64)
        return per_row((t / self.num_train_timesteps).clamp(min=0.0, max=1.0), like)

    def coefficients(self, t: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sigma(t, like)
        return 1.0 - s, s

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        return x_t + (1.0 - self.sigma(t, x_t)) * out

    def velocity(self, eps_hat: torch.Tensor, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        return (eps_hat - x_t) / (1.0 - self.sigma(t, x_t))

    def objective_error(self, eps_hat: torch.Tensor, eps: torch.Tensor, t: Any) -> torch.Tensor:
        # v̂ − v = (ε̂ − ε) / (1 − σ): the flow-matching loss's residual (σ < 1 since t ≤ T − 1)
        return (eps_hat - eps) / (1.0 - self.sigma(t, eps_hat))

    def mu(self) -> float | None:
        """The dynamic shift μ for this model's image token count (Flux); None without dynamic shifting."""
        if not self.dynamic:
            return None
        if self.image_seq_len is None:
            raise ValueError("dynamic shifting needs the image's token count (image_seq_len)")
        c = self.config
        x0, x1 = float(c.get("base_image_seq_len", 256)), float(c.get("max_image_seq_len", 4096))
        y0, y1 = float(c.get("base_shift", 0.5)), float(c.get("max_shift", 1.15))
        return y0 + (y1 - y0) / (x1 - x0) * (float(self.image_seq_len) - x0)

    def sampling_timesteps(self, steps: int) -> list[float]:
        """The scheduler's own ``steps``-step schedule (shifted), as t = σ · T, from the model's config.

        The first point, σ = 1, is moved to σ = 1 − 1/T (t = T − 1, as VP samplers start): at σ = 1 the
        input holds nothing of x0, so ε̂ = x_t whatever the velocity and x̂0 = (x_t − σ ε̂)/(1 − σ) is
        undefined; one step earlier the two differ from pure noise by 0.1 % of the signal.
        """
        from diffusers import FlowMatchEulerDiscreteScheduler

        steps = int(steps)
        if steps < 1:
            raise ValueError(f"need ≥ 1 sampling steps, got {steps}")
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.config)
        mu = self.mu()
        sched.set_timesteps(steps, **({"mu": mu} if mu is not None else {}))
        T = self.num_train_timesteps
        return [min(float(s) * T, float(T - 1)) for s in sched.sigmas[:-1].tolist()]

    scheduler_timesteps = sampling_timesteps

    def describe(self) -> dict[str, Any]:
        mu = self.mu() if self.image_seq_len is not None or not self.dynamic else None
        return {**super().describe(), "shift": self.shift, "dynamic_shifting": self.dynamic,
                "mu": mu, "shift_effective": math.exp(mu) if mu is not None else self.shift}
