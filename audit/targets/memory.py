"""Memory options for large models on one GPU: CPU offload and VAE slicing / tiling (``target.*`` keys).

- ``offload``: ``none`` | ``model`` | ``sequential``. diffusers' ``enable_model_cpu_offload`` keeps every
  component in CPU memory and moves the one that runs (text encoders, denoiser, VAE) to the GPU for its
  call: peak GPU memory ≈ the largest component instead of all of them, at the cost of a transfer per
  switch. ``sequential`` (``enable_sequential_cpu_offload``) streams sub-modules one at a time: the least
  GPU memory and by far the slowest. Both need a CUDA device; on a CPU-only machine the model already
  lives in CPU memory and the option is refused in one line instead of being silently ignored.
  Scores are unchanged up to floating-point rounding (the same weights run in the same precision; only
  where they are stored moves, which can change the GPU kernels chosen): measured on an H200 with the tiny
  SDXL model, max |Δscore| 1.0e-7 with TF32 off and 7.8e-5 with PyTorch's default TF32 convolutions.
- ``vae_slicing``: the VAE encodes / decodes a batch one image at a time (lower peak memory; the same
  results: every image is computed alone either way, up to batch-size numerics).
- ``vae_tiling``: the VAE works in overlapping tiles *when an image is larger than its tile*
  (``tile_sample_min_size``, the VAE config's ``sample_size``, e.g. 1024 px for SDXL / Flux). At the
  model's own resolution nothing is tiled and scores are unchanged; above it, tiles are blended at their
  seams and the encoding differs slightly from the untiled one, so a run with tiling has its own
  fingerprint (scores of the two are never mixed in the score store).

The pixel DDPM family has no VAE and a single module: the options are refused there in one line.
"""
from __future__ import annotations

from typing import Any

import torch

OFFLOAD_MODES = ("none", "model", "sequential")


def check_memory_options(offload: Any, vae_slicing: Any, vae_tiling: Any, device: torch.device) -> str:
    """Validate the plain values before anything is loaded; returns the offload mode."""
    mode = "none" if offload in (None, False, "", "none", "null") else str(offload)
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"target.offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    for name, value in (("vae_slicing", vae_slicing), ("vae_tiling", vae_tiling)):
        if not isinstance(value, bool):
            raise ValueError(f"target.{name} must be true or false, got {value!r}")
    if mode != "none" and device.type != "cuda":
        raise ValueError(f"target.offload={mode} moves components between CPU and GPU memory, but the model runs on "
                         f"{device.type} (runtime.device); without a CUDA GPU everything is in CPU memory already: "
                         "set target.offload=none")
    return mode


def apply_memory_options(target: Any, mode: str, vae_slicing: bool, vae_tiling: bool) -> dict[str, Any]:
    """Apply the options to a loaded target (its components still in CPU memory when ``mode`` ≠ none).

    Returns what was applied, for the target's info (run.json)."""
    applied: dict[str, Any] = {}
    if mode == "none" and not vae_slicing and not vae_tiling:
        return applied
    pipe, vae = target.pipe, target.vae  # declared on every model target (None where the family has none)
    if pipe is None or vae is None:
        raise ValueError(f"target.offload / vae_slicing / vae_tiling apply to latent pipeline families; the "
                         f"{target.family or 'this'} target is a single pixel-space network: "
                         "leave them at none / false")
    if vae_slicing:
        vae.enable_slicing()
        applied["vae_slicing"] = True
    if vae_tiling:
        vae.enable_tiling()
        applied["vae_tiling"] = True
        applied["vae_tile_px"] = int(getattr(vae, "tile_sample_min_size", 0) or 0)
    if mode != "none":
        device = target.device
        if mode == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
        applied["offload"] = mode
    return applied
