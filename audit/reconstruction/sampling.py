"""Deterministic, seeded DDIM sampling through the Target API, and exact regeneration from a record.

Every generated image has its own integer seed. The starting noise of image ``i`` is
``torch.randn(shape, generator=torch.Generator().manual_seed(seeds[i]))`` drawn on the CPU (so every
device starts from the same numbers); with the default η = 0 the DDIM sampler (Song et al., ICLR 2021)
is deterministic from there (for flow models: Euler steps of the flow ODE on the scheduler's shifted
schedule, through the target's process). A :class:`GenerationRecord` (written to ``reconstruction.json``) holds
everything that determines the images — prompt, seeds, steps, timesteps, guidance scale, η, batch
size, the target's fingerprint — and :func:`regenerate` turns it back into the same images.

Generated images are returned as uint8 ``[N, 3, H, W]``: what an image service returns, what the
evidence figures show, and what the distances are measured on.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from audit.diffusion.loops import guided_eps, move
from audit.targets.base import Target

__all__ = [
    "GenerationRecord",
    "sampling_timesteps",
    "generation_seeds",
    "diffusion_shape",
    "guided_eps",
    "ddim_move",
    "to_pixels",
    "to_uint8",
    "generate",
    "regenerate",
]


def sampling_timesteps(num_train_timesteps: int, steps: int, start: int | None = None) -> list[int]:
    """``steps`` evenly spaced timesteps from ``start`` (default T−1, pure noise) down towards 0 (VP models).

    The sampler then moves from the last one straight to the clean image (t = −1). Kept for callers
    with a bare T; a target's own schedule is ``target.process.sampling_timesteps(steps)`` (for flow
    models the scheduler's shifted schedule).
    """
    from audit.diffusion.vp import even_timesteps

    return even_timesteps(num_train_timesteps, steps, start)


def generation_seeds(seed: int, prompt: str | None, n: int) -> list[int]:
    """``n`` 63-bit seeds derived from (run seed, prompt, index): recorded, and stable across runs."""
    out = []
    for i in range(int(n)):
        digest = hashlib.sha256(f"{int(seed)}|generate|{prompt if prompt is not None else '<unconditional>'}|{i}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return out


def diffusion_shape(target: Target) -> tuple[int, ...]:
    """Shape of one image in the target's diffusion space (pixels or latents), via ``encode``."""
    res = int(target.info.resolution)
    with torch.inference_mode():
        return tuple(int(s) for s in target.encode(torch.zeros(1, 3, res, res)).shape[1:])


def ddim_move(
    target: Target,
    x: torch.Tensor,
    eps: torch.Tensor,
    t: Any,
    t_next: Any,
    *,
    eta: float = 0.0,
    clip_x0: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sampler step t → t_next < t: :func:`audit.diffusion.loops.move` (DDIM for VP, η > 0 allowed
    there; the flow ODE's Euler step for flow models)."""
    return move(target, x, eps, t, t_next, eta=eta, clip_x0=clip_x0, noise=noise)


def to_pixels(target: Target, x: torch.Tensor) -> torch.Tensor:
    """Diffusion-space samples → images in [-1, 1] (decoded by the VAE for latent targets)."""
    if target.info.kind == "pixel":
        return x.float().clamp(-1, 1)
    if not target.can_decode:
        raise ValueError(f"target of kind {target.info.kind!r} has no decoder")
    return target.decode(x).float().clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float → uint8 [0, 255] on the CPU (as an image file stores them)."""
    return images.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass
class GenerationRecord:
    """Everything that determines a set of generated images; JSON round-trips through ``to_dict``."""

    prompt: str | None  # None for unconditional targets
    seeds: list[int]
    steps: int
    timesteps: list[float]  # integers for VP models; the scheduler's float timesteps for flow models
    guidance_scale: float
    eta: float
    clip_x0: bool
    shape: list[int]  # one image in the diffusion space
    resolution: int
    batch_size: int
    target_fingerprint: str
    sampler: str = "ddim"
    negative_prompt: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationRecord":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def new(
        cls,
        target: Target,
        prompt: str | None,
        n: int,
        *,
        seed: int,
        steps: int,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        batch_size: int = 32,
        shape: Sequence[int] | None = None,
    ) -> "GenerationRecord":
        clip = bool(target.scheduler.config.get("clip_sample", False)) and target.info.kind == "pixel"
        return cls(
            prompt=prompt if target.conditional else None,
            seeds=generation_seeds(seed, prompt if target.conditional else None, n),
            steps=int(steps),
            timesteps=list(target.process.sampling_timesteps(steps)),
            guidance_scale=float(guidance_scale) if target.conditional else 1.0,
            eta=float(eta),
            clip_x0=clip,
            shape=list(shape if shape is not None else diffusion_shape(target)),
            resolution=int(target.info.resolution),
            batch_size=int(batch_size),
            target_fingerprint=target.fingerprint,
        )


def _step_noise(gens: list[torch.Generator], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device)


def generate(
    target: Target,
    record: GenerationRecord,
    *,
    indices: Sequence[int] | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> torch.Tensor:
    """The images of ``record`` (uint8 ``[N, 3, H, W]``), in batches of ``record.batch_size``.

    ``indices`` selects some of the record's images; batches are then formed from the selection, which
    on some hardware changes the last bits of the floating-point result. For bit-identical images
    regenerate the whole record (the default), as the audit generated it.
    """
    idx = list(range(len(record.seeds))) if indices is None else [int(i) for i in indices]
    ts = [int(t) if float(t).is_integer() else float(t) for t in record.timesteps]
    shape = tuple(record.shape)
    cond = uncond = None
    out: list[torch.Tensor] = []
    bar = tqdm(total=len(idx), desc=desc, unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        if target.conditional:
            if record.prompt is None:
                raise ValueError("a conditional target needs the record's prompt")
            cond1 = target.encode_text([record.prompt])
            uncond1 = target.encode_text([record.negative_prompt]) if record.guidance_scale != 1.0 else None
        for start in range(0, len(idx), max(1, int(record.batch_size))):
            chunk = idx[start:start + int(record.batch_size)]
            gens = [torch.Generator().manual_seed(int(record.seeds[i])) for i in chunk]
            x = _step_noise(gens, shape, target.device)
            if target.conditional:
                cond = cond1.expand(len(chunk), *cond1.shape[1:])
                uncond = uncond1.expand(len(chunk), *uncond1.shape[1:]) if uncond1 is not None else None
            for t, t_next in zip(ts, ts[1:] + [-1]):
                eps = guided_eps(target, x, t, cond, uncond, record.guidance_scale)
                z = _step_noise(gens, shape, target.device) if record.eta > 0 and t_next >= 0 else None
                x = ddim_move(target, x, eps, t, t_next, eta=record.eta if z is not None else 0.0,
                              clip_x0=record.clip_x0, noise=z)
            out.append(to_uint8(to_pixels(target, x)))
            bar.update(len(chunk))
    bar.close()
    if not out:
        res = int(record.resolution)
        return torch.empty(0, 3, res, res, dtype=torch.uint8)
    return torch.cat(out)


def regenerate(target: Target, record: GenerationRecord | dict[str, Any], *, check_fingerprint: bool = True,
               indices: Sequence[int] | None = None, progress: bool = False) -> torch.Tensor:
    """Regenerate the exact images of a recorded generation run (uint8 ``[N, 3, H, W]``).

    ``record`` is a :class:`GenerationRecord` or its dict form from ``reconstruction.json``. The target
    must be the audited model: its fingerprint is checked unless ``check_fingerprint=False``.
    """
    rec = record if isinstance(record, GenerationRecord) else GenerationRecord.from_dict(dict(record))
    if check_fingerprint and rec.target_fingerprint != target.fingerprint:
        raise ValueError(
            f"the record was generated by model {rec.target_fingerprint[:16]}…, not by this target "
            f"({target.fingerprint[:16]}…); pass check_fingerprint=False to regenerate anyway"
        )
    return generate(target, rec, indices=indices, progress=progress)
