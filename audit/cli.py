"""Command-line entry points: ``audit-run [hydra overrides]`` (or ``python -m audit``) and ``audit-plan``.

Thin Hydra shims around :func:`audit.pipeline.run_audit` and :func:`commit_plan`; tests call those directly. Both
go through the same preparation (:func:`audit.prepare.prepare`). A user error
(a bad config value, a manifest problem, a model that cannot be loaded, an attack that does not fit the
model) ends the run with one line on stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Quiet, offline-friendly defaults; the user's environment wins where set.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from audit import CONFIG_DIR  # noqa: E402,F401  (re-exported: tests and scripts compose from it)
from audit.errors import USER_ERRORS, UserError, run_reporting_user_errors, user_error_line  # noqa: E402,F401


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="audit")
def _main(cfg: DictConfig) -> None:
    from audit.pipeline import run_audit

    run_reporting_user_errors("audit-run", run_audit, cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    from audit.parallel.launcher import worker_rank_argv

    sys.argv = worker_rank_argv(sys.argv)  # accelerate ranks > 0: no results folder of their own (rank 0 writes it)
    _main()


def commit_plan(cfg: Any, out_dir: str | os.PathLike[str]) -> Path:
    """``audit-plan``: resolve the plan exactly as audit-run does (:func:`audit.prepare.prepare`: the model is loaded
    for its fingerprint, the evidence hashed and validated), write ``committed_plan.json``. Nothing is scored."""
    from audit.commitment import COMMITTED_PLAN, _manifest_path, build_commitment
    from audit.prepare import check_config, prepare

    out = Path(out_dir)
    check_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(cfg, progress=False)
    source = cfg.target.get("source")
    record = build_commitment(prep.plan, prep.decisions, prep.entries, _manifest_path(cfg), prep.target.fingerprint,
                              str(source) if source is not None else None)
    path = out / COMMITTED_PLAN
    path.write_text(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="audit")
def _plan(cfg: DictConfig) -> None:
    path = run_reporting_user_errors("audit-plan", commit_plan, cfg, HydraConfig.get().runtime.output_dir)
    rec = json.loads(path.read_text(encoding="utf-8"))
    print(f"plan committed: {path}\ncommitment SHA-256: {rec['commitment_sha256']}\n"
          f"score it with: audit-run <the same overrides> plan_commitment={path}")


def plan_main() -> None:
    """``audit-plan [hydra overrides]``: the same configuration as ``audit-run``; writes committed_plan.json."""
    _plan()


if __name__ == "__main__":
    main()
