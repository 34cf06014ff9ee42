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
import logging
import os
import re
from pathlib import Path
from dataclasses import replace
from typing import Any, Sequence

import torch

from audit.targets.base import Target

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


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
    if spec.startswith(("/", ".", "~")) or spec.endswith((".safetensors", *PICKLE_SUFFIXES)) or spec.count("/") > 1:
        raise TargetLoadError(f"LoRA file or folder not found: {p}")  # a path, not a hub id (owner/name)
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

        try:
            state = load_file(str(path))
        except Exception as e:  # a truncated or foreign file: one line naming it
            raise TargetLoadError(f"LoRA file {path} is not a readable safetensors file: {e}") from None
        if not state:
            raise TargetLoadError(f"LoRA file {path} holds no tensors (an empty adapter)")
        return state
    # Only reached with allow_pickle=True; weights_only still blocks arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


_LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


def _diffusers_lora_layout(pipe: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA state dict in the diffusers/peft key layout (``unet.<module>.lora_A.weight``), whatever its file used.

    kohya / A1111 files (``lora_unet_…lora_down.weight`` with per-module ``alpha``) are converted by the
    pipeline's own ``lora_state_dict`` (diffusers' converters for SD, SDXL, SD3, Flux); a per-module
    alpha is folded into the up-projection (W + (α/r) B A = W + (α/r · B) A), so the converted adapter
    loads at scale 1 and is exactly the file's adapter.
    """
    if all(k.split(".", 1)[0] in _LORA_COMPONENTS for k in state):
        return state
    from diffusers.utils import convert_unet_state_dict_to_peft

    # SGM-layout (input_blocks / output_blocks) kohya SDXL files are renumbered with the UNet's own
    # layers_per_block, as the pipeline's load_lora_weights does (without it diffusers assumes 2)
    unet = getattr(pipe, "unet", None)
    extra = {"unet_config": unet.config} if unet is not None else {}
    try:
        out = pipe.lora_state_dict(dict(state), return_alphas=True, **extra)
    except TypeError:  # pipelines whose lora_state_dict has no return_alphas
        out = pipe.lora_state_dict(dict(state), **extra)
    converted, alphas = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    converted = dict(converted)
    for key, alpha in (alphas or {}).items():
        down = key[: -len(".alpha")] if key.endswith(".alpha") else key
        for d, u in ((".down.weight", ".up.weight"), (".lora_A.weight", ".lora_B.weight")):
            if down.endswith(d):
                up = down[: -len(d)] + u
                break
        else:
            down, up = down + ".lora_A.weight", down + ".lora_B.weight"
        if down in converted and up in converted:
            rank = converted[down].shape[0]
            converted[up] = converted[up] * (float(alpha) / rank)
    if any(".processor." in k or "_lora.down." in k for k in converted):  # the older attention-processor layout
        converted = convert_unet_state_dict_to_peft(converted)
    return converted


def _components_not_in_file(single: Path, folder: Path, index: dict[str, Any]) -> dict[str, Any]:
    """The text encoders and VAE a single ``.safetensors`` checkpoint does not hold, loaded from the config folder.

    Many checkpoints ship only some components (SD3 / Flux files often only the denoiser, most without T5).
    diffusers would look for the missing ones in the config folder under its own weight names only
    (``diffusion_pytorch_model.*``), which misses a transformers folder's ``model.safetensors``; so the audit
    passes them explicitly. What the file holds is decided by diffusers' own key checks.
    """
    if single.suffix != ".safetensors":
        return {}
    import diffusers
    import transformers
    from diffusers.loaders.single_file_utils import LDM_VAE_KEYS, is_clip_model_in_single_file, is_t5_in_single_file
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        keys = set(f.keys())
    out: dict[str, Any] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or len(spec) != 2 or spec[1] is None:
            continue
        library, cls_name = spec
        if library == "transformers" and name.startswith("text_encoder"):
            cls = getattr(transformers, cls_name)
            t5 = cls_name.startswith("T5") and is_t5_in_single_file(keys)
            inside = is_clip_model_in_single_file(cls, keys) or t5
            if not inside:
                out[name] = cls.from_pretrained(str(folder), subfolder=name, local_files_only=True)
        elif name == "vae" and not any(k.startswith(tuple(LDM_VAE_KEYS)) for k in keys):
            out[name] = getattr(diffusers, cls_name).from_pretrained(str(folder), subfolder=name, local_files_only=True,
                                                                     use_safetensors=True)
    return out


def _choose_family(index: dict[str, Any], kind: str, family: str | None, source: str):
    """The registered family for this folder: forced by ``family`` / ``kind``, else from ``_class_name``."""
    from audit.targets.registry import family_for_pipeline, family_named, supported_families

    if family:
        fam = family_named(family)
        if fam is None:
            raise TargetLoadError(f"unknown target.family {family!r}; supported: {supported_families()}")
        return fam
    if kind in ("pixel", "latent"):  # the older switch: pixel DDPM or the SD 1.x/2.x layout
        return family_named("pixel" if kind == "pixel" else "sd")
    if kind != "auto":
        raise TargetLoadError(f"unknown target kind {kind!r}; choose auto, pixel or latent (or set target.family)")
    pipe_class = index.get("_class_name", "")
    fam = family_for_pipeline(pipe_class)
    if fam is None and not pipe_class.startswith(("StableDiffusionXL", "StableDiffusion3", "Flux", "PixArt")):
        # folders written by other tools sometimes name no (or a custom) pipeline: recognise the two classic layouts
        if "unet" in index and "vae" not in index and "text_encoder" not in index:
            fam = family_named("pixel")
        elif {"unet", "vae", "text_encoder", "tokenizer"} <= set(index) and "text_encoder_2" not in index:
            fam = family_named("sd")
    if fam is None:
        raise TargetLoadError(f"cannot audit {source}: pipeline {pipe_class!r} is not a supported family; "
                              f"supported: {supported_families()}")
    return fam


def _given_conditioning(options: dict[str, Any], metadata_files: list[tuple[Path, str]], use_metadata: bool,
                        base: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The conditioning values given before the family decides: the user's options, else the training metadata's
    (:func:`audit.targets.metadata.scoring_defaults`). Returns those choices and the metadata record for the info."""
    from audit.targets.conditioning import Choice
    from audit.targets.metadata import check_base_hashes, metadata_notes, read_training_metadata, scoring_defaults

    given = {k: Choice(v, "option", f"target.{k}={v!r} (set by the user)") for k, v in options.items()
             if v is not None}
    if not use_metadata:
        return given, ({"files": [], "note": "target.use_training_metadata=false: not read"} if metadata_files else {})
    records = [read_training_metadata(p, role) for p, role in metadata_files]
    # a model folder's own weight files only when a trainer left training keys in them (diffusers writes none)
    records = [r for r, (_, role) in zip(records, metadata_files) if role != "weights in the model folder"
               or r.status == "read"]
    if not records:
        return given, {}
    implied = scoring_defaults(records)
    for key, (value, why) in implied.items():
        if key not in given:
            given[key] = Choice(value, "training metadata", why)
    used = {k: {"value": v, "reason": why, "used": k not in options or options[k] is None}
            for k, (v, why) in implied.items()}
    record = {"files": [r.to_dict() for r in records], "scoring_defaults": used, "notes": metadata_notes(records),
              "base_check": check_base_hashes(records, base)}
    return given, record


def load_target(
    source: str,
    *,
    kind: str = "auto",
    family: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    lora: Sequence[str] | str | None = None,
    lora_scale: float = 1.0,
    lora_strict: bool = True,
    local_files_only: bool = False,
    allow_pickle: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    resolution: int | None = None,
    guidance: float | None = None,
    max_sequence_length: int | None = None,
    t5_attention_mask: bool | None = None,
    caption_template: str | None = None,
    use_training_metadata: bool = True,
    base: str | None = None,
    offload: str = "none",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
) -> Target:
    """Load a model under audit.

    Args:
        source: local diffusers folder (``save_pretrained`` layout), a hub id, or a single-file checkpoint
            (``.safetensors`` as shared by A1111 / civitai; needs ``config``).
        kind: ``auto`` (the family from ``model_index.json``), ``pixel`` or ``latent`` (SD 1.x/2.x layout).
        family: force a registered family (``pixel``, ``sd``, ``sdxl``, ``sd3``, ``flux``, ``pixart``).
        config: for a single-file ``source``: the diffusers folder or hub id whose configs (and any
            components the file lacks) describe the model; its ``model_index.json`` names the family.
        revision: hub revision (commit hash recommended for evidence).
        lora: LoRA weights to apply (folder, ``.safetensors`` file, or hub id), fused at ``lora_scale``;
            diffusers/peft and kohya / A1111 key layouts (diffusers converts the latter).
        lora_strict: every module a LoRA file names must exist in the model, else the load is
            refused in one line; ``False`` applies the matching part and labels the LoRA ``[PARTIAL: ...]``.
        local_files_only: never touch the network (also implied by ``HF_HUB_OFFLINE=1``).
        allow_pickle: accept pickle-based weight files. Off by default: pickles can execute code.
        device, dtype: where and in which precision the model runs.
        resolution, max_sequence_length, t5_attention_mask, guidance, caption_template: how works and prompts are
            conditioned (:data:`audit.targets.conditioning.CONDITIONING_OPTIONS`). ``None`` = as the model was
            trained: the training metadata of the LoRA / single file (``ss_resolution``,
            ``ss_t5xxl_max_token_length``, ``ss_apply_t5_attn_mask``, ``ss_guidance_scale``) when
            ``use_training_metadata``, else the model's config (resolution: the denoiser's or the VAE's
            ``sample_size``), else the pipeline's default. An option that does not apply to the family is refused.
            Every decision is recorded with its source and reason in ``info.conditioning``.
        use_training_metadata: read the files' safetensors metadata (never the tensors) into
            ``info.training_metadata`` (an exhibit) and take scoring defaults from it.
        base: the public base model the fine-tune was made from (a folder, hub id or single file): the
            metadata's base-model hashes are checked against it (``audit.defaults`` also calibrates against it).
        offload, vae_slicing, vae_tiling: memory options for large models on one GPU (``none`` | ``model`` |
            ``sequential`` CPU offload; see :mod:`audit.targets.memory`). Offload needs a CUDA device.
    """
    from audit.targets.memory import apply_memory_options, check_memory_options

    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    try:
        offload_mode = check_memory_options(offload, vae_slicing, vae_tiling, dev)
    except ValueError as e:
        raise TargetLoadError(str(e)) from e
    single = Path(str(source)).expanduser()
    single_file = single.is_file()
    if single_file:
        if single.suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise TargetLoadError(f"refusing pickle checkpoint {single.name}; convert to safetensors or set allow_pickle")
        if config in (None, "", "???"):
            raise TargetLoadError(f"{single.name} is a single-file checkpoint: set target.config to the diffusers "
                                  "folder or hub id of its model (its configs describe the architecture)")
        folder = _resolve_folder(str(config), revision, local_files_only, allow_pickle)
    else:
        folder = _resolve_folder(str(source), revision, local_files_only, allow_pickle)
        _check_no_pickle(folder, allow_pickle)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise TargetLoadError(f"{folder / 'model_index.json'} is not valid JSON: {e}") from None
    if not isinstance(index, dict):
        raise TargetLoadError(f"{folder / 'model_index.json'} must be a JSON object, got {type(index).__name__}")
    fam = _choose_family(index, kind, family, str(source))
    missing = sorted(set(fam.required) - set(index))
    if missing:
        raise TargetLoadError(f"{source} is not a {fam.title} model: model_index.json lacks {missing}")
    files = hash_folder(folder)
    if single_file:
        files = {**{f"config/{k}": v for k, v in files.items()}, f"single_file/{single.name}": sha256_file(single)}
    lora_specs = [lora] if isinstance(lora, str) else list(lora or [])

    import diffusers

    pipe_cls = getattr(diffusers, fam.pipeline_class)
    common: dict[str, Any] = {"local_files_only": True, "use_safetensors": None if allow_pickle else True}
    try:
        if single_file:
            if not fam.single_file or not hasattr(pipe_cls, "from_single_file"):
                raise TargetLoadError(f"single-file checkpoints are not supported for {fam.title} models; "
                                      "give a diffusers folder")
            lacking = _components_not_in_file(single, folder, index)  # taken from the config folder instead
            pipe = pipe_cls.from_single_file(str(single), config=str(folder), local_files_only=True, **lacking,
                                             **fam.load_kwargs)
        else:
            pipe = pipe_cls.from_pretrained(folder, **fam.load_kwargs, **common)
    except TargetLoadError:
        raise
    except Exception as e:
        raise TargetLoadError(f"could not load {source} as a {fam.title} model: {e}") from e

    # files whose safetensors header may say how the model was trained (read without loading tensors)
    metadata_files: list[tuple[Path, str]] = [(single, "single file")] if single_file else []
    if not single_file:
        for sub in ("unet", "transformer"):
            metadata_files += [(p, "weights in the model folder") for p in sorted((folder / sub).glob("*.safetensors"))[:8]]
    lora_names: list[str] = []
    if lora_specs:
        if not hasattr(pipe, "load_lora_weights"):
            raise TargetLoadError(f"LoRA adapters are not supported for {fam.title} targets (diffusers has no LoRA "
                                  "loader for this pipeline)")
        names = []
        for i, spec in enumerate(lora_specs):
            path = _resolve_lora_file(str(spec), allow_pickle, local_files_only)
            files[f"lora/{i}/{path.name}"] = sha256_file(path)
            metadata_files.append((path, "lora"))
            name = f"audit_lora_{i}"
            try:
                from audit.lora_check import apply_lora_checked  # every key must map (lora_strict)

                state = _diffusers_lora_layout(pipe, _load_lora_state(path))  # kohya / A1111 → peft keys
                partial = apply_lora_checked(pipe, state, name, path.name, strict=lora_strict)
            except Exception as e:
                raise TargetLoadError(f"could not apply LoRA {spec!r} to this {fam.title} model: {e}") from e
            names.append(name)
            lora_names.append(str(spec) + partial)  # a partial adapter says so wherever it is named
        pipe.set_adapters(names, adapter_weights=[lora_scale] * len(names))
        # Fusing bakes the adapters into the weights: same outputs, no per-call LoRA overhead.
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()

    classes = {k: type(v).__name__ for k, v in pipe.components.items() if v is not None}
    common_info = dict(
        source=str(source),
        prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
        num_train_timesteps=int(pipe.scheduler.config.get("num_train_timesteps", 1000)),
        # the LoRA scale changes the weights actually used, so it is part of the fingerprint; so does VAE tiling
        # (it changes the encoding of images larger than a tile; audit/targets/memory.py)
        fingerprint=fingerprint_of({**files, **({"lora_scale": str(float(lora_scale))} if lora_names else {}),
                                    **({"vae_tiling": "true"} if vae_tiling else {})}),
        files=files,
        lora=tuple(lora_names),
        classes=classes,
        family=fam.name,
    )
    from audit.targets.conditioning import ConditioningChoices

    given, training = _given_conditioning(
        {"resolution": resolution, "max_sequence_length": max_sequence_length, "t5_attention_mask": t5_attention_mask,
         "guidance": guidance, "caption_template": caption_template},
        metadata_files, use_training_metadata, base if base not in (None, "", "???") else source)
    # a setting that differs from the model's own defaults changes every score: part of the fingerprint
    given_fp = {f"conditioning/{k}": repr(c.value) for k, c in sorted(given.items())}
    if given_fp:
        common_info["fingerprint"] = fingerprint_of({**files, **given_fp,
                                                     **({"lora_scale": str(float(lora_scale))} if lora_names else {}),
                                                     **({"vae_tiling": "true"} if vae_tiling else {})})
    choices = ConditioningChoices(fam.name, given)
    options = {"resolution": resolution, "guidance": guidance, "choices": choices}
    try:
        # with CPU offload the components stay in CPU memory; diffusers' hooks move each to the GPU for its call
        target = fam.build(pipe, torch.device("cpu") if offload_mode != "none" else dev, dt, common_info, options)
    except ValueError as e:
        raise TargetLoadError(f"could not set up {source} as a {fam.title} target: {e}") from e
    target.device = dev
    try:
        memory = apply_memory_options(target, offload_mode, vae_slicing, vae_tiling)
    except ValueError as e:
        raise TargetLoadError(str(e)) from e
    target.family = fam.name
    ml = choices.chosen.get("max_sequence_length")
    if lora_names and ml is not None and ml.source == "family default":
        log.warning("the LoRA file does not say its training prompt length: prompts are encoded to %s tokens (%s); if "
                    "it was trained with another length, set target.max_sequence_length (a wrong length can remove "
                    "the membership signal)", ml.value, ml.reason)
    # the info records the process as the adapter resolved it (e.g. Flux's dynamic shift at this resolution)
    target.info = replace(target.info, prediction_type=target.process.prediction_type,
                          process=target.process.describe(), memory=memory, conditioning=choices.to_dict(),
                          training_metadata=training)
    return target
