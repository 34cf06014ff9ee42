"""Load a diffusion model under audit from a hub id or a local diffusers folder, safely.

Safety rules (a model under audit is untrusted input):
- weights are read with safetensors; pickle-based files (``.bin``, ``.ckpt``, ``.pt``) are refused
  unless the user sets ``allow_pickle=True``;
- remote code is never executed (no ``trust_remote_code``, no custom pipelines).

The fingerprint is a SHA-256 over every file of the resolved model folder (weights and configs) and
every LoRA file applied, so a report names exactly the bytes that were audited.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from audit.targets.base import Target, TargetInfo
from audit.targets.models import LatentTarget, PixelTarget

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
PIXEL_PIPELINES = {"DDPMPipeline", "DDIMPipeline", "PNDMPipeline", "ScoreSdeVePipeline"}
LATENT_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"}


class TargetLoadError(RuntimeError):
    """The model could not be loaded as requested; the message says why and what to do."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TargetLoadError(f"runtime.device={device!r} but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise TargetLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(table)}")
    return table[dtype]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_folder(root: Path) -> dict[str, str]:
    """sha256 of every non-hidden file below ``root`` (symlinks followed, as in the hub cache)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out[rel.as_posix()] = sha256_file(p)
    return out


def fingerprint_of(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _resolve_folder(source: str, revision: str | None, local_files_only: bool, allow_pickle: bool) -> Path:
    """A local folder as is, or the hub snapshot that ``from_pretrained`` would use (only needed files)."""
    p = Path(source).expanduser()
    if p.exists():
        if not (p / "model_index.json").is_file():
            raise TargetLoadError(
                f"{source} is not a diffusers model folder (no model_index.json). "
                "Save it with `pipeline.save_pretrained(...)` or give a hub id."
            )
        return p.resolve()
    if not _HUB_ID.fullmatch(source):  # a path, not a hub id (owner/name): say which was tried
        raise TargetLoadError(f"model folder not found: {p.absolute()} (tried as a local path; "
                              "a hub id has the form owner/name)")
    from diffusers import DiffusionPipeline

    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        folder = DiffusionPipeline.download(
            source,
            revision=revision,
            local_files_only=offline,
            use_safetensors=None if allow_pickle else True,
        )
    except Exception as e:  # network, missing repo, or no safetensors weights
        hint = " (offline: only models already in the local hub cache can be used)" if offline else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TargetLoadError(f"could not fetch model {source!r} from the hub (tried as a hub id; no local folder "
                              f"{p.absolute()} exists){hint}: {first}") from e
    return Path(folder)


def _check_no_pickle(folder: Path, allow_pickle: bool) -> None:
    if allow_pickle:
        return
    weights = [p for p in folder.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    has_safe = any(folder.rglob("*.safetensors"))
    if weights and not has_safe:
        raise TargetLoadError(
            f"{folder} holds only pickle weight files ({weights[0].name}, ...). Pickle files can run code "
            "when loaded; convert them to safetensors, or set target.allow_pickle=true if you trust them."
        )


def _resolve_lora_file(spec: str, allow_pickle: bool, local_files_only: bool) -> Path:
    p = Path(spec).expanduser()
    if p.is_dir():
        candidates = sorted(p.glob("*.safetensors"))
        if not candidates:
            pickles = sorted(q for q in p.iterdir() if q.suffix in PICKLE_SUFFIXES)
            if pickles and allow_pickle:
                return pickles[0]
            raise TargetLoadError(f"no .safetensors LoRA file in {p}")
        preferred = [c for c in candidates if c.name == "pytorch_lora_weights.safetensors"]
        if len(candidates) > 1 and not preferred:
            raise TargetLoadError(f"several LoRA files in {p}; name one: {[c.name for c in candidates]}")
        return preferred[0] if preferred else candidates[0]
    if p.is_file():
        if p.suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise TargetLoadError(f"refusing pickle LoRA file {p}; convert to safetensors or set allow_pickle")
        return p
    # A hub repo id, optionally "repo_id:weight_name.safetensors".
    from huggingface_hub import hf_hub_download

    repo, _, weight = spec.partition(":")
    try:
        return Path(hf_hub_download(repo, weight or "pytorch_lora_weights.safetensors", local_files_only=local_files_only))
    except Exception as e:
        raise TargetLoadError(f"could not fetch LoRA {spec!r}: {e}") from e


def _load_lora_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # Only reached with allow_pickle=True; weights_only still blocks arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_target(
    source: str,
    *,
    kind: str = "auto",
    revision: str | None = None,
    lora: Sequence[str] | str | None = None,
    lora_scale: float = 1.0,
    lora_strict: bool = True,
    local_files_only: bool = False,
    allow_pickle: bool = False,
    device: str = "auto",
    dtype: str = "float32",
) -> Target:
    """Load a model under audit.

    Args:
        source: local diffusers folder (``save_pretrained`` layout) or a hub id.
        kind: ``auto`` (from ``model_index.json``), ``pixel`` (unconditional UNet2DModel) or ``latent``
            (Stable-Diffusion layout).
        revision: hub revision (commit hash recommended for evidence).
        lora: LoRA weights to apply (folder, ``.safetensors`` file, or hub id), fused at ``lora_scale``.
        lora_strict: every module a LoRA file names must exist in the model, else the load is
            refused in one line; ``False`` applies the matching part and labels the LoRA ``[PARTIAL: ...]``.
        local_files_only: never touch the network (also implied by ``HF_HUB_OFFLINE=1``).
        allow_pickle: accept pickle-based weight files. Off by default: pickles can execute code.
        device, dtype: where and in which precision the model runs.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    folder = _resolve_folder(str(source), revision, local_files_only, allow_pickle)
    _check_no_pickle(folder, allow_pickle)
    index = json.loads((folder / "model_index.json").read_text())
    pipe_class = index.get("_class_name", "")
    if kind == "auto":
        if pipe_class in PIXEL_PIPELINES or ("unet" in index and "vae" not in index and "text_encoder" not in index):
            kind = "pixel"
        elif pipe_class in LATENT_PIPELINES or {"unet", "vae", "text_encoder", "tokenizer"} <= set(index):
            kind = "latent"
        else:
            raise TargetLoadError(
                f"cannot tell the model kind of {source} (pipeline {pipe_class!r}); set target.kind to pixel or latent"
            )
    if kind == "latent":
        missing = sorted({"unet", "vae", "text_encoder", "tokenizer", "scheduler"} - set(index))
        if missing:
            raise TargetLoadError(
                f"{source} is not a Stable-Diffusion-layout model: model_index.json lacks {missing}"
            )
    files = hash_folder(folder)
    lora_specs = [lora] if isinstance(lora, str) else list(lora or [])

    from diffusers import DiffusionPipeline

    common: dict[str, Any] = {"local_files_only": True, "use_safetensors": None if allow_pickle else True}
    try:
        if kind == "pixel":
            pipe = DiffusionPipeline.from_pretrained(folder, **common)
        elif kind == "latent":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(
                folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **common
            )
        else:
            raise TargetLoadError(f"unknown target kind {kind!r}; choose auto, pixel or latent")
    except TargetLoadError:
        raise
    except Exception as e:
        raise TargetLoadError(f"could not load {source} as a {kind} model: {e}") from e

    lora_names: list[str] = []
    if lora_specs:
        if kind != "latent":
            raise TargetLoadError("LoRA adapters are supported for latent (Stable-Diffusion layout) targets")
        names = []
        for i, spec in enumerate(lora_specs):
            path = _resolve_lora_file(str(spec), allow_pickle, local_files_only)
            files[f"lora/{i}/{path.name}"] = sha256_file(path)
            name = f"audit_lora_{i}"
            from audit.lora_check import apply_lora_checked  # every key must map (lora_strict)

            partial = apply_lora_checked(pipe, _load_lora_state(path), name, path.name, strict=lora_strict)
            names.append(name)
            lora_names.append(str(spec) + partial)  # a partial adapter says so wherever it is named
        pipe.set_adapters(names, adapter_weights=[lora_scale] * len(names))
        # Fusing bakes the adapters into the weights: same outputs, no per-call LoRA overhead.
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()

    unet = pipe.unet
    res = unet.config.sample_size
    res = res[0] if isinstance(res, (list, tuple)) else res
    classes = {k: type(v).__name__ for k, v in pipe.components.items() if v is not None}
    common_info = dict(
        source=str(source),
        prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
        num_train_timesteps=int(pipe.scheduler.config.get("num_train_timesteps", 1000)),
        # the LoRA scale changes the weights actually used, so it is part of the fingerprint
        fingerprint=fingerprint_of({**files, "lora_scale": str(float(lora_scale))} if lora_names else files),
        files=files,
        lora=tuple(lora_names),
        classes=classes,
    )
    if kind == "pixel":
        info = TargetInfo(kind="pixel", resolution=int(res), conditional=False, **common_info)
        return PixelTarget(unet, pipe.scheduler, info, dev, dt)
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    info = TargetInfo(kind="latent", resolution=int(res) * vae_scale, conditional=True, **common_info)
    return LatentTarget(unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, info, dev, dt)
