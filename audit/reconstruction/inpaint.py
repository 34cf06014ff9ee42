"""Inpainting reconstruction: hide part of the artwork, let the model fill it in, measure the error there.

The model fills the hole with RePaint (Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion
Probabilistic Models", CVPR 2022), which needs no inpainting-specific weights — only the target's own
denoiser through the Target API, so it works for unconditional pixel DDPMs and for latent text-to-image
models alike. Going down a strided schedule t_1 > … > t_S:

    unknown  ← one DDIM step of x_t to t_next with ε̂_θ(x_t, t, c)       (the model's guess)
    known    ← a_next x0 + s_next ε                                      (the artwork, noised to t_next)
    x_next   ← m ⊙ unknown + (1 − m) ⊙ known
    and, ``resample − 1`` times, jump back to t (a sample of q(x_t | x_next), ``process.renoise``) and
    repeat the step, so the generated part harmonises with the known part (RePaint's resampling, jump
    length one stride).

For latent targets the pixel mask is max-pooled to the latent grid: a latent cell counts as hidden if
any of its pixels is, so the model is never given latent information about hidden pixels. The error is
the RMS difference in [0, 1] units over the **hidden pixels only** (:func:`audit.reconstruction.metrics.masked_rms`):
what the model was shown cannot make a reconstruction look good.

All noise comes from :class:`audit.attacks.base.NoiseSource` (run seed × image hash × tag), so a result
does not depend on batch size or order and can be recomputed exactly.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from audit.attacks.base import NoiseSource
from audit.reconstruction.config import MASK_KINDS, InpaintConfig
from audit.diffusion.loops import guided_eps
from audit.reconstruction.sampling import ddim_move
from audit.targets.base import Target

__all__ = ["make_masks", "latent_mask", "repaint"]


def _block_rng(seed: int, image_id: str, kind: str) -> torch.Generator:
    digest = hashlib.sha256(f"{int(seed)}|{image_id}|mask/{kind}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def make_masks(kind: str, image_ids: list[str], size: int, *, seed: int = 0, cfg: InpaintConfig | None = None) -> torch.Tensor:
    """``[B, 1, size, size]`` float masks, 1 = hidden (to be filled by the model), 0 = shown.

    ``half``: the right half; ``centre``: the central square of side ``cfg.centre_size`` · size;
    ``blocks``: ``cfg.n_blocks`` squares of side ``cfg.block_size`` · size at positions drawn from
    (seed, image hash), so they differ between works but not between runs.
    """
    cfg = cfg or InpaintConfig()
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask {kind!r}; choose from {list(MASK_KINDS)}")
    b = len(image_ids)
    m = torch.zeros(b, 1, size, size)
    if kind == "half":
        m[..., size // 2:] = 1.0
    elif kind == "centre":
        side = max(1, round(size * float(cfg.centre_size)))
        lo = (size - side) // 2
        m[..., lo:lo + side, lo:lo + side] = 1.0
    else:
        side = max(1, round(size * float(cfg.block_size)))
        for i, image_id in enumerate(image_ids):
            g = _block_rng(seed, image_id, kind)
            for _ in range(int(cfg.n_blocks)):
                y, x = torch.randint(0, size - side + 1, (2,), generator=g).tolist()
                m[i, :, y:y + side, x:x + side] = 1.0
    return m


def latent_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Pixel mask → mask on the diffusion grid ``shape`` (max-pooled: hidden if any pixel is hidden)."""
    if tuple(mask.shape[-2:]) == tuple(shape):
        return mask
    return F.adaptive_max_pool2d(mask, tuple(shape))


def repaint(
    target: Target,
    x0: torch.Tensor,
    mask: torch.Tensor,
    noise: NoiseSource,
    tag: str,
    cfg: InpaintConfig,
    *,
    cond: torch.Tensor | None = None,
    uncond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fill the hidden part of ``x0`` (diffusion space) where ``mask`` (on x0's grid) is 1; returns x0-space.

    Costs ``steps × resample − (resample − 1)`` denoiser evaluations per image (×2 with guidance).
    """
    m = mask.to(x0.device, torch.float32)
    shape = tuple(x0.shape[1:])
    clip = bool(target.scheduler.config.get("clip_sample", False)) and target.info.kind == "pixel"
    ts = list(target.process.sampling_timesteps(cfg.steps))
    x = noise.randn(f"{tag}/init", shape, x0.device)
    for i, (t, t_next) in enumerate(zip(ts, ts[1:] + [-1])):
        for u in range(int(cfg.resample)):
            eps = guided_eps(target, x, t, cond, uncond, cfg.guidance_scale)
            z = noise.randn(f"{tag}/eta/{i}/{u}", shape, x0.device) if cfg.eta > 0 and t_next >= 0 else None
            unknown = ddim_move(target, x, eps, t, t_next, eta=cfg.eta if z is not None else 0.0, clip_x0=clip, noise=z)
            known = x0 if t_next < 0 else target.add_noise(x0, noise.randn(f"{tag}/known/{i}/{u}", shape, x0.device), t_next)
            x_next = m * unknown + (1 - m) * known
            if u < int(cfg.resample) - 1 and t_next >= 0:
                x = target.process.renoise(x_next, noise.randn(f"{tag}/renoise/{i}/{u}", shape, x0.device), t_next, t)
            else:
                break
        x = x_next
    return x
