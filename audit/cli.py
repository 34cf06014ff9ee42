"""Command-line entry point: ``audit-run [hydra overrides]`` (or ``python -m audit``).

A thin Hydra shim around :func:`audit.pipeline.run_audit`; tests call that function directly. A user error
(a bad config value, a manifest problem, a model that cannot be loaded, an attack that does not fit the
model) ends the run with one line on stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Quiet, offline-friendly defaults; the user's environment wins where set.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

#: Errors that describe a mistake in the user's input, not a bug: reported in one line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                 PermissionError, IsADirectoryError)


def user_error_line(exc: BaseException) -> str | None:
    """One line for a user error (following Hydra's instantiate wrappers to the real cause), else None."""
    from hydra.errors import InstantiationException

    seen = exc
    while isinstance(seen, InstantiationException) and seen.__cause__ is not None:
        seen = seen.__cause__
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(seen, OmegaConfBaseException):  # e.g. a required value (???) left unset
        return str(seen).strip().splitlines()[0]
    if isinstance(seen, USER_ERRORS) or type(seen).__name__ in ("TargetLoadError", "AttackSetupError"):
        text = str(seen).strip()
        if isinstance(seen, (FileNotFoundError, PermissionError)) and getattr(seen, "filename", None) and \
                str(seen.filename) not in text:
            text = f"{text}: {seen.filename}"
        first = text.splitlines()[0] if text else type(seen).__name__
        return first
    return None


def run_reporting_user_errors(prog: str, fn, *args):
    """``fn(*args)``; a user error ends the program with one line on stderr and exit status 2
    (``HYDRA_FULL_ERROR=1`` re-raises it with its traceback)."""
    try:
        return fn(*args)
    except Exception as e:
        line = user_error_line(e)
        if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="audit")
def _main(cfg: DictConfig) -> None:
    from audit.pipeline import run_audit

    run_reporting_user_errors("audit-run", run_audit, cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    from audit.parallel.launcher import worker_rank_argv

    sys.argv = worker_rank_argv(sys.argv)  # accelerate ranks > 0: no results folder of their own (rank 0 writes it)
    _main()


if __name__ == "__main__":
    main()
