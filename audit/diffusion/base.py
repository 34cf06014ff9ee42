"""The diffusion-process protocol: how a model noises, what its denoiser predicts, how it steps.

Every process here writes the noisy sample as an interpolation between the clean sample and Gaussian
noise,

    x_t = a(t) · x0 + s(t) · ε,        ε ~ N(0, I),

with ``t`` on the model's own timestep scale (0 … ``num_train_timesteps``); ``t < 0`` means the clean
sample (a = 1, s = 0). Variance-preserving diffusion (DDPM / DDIM) has a = √ᾱ_t, s = √(1 − ᾱ_t);
rectified flow / flow matching (SD3, Flux) has a = 1 − σ, s = σ with σ = t / T. Because both are
interpolations, the deterministic DDIM step and the Euler step of the flow ODE are the same move —
predict x0 from ε̂, then re-interpolate at the next timestep — and it runs in both directions
(denoising and inversion). The denoiser's raw output (ε, v, x0 or flow velocity) is converted to ε̂
here, once, so attacks and reconstruction can speak ε̂ for every family and ask the process for the
model's own training objective where it matters (the loss attack).
"""
from __future__ import annotations

import abc
from typing import Any

import torch

class DiffusionProcess(abc.ABC):
    """A forward process plus the conversions and steps attacks and samplers need."""

    #: "vp" (variance preserving: DDPM / DDIM) or "flow" (rectified flow / flow matching)
    kind: str = ""
    #: what the denoiser outputs: "epsilon", "v_prediction", "sample" (x0) or "flow" (velocity ε − x0)
    prediction_type: str = ""
    num_train_timesteps: int = 1000
    #: default timesteps of the loss attack on this process (see audit/attacks/loss.py)
    default_loss_timesteps: tuple[int, ...] = ()
    #: the timestep of a "clean-end" query (PIA's ε₀, SimA's score norm)
    clean_t: int = 0

    # ------------------------------------------------------------------ coefficients
    @abc.abstractmethod
    def coefficients(self, t: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a(t), s(t)) as float32 tensors broadcastable to ``like`` (one value per batch row)."""

    @abc.abstractmethod
    def timestep_tensor(self, t: Any, batch: int) -> torch.Tensor:
        """``t`` as a ``[batch]`` CPU tensor in the dtype the denoiser takes (long for VP, float for flow)."""

    # ------------------------------------------------------------------ forward process and conversions
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """q(x_t | x0): a(t) x0 + s(t) ε."""
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise

    @abc.abstractmethod
    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        """The denoiser's raw output (float32, the model's parameterisation) → ε̂."""

    def pred_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: Any) -> torch.Tensor:
        """x̂0 = (x_t − s ε̂) / a."""
        a, s = self.coefficients(t, x_t)
        return (x_t - s * eps) / a

    @abc.abstractmethod
    def objective_error(self, eps_hat: torch.Tensor, eps: torch.Tensor, t: Any) -> torch.Tensor:
        """Prediction error in the parameterisation of the model's training loss (ε for VP, velocity for flow)."""

    # ------------------------------------------------------------------ deterministic moves
    def step(self, x_t: torch.Tensor, eps: torch.Tensor, t: Any, t_next: Any) -> torch.Tensor:
        """Deterministic move t → t_next given ε̂ at t: x̂0, then a(t_next) x̂0 + s(t_next) ε̂.

        DDIM with η = 0 (Song et al., ICLR 2021) for VP, the Euler step of the probability-flow ODE for
        flow matching. Works both ways: t_next < t denoises, t_next > t inverts; t_next < 0 returns x̂0.
        """
        x0 = self.pred_x0(x_t, eps, t)
        a, s = self.coefficients(t_next, x_t)
        return a * x0 + s * eps

    def renoise(self, x_n: torch.Tensor, z: torch.Tensor, t_n: Any, t: Any) -> torch.Tensor:
        """Sample q(x_t | x_{t_n}) for t > t_n (RePaint's jump back): (a_t/a_n) x_n + √(s_t² − (a_t s_n / a_n)²) z."""
        a_t, s_t = self.coefficients(t, x_n)
        a_n, s_n = self.coefficients(t_n, x_n)
        r = a_t / a_n
        return r * x_n + (s_t.pow(2) - (r * s_n).pow(2)).clamp(min=0).sqrt() * z

    def clean_query(self, x0: torch.Tensor, t: Any) -> torch.Tensor:
        """The input of a clean-end query at t: the noise-free point a(t) x0 of the trajectory."""
        a, _ = self.coefficients(t, x0)
        return a * x0

    # ------------------------------------------------------------------ schedules
    @abc.abstractmethod
    def sampling_timesteps(self, steps: int) -> list:
        """The ``steps`` timesteps a sampler visits from pure noise, first to last (then it goes to clean)."""

    def img2img_timestep(self, strength: float) -> int:
        """Strength in (0, 1] → the timestep the artwork is noised to (strength · T, inside 1 … T−1)."""
        T = self.num_train_timesteps
        return max(1, min(T - 1, round(float(strength) * T)))

    @staticmethod
    def img2img_timesteps(t: int, steps: int) -> list[int]:
        """``steps`` evenly spaced timesteps an img2img run from ``t`` evaluates: t, …, ≈ t/steps."""
        t, steps = int(t), int(steps)
        if steps < 1 or t < 0 or (t > 0 and steps > t):
            raise ValueError(f"img2img needs 1 ≤ steps ≤ t (or t = 0, steps = 1), got t={t}, steps={steps}")
        return [round(t * (steps - i) / steps) for i in range(steps)]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "prediction_type": self.prediction_type,
                "num_train_timesteps": self.num_train_timesteps}


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` → broadcastable to ``like`` (``[B, 1, …]``) as float32 on ``like``'s device."""
    return values.to(device=like.device, dtype=torch.float32).view(-1, *([1] * (like.dim() - 1)))


def make_process(scheduler: Any, *, image_seq_len: int | None = None) -> DiffusionProcess:
    """The process a scheduler describes, from its class and config (never from hard-coded constants)."""
    from audit.diffusion.flow import FlowMatching
    from audit.diffusion.vp import VariancePreserving

    name = type(scheduler).__name__
    cfg = scheduler.config
    if name.startswith("FlowMatch") or cfg.get("prediction_type") == "flow_prediction":
        return FlowMatching(cfg, scheduler_class=name, image_seq_len=image_seq_len)
    if hasattr(scheduler, "alphas_cumprod"):
        return VariancePreserving(scheduler)
    raise ValueError(f"scheduler {name} describes neither a variance-preserving nor a flow-matching process")

