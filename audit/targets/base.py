"""The component-level interface every attack is written against.

A :class:`Target` wraps a loaded diffusion model's components (never a pipeline subclass) and exposes
the few operations membership attacks need: encode images to the diffusion space, forward-noise them,
predict the noise, and take deterministic DDIM steps in either direction. Every constant (noise
schedule, prediction type, VAE scaling factor) is read from the model's own configs.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class TargetInfo:
    """What the report says about the model under audit."""

    kind: str  # "pixel" (unconditional DDPM-style) or "latent" (Stable-Diffusion layout)
    source: str  # hub id or local path as given by the user
    resolution: int  # pixel resolution the model was trained at
    conditional: bool
    prediction_type: str
    num_train_timesteps: int
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    lora: tuple[str, ...] = ()
    classes: dict[str, str] = field(default_factory=dict)  # component -> class name

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "resolution": self.resolution,
            "conditional": self.conditional,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "fingerprint": self.fingerprint,
            "files": dict(self.files),
            "lora": list(self.lora),
            "classes": dict(self.classes),
        }


class Target(abc.ABC):
    """A diffusion model under audit, seen through its components.

    Subclasses implement :meth:`encode`, :meth:`encode_text` and :meth:`_model_output`; everything
    else (noising, epsilon conversion, DDIM steps, evaluation counting) is shared.
    """

    info: TargetInfo

    def __init__(self, scheduler: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        cfg = scheduler.config
        # Keep the schedule in float64 on the CPU; index it per call (cheap) to avoid device drift.
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64).cpu()
        self.prediction_type: str = cfg.get("prediction_type", "epsilon")
        self.num_train_timesteps: int = int(cfg.get("num_train_timesteps", len(self.alphas_cumprod)))
        #: number of denoiser evaluations (per image) made so far; attacks' declared costs are checked against it
        self.unet_evals: int = 0

    # ------------------------------------------------------------------ model-specific
    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], ``[B, 3, H, W]`` at ``info.resolution`` → x0 in the diffusion space."""

    @abc.abstractmethod
    def encode_text(self, captions: Sequence[str]) -> torch.Tensor | None:
        """Text conditioning for the denoiser (``None`` for unconditional models)."""

    @abc.abstractmethod
    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Raw denoiser output in the model's own parameterisation."""

    # ------------------------------------------------------------------ shared maths
    @property
    def conditional(self) -> bool:
        return self.info.conditional

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast to ``like``'s shape; t < 0 means the clean image (ᾱ = 1), as in DDIM's last step."""
        t = self._timesteps(t, like.shape[0])
        ab = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0).cpu()], torch.ones((), dtype=torch.float64))
        return ab.to(device=like.device, dtype=torch.float32).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Forward process q(x_t | x_0): √ᾱ_t x0 + √(1−ᾱ_t) ε."""
        ab = self.alpha_bar(t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def predict_noise(
        self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ε̂_θ(x_t, t, c) in float32, whatever the model's prediction type.

        Each call counts ``B`` denoiser evaluations in :attr:`unet_evals`.
        """
        t = self._timesteps(t, x_t.shape[0])
        out = self._model_output(x_t.to(self.device, self.dtype), t.to(self.device), cond).float()
        x_t = x_t.to(out.device, torch.float32)
        self.unet_evals += int(x_t.shape[0])
        if self.prediction_type == "epsilon":
            return out
        ab = self.alpha_bar(t, x_t)
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * out + (1.0 - ab).sqrt() * x_t
        if self.prediction_type == "sample":
            return (x_t - ab.sqrt() * out) / (1.0 - ab).sqrt()
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def pred_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        ab = self.alpha_bar(t, x_t)
        return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    def ddim_step(
        self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int, t_next: torch.Tensor | int
    ) -> torch.Tensor:
        """Deterministic DDIM (η = 0) move from t to t_next given ε̂ at t.

        Works in both directions: t_next < t denoises, t_next > t is DDIM inversion (Song et al. 2021).
        """
        x0 = self.pred_x0(x_t, eps, t)
        ab_next = self.alpha_bar(t_next, x_t)
        return ab_next.sqrt() * x0 + (1.0 - ab_next).sqrt() * eps

    def _timesteps(self, t: torch.Tensor | int, batch: int) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            t = t.to(torch.long).cpu()
            return t.expand(batch) if t.dim() == 0 else t
        return torch.full((batch,), int(t), dtype=torch.long)
