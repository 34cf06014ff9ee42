"""Train a ground-truth target: a model whose member split is known, saved in diffusers format.

    python scripts/train_target.py                                  # DDPM from scratch on openclipart
    python scripts/train_target.py model=lora dataset=synthetic     # base + LoRA fine-tune on one artist
    python scripts/train_target.py --help                           # every option (configs/train_target.yaml)

Writes to ``out`` (default ``.cache/audit/targets/<kind>_<source>``): the model, ``membership.json``
(image SHA-256s and roles, seed, steps, training time and machine) and ``evidence.csv`` (a manifest the
audit reads: ``audit-run scenario=null target=local target.source=<out> data=manifest
data.manifest=<out>/evidence.csv``). Re-running resumes. See :mod:`audit.groundtruth.train`.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from audit.cli import CONFIG_DIR  # noqa: E402


@hydra.main(config_path=str(CONFIG_DIR), config_name="train_target", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from audit.groundtruth.train import train_target

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    out = train_target(cfg, cfg.out, cfg.paths.cache_dir, progress=bool(cfg.progress))
    print(f"target: {out}")


if __name__ == "__main__":
    main()
