"""One base for the errors that end a command with one line (exit status 2), not a traceback.

:class:`UserError` is a mistake in the user's input — a config value, a manifest, a results folder, a model that
cannot be loaded — that the user fixes, as opposed to a bug. Commands catch it (and the standard errors that mean
the same: ``ValueError``, missing files, permissions) through :func:`run_reporting_user_errors`;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

__all__ = ["UserError", "ConfigRefused", "USER_ERRORS", "user_error_line", "run_reporting_user_errors"]


class UserError(ValueError):
    """A mistake in the user's input, reported in one line (a ``ValueError`` for callers that catch those)."""


class ConfigRefused(UserError):
    """A config value refused before anything runs (one line): :mod:`audit.schema`, :mod:`audit.safety`, the
    report's language and expert-file checks."""


#: Errors that describe a mistake in the user's input, not a bug: reported in one line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, NotADirectoryError,
                                                 PermissionError, IsADirectoryError)
_NAMED = ("TargetLoadError", "AttackSetupError")  # the targets' and attacks' own one-line errors


def user_error_line(exc: BaseException) -> str | None:
    """One line for a user error (following Hydra's instantiate wrappers to the real cause), else None."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    seen = exc
    while isinstance(seen, InstantiationException) and seen.__cause__ is not None:
        seen = seen.__cause__
    if isinstance(seen, OmegaConfBaseException):  # e.g. a required value (???) left unset
        return str(seen).strip().splitlines()[0]
    if isinstance(seen, USER_ERRORS) or type(seen).__name__ in _NAMED:
        text = str(seen).strip()
        if isinstance(seen, (FileNotFoundError, PermissionError)) and getattr(seen, "filename", None) and \
                str(seen.filename) not in text:
            text = f"{text}: {seen.filename}"
        return text.splitlines()[0] if text else type(seen).__name__
    return None


def run_reporting_user_errors(prog: str, fn: Callable[..., Any], *args: Any) -> Any:
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
