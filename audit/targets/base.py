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

from audit.diffusion.base import DiffusionProcess, make_process
from audit.diffusion.vp import VariancePreserving
from audit.targets.protocol import AuditTarget


@dataclass(frozen=True)
class TargetInfo:
    """What the report says about the model under audit."""

    kind: str  # "pixel" (the denoiser works on pixels) or "latent" (on VAE latents)
    source: str  # hub id or local path as given by the user
    resolution: int  # pixel resolution the model was trained at
    conditional: bool
    prediction_type: str
    num_train_timesteps: int
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    lora: tuple[str, ...] = ()
    classes: dict[str, str] = field(default_factory=dict)  # component -> class name
    family: str = ""  # registry name of the adapter (audit.targets.families)
    process: dict[str, Any] = field(default_factory=dict)  # the diffusion process, as read from the scheduler
    memory: dict[str, Any] = field(default_factory=dict)  # CPU offload / VAE slicing / tiling applied (targets/memory.py)
    # how prompts and images are conditioned, each decision with its source and reason (targets/conditioning.py)
    conditioning: dict[str, Any] = field(default_factory=dict)
    # what the LoRA / checkpoint files say about their training (targets/metadata.py), and the base-hash checks
    training_metadata: dict[str, Any] = field(default_factory=dict)

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
            "family": self.family,
            "process": dict(self.process),
            **({"memory": dict(self.memory)} if self.memory else {}),
            **({"conditioning": dict(self.conditioning)} if self.conditioning else {}),
            **({"training_metadata": dict(self.training_metadata)} if self.training_metadata else {}),
        }


class Target(AuditTarget):
    """A diffusion model under audit, seen through its components (an :class:`~audit.targets.protocol.AuditTarget`
    with ``access = "white"``).

    Subclasses (one file per model family, see :mod:`audit.targets.families`) implement :meth:`encode`,
    :meth:`encode_text` and :meth:`_model_output` and expose the denoiser as :attr:`denoiser`; latent families
    also :meth:`decode` (with ``can_decode = True``). Everything else (noising, ε̂ conversion, deterministic steps,
    evaluation counting) comes from the target's :attr:`process` (:mod:`audit.diffusion`), read from the model's
    own scheduler config.
    """

    info: TargetInfo
    access = "white"
    #: prompts are put into this template before encoding (``{caption}``; None = the caption as it is)
    caption_template: str | None = None
    #: registry name of the model family ("pixel", "sd", "sdxl", "sd3", "flux", "pixart")
    family: str = ""
    #: the loaded pipeline (latent pipeline families) and the VAE (latent families); None where there is none
    pipe: Any = None
    vae: Any = None
    #: the service operations performed on this model (:class:`audit.blackbox.target.LocalBackend`), made on first
    #: use by the black-box statistics
    blackbox_backend: Any = None

    def __init__(self, scheduler: Any, device: torch.device, dtype: torch.dtype,
                 process: DiffusionProcess | None = None) -> None:
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.process: DiffusionProcess = process if process is not None else make_process(scheduler)
        if isinstance(self.process, VariancePreserving):
            # float64 on the CPU, as the process indexes it (kept as an attribute for reports and tests)
            self.alphas_cumprod = self.process.alphas_cumprod
        self.prediction_type: str = self.process.prediction_type
        self.num_train_timesteps: int = self.process.num_train_timesteps
        #: number of denoiser evaluations (per image) made so far; attacks' declared costs are checked against it
        self.unet_evals: int = 0

    # ------------------------------------------------------------------ model-specific
    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], ``[B, 3, H, W]`` at ``info.resolution`` → x0 in the diffusion space."""

    @abc.abstractmethod
    def encode_text(self, captions: Sequence[str]) -> Any:
        """Text conditioning for the denoiser (``None`` for unconditional models)."""

    @abc.abstractmethod
    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Raw denoiser output in the model's own parameterisation, shaped like ``x_t``."""

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network the process queries (a UNet or a transformer)."""
        return self.unet

    def prompts(self, captions: Sequence[str]) -> list[str]:
        """The captions as the model was trained on them (``target.caption_template``; '' stays '')."""
        from audit.targets.conditioning import apply_caption_template

        return apply_caption_template(self.caption_template, captions)

    # ------------------------------------------------------------------ shared maths (via the process)
    @property
    def conditional(self) -> bool:
        return self.info.conditional

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def conditioning(self) -> dict[str, Any]:
        return self.info.conditioning

    @property
    def training_metadata(self) -> dict[str, Any]:
        return self.info.training_metadata

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast to ``like``'s shape (variance-preserving models only); t < 0 → 1."""
        if not isinstance(self.process, VariancePreserving):
            raise TypeError(f"alpha_bar is defined for variance-preserving models; this one is {self.process.kind!r}")
        return self.process.alpha_bar(t, like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """Forward process q(x_t | x_0): a(t) x0 + s(t) ε (√ᾱ_t, √(1−ᾱ_t) for VP; 1−σ, σ for flow)."""
        return self.process.add_noise(x0, noise, t)

    def predict_noise(self, x_t: torch.Tensor, t: Any, cond: Any = None) -> torch.Tensor:
        """ε̂_θ(x_t, t, c) in float32, whatever the model's prediction type.

        Each call counts ``B`` denoiser evaluations in :attr:`unet_evals`.
        """
        t = self.process.timestep_tensor(t, x_t.shape[0])
        out = self._model_output(x_t.to(self.device, self.dtype), t.to(self.device), cond).float()
        x_t = x_t.to(out.device, torch.float32)
        self.unet_evals += int(x_t.shape[0])
        return self.process.to_eps(out, x_t, t)

    def pred_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: Any) -> torch.Tensor:
        return self.process.pred_x0(x_t, eps, t)

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: Any, t_next: Any) -> torch.Tensor:
        """Deterministic move from t to t_next given ε̂ at t (DDIM η = 0; the flow ODE's Euler step).

        Works in both directions: t_next < t denoises, t_next > t inverts (Song et al. 2021).
        """
        return self.process.step(x_t, eps, t, t_next)

    def _timesteps(self, t: Any, batch: int) -> torch.Tensor:
        return self.process.timestep_tensor(t, batch)
