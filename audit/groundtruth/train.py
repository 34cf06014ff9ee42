"""Ground-truth targets: train a model whose training split we know, and write that split beside it.

Two kinds (``configs/model/``):

- ``ddpm``: an unconditional pixel DDPM trained from scratch on a member split of a dataset;
- ``lora``: the real-world dispute in miniature — a tiny text-to-image latent model (SD layout) pre-trained
  on a broad set that leaves one artist out, then a peft LoRA fine-tuned on that artist's works only,
  with captions. Held-out works of the same artist are the non-members; the base model is kept as the
  reference model for calibrated attacks.

Every image goes through :func:`audit.data.load_evidence` (hash, header check, decode, preprocessing), so
the pixels a model is trained on are exactly the pixels an audit of it scores. Beside the weights:
``membership.json`` (each image's SHA-256 and role, seed, steps, dataset config, training statistics,
rejected files) and ``evidence.csv``, a manifest of the members and non-members that ``audit-run
data=manifest data.manifest=<out>/evidence.csv`` reads directly.

Resumable: DDPM training checkpoints every ``checkpoint_every`` steps and resumes bit-exactly; the LoRA
case skips stages (base, LoRA) whose outputs already exist.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from audit.data import load_evidence, write_manifest
from audit.groundtruth.sources import dataset_entries, split_members

log = logging.getLogger(__name__)

__all__ = ["train_target"]


def _as_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div(127.5).sub(1.0)


def _membership(ev, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "images": [{"image_id": r.image_id, "path": r.path, "role": r.role, "caption": r.caption,
                    "artist": r.artist} for r in ev.records],
        "n_member": sum(r.role == "member" for r in ev.records),
        "n_nonmember": sum(r.role == "nonmember" for r in ev.records),
        "rejected": [r.to_dict() for r in ev.rejected],
        **extra,
    }


def _write_outputs(out: Path, ev, extra: dict[str, Any]) -> None:
    (out / "membership.json").write_text(json.dumps(_membership(ev, extra), indent=1))
    write_manifest([{"path": r.path, "role": r.role, "caption": r.caption, "artist": r.artist} for r in ev.records],
                   out / "evidence.csv")


def train_target(cfg: Any, out: str | Path, cache: str | Path, progress: bool = True) -> Path:
    """Train the target described by ``cfg`` (keys ``dataset``, ``model``, ``seed``) into ``out``."""
    out, cache = Path(out), Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    kind = cfg["model"]["kind"]
    if kind == "ddpm":
        return _train_ddpm(cfg, out, cache, progress)
    if kind == "lora":
        return _train_lora(cfg, out, cache, progress)
    raise ValueError(f"model.kind must be ddpm or lora, got {kind!r}")


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    except ImportError:  # pragma: no cover
        return cfg


def _train_ddpm(cfg: Any, out: Path, cache: Path, progress: bool) -> Path:
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm

    m, seed = cfg["model"], int(cfg["seed"])
    if (out / "model_index.json").is_file() and (out / "membership.json").is_file():
        log.info("%s already holds a trained model; delete it to retrain", out)
        return out
    entries = dataset_entries(cfg["dataset"], cache)
    split = split_members(entries, int(m["n_members"]), int(m["n_nonmembers"]), seed, groups=m.get("groups"))
    ev = load_evidence(split, int(m["resolution"]), progress=progress)
    members = _as_float(ev.pixels[[i for i, r in enumerate(ev.records) if r.role == "member"]])
    if len(members) == 0:
        raise ValueError("no usable member images (all rejected?)")
    unet, sched = build_ddpm(int(m["resolution"]), channels=tuple(m["channels"]), attention=bool(m.get("attention", False)),
                             seed=seed)
    t0 = time.time()
    stats = train_ddpm(unet, sched, members, steps=int(m["steps"]), batch_size=int(m["batch_size"]), lr=float(m["lr"]),
                       seed=seed, bf16=bool(m.get("bf16", False)), progress=progress,
                       device=str(m.get("device", "cpu")), checkpoint=out / "checkpoint.pt",
                       checkpoint_every=int(m.get("checkpoint_every", 200)))
    save_ddpm(unet.cpu(), sched, out)
    _write_outputs(out, ev, {"kind": "ddpm", "seed": seed, "model": _plain(m), "dataset": _plain(cfg["dataset"]),
                             "training": {**stats, "wall_s_this_session": time.time() - t0,
                                          "machine": _machine(str(m.get("device", "cpu")))}})
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return out


def _machine(device: str) -> str:
    import os

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _train_lora(cfg: Any, out: Path, cache: Path, progress: bool) -> Path:
    from audit.groundtruth.sd import build_tiny_sd, make_lora, train_tiny_sd

    m, seed = cfg["model"], int(cfg["seed"])
    key, artist = m.get("group_key", "artist"), m["artist"]
    base, lora = out / "base", out / "lora"
    entries = dataset_entries(cfg["dataset"], cache)
    res = int(m["resolution"])
    # the artist's works: members (fine-tuning set) and held-out non-members
    split = split_members(entries, int(m["n_members"]), int(m["n_nonmembers"]), seed, groups=[artist], group_key=key)
    ev = load_evidence(split, res, progress=progress)
    timings: dict[str, float] = {}
    if not (base / "model_index.json").is_file():
        broad = [e for e in entries if e.get(key) != artist]
        rng = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(broad), generator=rng)[: int(m["base_images"])].tolist()
        base_ev = load_evidence([{**broad[i], "role": "member"} for i in pick], res, progress=progress)
        t0 = time.time()
        build_tiny_sd(base, resolution=res, seed=seed, text_max_length=int(m.get("text_max_length", 48)))
        train_tiny_sd(base, _as_float(base_ev.pixels), [r.caption for r in base_ev.records],
                      steps=int(m["base_steps"]), batch_size=int(m["batch_size"]), lr=float(m["base_lr"]), seed=seed,
                      train_vae_steps=int(m["vae_steps"]))
        timings["base_s"] = time.time() - t0
        (out / "base_membership.json").write_text(json.dumps(_membership(base_ev, {"kind": "base"}), indent=1))
    if not (lora / "pytorch_lora_weights.safetensors").is_file():
        idx = [i for i, r in enumerate(ev.records) if r.role == "member"]
        t0 = time.time()
        make_lora(base, lora, rank=int(m["rank"]), seed=seed, train_images=_as_float(ev.pixels[idx]),
                  captions=[ev.records[i].caption for i in idx], steps=int(m["lora_steps"]), lr=float(m["lora_lr"]),
                  batch_size=int(m["lora_batch_size"]))
        timings["lora_s"] = time.time() - t0
    previous = out / "membership.json"
    if previous.is_file():  # a resumed run keeps the timings of the stages it skipped
        timings = {**json.loads(previous.read_text()).get("training", {}), **timings}
        timings.pop("machine", None)
    _write_outputs(out, ev, {"kind": "lora", "seed": seed, "artist": artist, "group_key": key, "model": _plain(m),
                             "dataset": _plain(cfg["dataset"]), "base": str(base), "lora": str(lora),
                             "training": {**timings, "machine": _machine("cpu")}})
    return out
