"""The attack interface and seeded per-image noise.

Conventions every attack follows:
- ``score`` returns one float per image, **higher = more member-like** (distance-style statistics are
  negated);
- all randomness comes from :class:`NoiseSource`, which derives each image's noise from
  (run seed, image SHA-256, tag), so a score does not depend on batch size, order or which other
  images are in the run, and two attacks asking for the same tag get the same draws;
- attacks only call the target's component API (``predict_noise``, ``add_noise``, ``ddim_step``) and
  declare how many denoiser evaluations per image they cost; tests count the real calls.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from audit.targets.base import Target


class AttackSetupError(ValueError):
    """The attack cannot run on this target; the message is one line saying why."""


class NoiseSource:
    """Deterministic Gaussian noise per (seed, image, tag)."""

    def __init__(self, seed: int, image_ids: Sequence[str]):
        self.seed = int(seed)
        self.image_ids = list(image_ids)

    def _generator(self, image_id: str, tag: str) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}|{image_id}|{tag}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

    def randn(self, tag: str, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """``[B, *shape]`` standard normal noise; drawn on the CPU so every device gets the same numbers."""
        draws = [torch.randn(tuple(shape), generator=self._generator(i, tag)) for i in self.image_ids]
        return torch.stack(draws).to(device)


@dataclass
class Batch:
    """What an attack sees of a batch of artworks (already encoded once for all attacks)."""

    x0: torch.Tensor  # diffusion-space images (pixels or latents), float32 on the target's device
    cond: torch.Tensor | None  # text conditioning from the captions (None for unconditional targets)
    captions: list[str]
    image_ids: list[str]
    noise: NoiseSource
    pixels: torch.Tensor | None = None  # the [-1, 1] images, for attacks that need pixel space


@dataclass
class Attack(abc.ABC):
    """Base class. Subclasses are dataclasses whose fields are their (documented) parameters."""

    name: ClassVar[str] = "attack"
    paper: ClassVar[str] = ""
    access: ClassVar[str] = "gray"  # "white" (weights/gradients), "gray" (denoiser outputs), "black" (generations)

    def check_target(self, target: Target) -> None:
        """Raise :class:`AttackSetupError` with a one-line reason if the target cannot be attacked."""

    @abc.abstractmethod
    def evaluations_per_image(self) -> int:
        """Denoiser evaluations this attack makes per image."""

    @abc.abstractmethod
    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        """``[B]`` scores, higher = more member-like."""

    def params(self) -> dict[str, Any]:
        return {"attack": type(self).__name__, **dataclasses.asdict(self)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "paper": self.paper, "access": self.access,
                "evaluations_per_image": self.evaluations_per_image(), "params": self.params()}

    def _check_timesteps(self, target: Target, timesteps: Sequence[int]) -> None:
        bad = [t for t in timesteps if not 0 <= int(t) < target.num_train_timesteps]
        if bad:
            raise AttackSetupError(
                f"{self.name}: timesteps {bad} outside the model's 0..{target.num_train_timesteps - 1}"
            )
