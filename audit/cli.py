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


def refuse_secrets_in_overrides(argv: list[str], prog: str) -> None:
    """Before Hydra writes anything (a multirun's ``multirun.yaml``, the job folders): a credential given on the
    command line (a header, a URL with ``user:key@`` or a key in its query, the key as ``api_key_env``) ends the
    program in one line (:func:`audit.safety.check_no_secrets` over the overrides)."""
    import yaml

    from audit.safety import ConfigRefused, check_no_secrets

    tree: dict[str, Any] = {}
    for arg in argv:
        key, sep, raw = arg.lstrip("+~").partition("=")
        if not sep or key.startswith(("hydra.", "-")):
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip().startswith(("{", "[")) else raw.strip("'\"")
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):  # e.g. a group choice (target=http) before its keys
                node[part] = {}
            node = node[part]
        if not (isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict)):
            node[parts[-1]] = value
    try:
        check_no_secrets(tree)
    except ConfigRefused as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    from audit.parallel.launcher import worker_rank_argv

    sys.argv = worker_rank_argv(sys.argv)  # accelerate ranks > 0: no results folder of their own (rank 0 writes it)
    refuse_secrets_in_overrides(sys.argv[1:], "audit-run")
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
    refuse_secrets_in_overrides(sys.argv[1:], "audit-plan")
    _plan()


if __name__ == "__main__":
    main()
