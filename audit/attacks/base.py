"""The attack interface and seeded per-image noise.

Conventions every attack follows:
- ``score`` returns one float per image, **higher = more member-like** (distance-style statistics are
  negated);
- all randomness comes from :class:`NoiseSource`, which derives each image's noise from
  (run seed, image SHA-256, tag), so a score does not depend on batch size, order or which other
  images are in the run, and two attacks asking for the same tag get the same draws;
- attacks only call the target's component API (``predict_noise``, ``add_noise``, ``ddim_step``) and
  its diffusion process (``target.process``: conversions, the training objective, schedules), and
  declare how many denoiser evaluations per image they cost; tests count the real calls;
- each attack declares the diffusion processes (``vp``, ``flow``) and, where it matters, the model
  families it supports; on any other target ``check_target`` refuses in one line before any work.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

from audit.targets.base import Target
from audit.targets.protocol import AuditTarget


class AttackSetupError(ValueError):
    """The attack cannot run on this target; the message is one line saying why."""


PROCESS_NAMES = {"vp": "variance-preserving (DDPM/DDIM)", "flow": "flow-matching"}


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
    noise_source: NoiseSource
    pixels: torch.Tensor | None = None  # the [-1, 1] images, for attacks that need pixel space
    #: results shared between attacks within this batch (see :meth:`shared`)
    cache: dict[tuple, Any] = field(default_factory=dict)

    def shared(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Compute once per batch, reuse across attacks.

        Attacks that need the same quantity (the same noise draw, the same ε̂ at the same timestep and
        conditioning, the same DDIM inversion) ask for it under the same key, so a suite of attacks
        costs fewer denoiser evaluations than the attacks run one by one. Keys must name everything the
        value depends on (e.g. ``("eps_hat", t, noise_tag, "cond")``).
        """
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def noise(self, tag: str) -> torch.Tensor:
        """Seeded per-image N(0, I) noise shaped like x0, shared by every attack asking for ``tag``."""
        return self.shared(("noise", tag), lambda: self.noise_source.randn(tag, self.x0.shape[1:], self.x0.device))

    def eps_hat(self, target: Target, x_key: str, x_t: Callable[[], torch.Tensor], t: int,
                cond_key: str = "caption", cond: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂_θ(x_t, t, c), memoised under (x_key, t, cond_key).

        ``x_key`` must identify how x_t was built (e.g. ``"fwd/eps/t100/k0"`` for x0 noised with that
        draw); ``x_t`` builds it only when needed. ``cond_key="caption"`` conditions on the batch's
        captions; any other key (e.g. ``"null"``) must come with its own ``cond`` tensor.
        """
        c = self.cond if cond_key == "caption" else cond
        return self.shared(("eps_hat", x_key, int(t), cond_key), lambda: target.predict_noise(x_t(), int(t), c))


@dataclass
class Attack(abc.ABC):
    """Base class. Subclasses are dataclasses whose fields are their (documented) parameters."""

    name: ClassVar[str] = "attack"
    paper: ClassVar[str] = ""
    access: ClassVar[str] = "gray"  # "white" (weights/gradients), "gray" (denoiser outputs), "black" (generations)
    #: diffusion processes the attack's maths holds for (see audit/diffusion)
    processes: ClassVar[tuple[str, ...]] = ("vp", "flow")
    #: model families it supports (None: every family whose process is supported)
    families: ClassVar[tuple[str, ...] | None] = None
    #: one line saying why the unsupported ones are not (shown in the refusal)
    support_note: ClassVar[str] = ""
    #: the service operations a black-box statistic is made of (audit.blackbox); () for every model attack
    service_operations: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every check_target starts with the support check, so no entry point can skip it.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("check_target")
        if own is not None and not getattr(own, "_checks_support", False):
            def check_target(self: "Attack", target: Target, _own: Callable = own) -> None:
                self.check_support(target)
                _own(self, target)

            check_target._checks_support = True  # type: ignore[attr-defined]
            check_target.__doc__ = own.__doc__
            cls.check_target = check_target  # type: ignore[method-assign]

    def check_support(self, target: AuditTarget) -> None:
        """Refuse, in one line, a target whose process or family the attack does not support."""
        if (target.access == "outputs") != (self.access == "outputs"):
            # collected outputs (audit.outputs) have no model; the matching statistics need collected outputs
            raise AttackSetupError(f"{self.name} needs the model ({self.access}-box access); the outputs target has "
                                   "only collected outputs (use out_sift, out_orb, out_phash, out_ssim, out_tiled_l2, "
                                   "out_style, out_embed)" if target.access == "outputs" else
                                   f"{self.name} compares works with collected outputs; use target=outputs")
        if target.access == "black" and not self.service_operations:
            # a hosted service (audit.blackbox): only attacks made of its operations can run
            raise AttackSetupError(f"{self.name} needs the model itself ({self.access}-box access); the "
                                   f"{target.family} target is a black-box service offering only "
                                   f"{', '.join(target.operations)} (use bb_variation, bb_img2img, bb_generate)")
        # a target without a diffusion process (the merge job's record) is checked as a VP model, as before
        kind = target.process.kind if target.process is not None else "vp"
        family = target.family or "this"
        why = f" ({self.support_note})" if self.support_note else ""
        if kind not in self.processes:
            wanted = " or ".join(PROCESS_NAMES.get(p, p) for p in self.processes)
            raise AttackSetupError(f"{self.name} supports {wanted} models; the {family} target is "
                                   f"{PROCESS_NAMES.get(kind, kind)}{why}")
        if self.families is not None and target.family not in self.families:
            raise AttackSetupError(f"{self.name} supports the {', '.join(self.families)} families, not {family}{why}")

    def check_target(self, target: Target) -> None:
        """Raise :class:`AttackSetupError` with a one-line reason if the target cannot be attacked."""
        self.check_support(target)

    @abc.abstractmethod
    def evaluations_per_image(self) -> int:
        """Denoiser evaluations this attack makes per image."""

    def backward_passes_per_image(self) -> int:
        """Backward passes through the denoiser per image (white-box attacks; 0 for the rest)."""
        return 0

    @abc.abstractmethod
    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        """``[B]`` scores, higher = more member-like."""

    def params(self) -> dict[str, Any]:
        return {"attack": type(self).__name__, **dataclasses.asdict(self)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "paper": self.paper, "access": self.access,
                "evaluations_per_image": self.evaluations_per_image(),
                "backward_passes_per_image": self.backward_passes_per_image(), "params": self.params()}

    def _check_prediction_type(self, target: Target, label: str) -> None:
        """Attacks that read ε̂ need a model whose output converts to ε (ε-, v-, x0-prediction or flow velocity)."""
        if target.prediction_type not in ("epsilon", "v_prediction", "sample", "flow"):
            raise AttackSetupError(
                f"{label} needs an ε-, v-, x0- or velocity-prediction model, got {target.prediction_type!r}")

    def _check_timesteps(self, target: Target, timesteps: Sequence[int]) -> None:
        bad = [t for t in timesteps if not 0 <= int(t) < target.num_train_timesteps]
        if bad:
            raise AttackSetupError(
                f"{self.name}: timesteps {bad} outside the model's 0..{target.num_train_timesteps - 1}"
            )
