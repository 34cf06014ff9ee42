"""Command-line entry point: ``audit-run [hydra overrides]`` (or ``python -m audit``).

A thin Hydra shim around :func:`audit.pipeline.run_audit`; tests call that function directly.
"""
from __future__ import annotations

import os
from pathlib import Path

# Quiet, offline-friendly defaults; the user's environment wins where set.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="audit")
def main(cfg: DictConfig) -> None:
    from audit.pipeline import run_audit

    run_audit(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
