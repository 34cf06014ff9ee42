"""Checks on a composed config before anything is built, loaded or written (issue 25).

* :func:`check_instantiable` — only the project's own classes (defined in an ``audit`` module) and its documented
  factory :func:`audit.targets.load_target` may be named by a ``_target_``; ``builtins.open``, ``shutil.copyfile``,
  ``pathlib.Path.touch``, ``audit.store.os.system`` or ``audit.io.write_json`` are refused in one line (Hydra's own
  block list stops only a few names).
* :func:`check_no_secrets` — a credential is never written: not in a header, not in a URL, not as the *value* of
  ``api_key_env`` (which names an environment variable). Run before the config is written anywhere.
* :func:`check_report_names` — report file names are plain names that cannot overwrite the run's records (declared
  with the other report keys in :class:`audit.schema.ReportSchema`).

Each raises :class:`ConfigRefused` (defined in :mod:`audit.errors`; a ``ValueError``: one line, exit status 2 on the
command line).
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit

from audit.schema import RECORD_NAMES, REPORT_FORMATS, ConfigRefused, check_section

__all__ = ["ConfigRefused", "check_instantiable", "check_no_secrets", "check_report_names", "RECORD_NAMES",
           "REPORT_FORMATS"]


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every entry of a nested plain container."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, str(k), v
            yield from _walk(v, p)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=False)  # unresolved: a bad interpolation is not our concern here
    return cfg


def _project_object(dotted: str) -> bool:
    """True when ``dotted`` names a class or function defined in a module of the ``audit`` package."""
    if not _DOTTED.fullmatch(dotted) or dotted.split(".")[0] != "audit":
        return False
    if dotted in FACTORIES:  # by name: whatever the name is bound to (tests replace it) is the project's factory
        return True
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        module = getattr(obj, "__module__", None) or ""
        if not (module == "audit" or module.startswith("audit.")):
            return False
        # classes of the project; of its functions only the documented factories (a function such as
        # audit.io.write_json would write wherever a crafted config says)
        return isinstance(obj, type) or f"{module}.{getattr(obj, '__qualname__', '')}" in FACTORIES
    return False


#: the project's functions a config may name as ``_target_`` (besides its classes)
FACTORIES = frozenset({"audit.targets.load_target", "audit.targets.loading.load_target"})


def check_instantiable(cfg: Any, skip: tuple[str, ...] = ("hydra",)) -> None:
    """Refuse any ``_target_`` in ``cfg`` (outside ``skip``) that is not one of the project's own callables."""
    plain = _plain(cfg)
    if not isinstance(plain, dict):
        return
    for top in list(plain):
        if top in skip:
            continue
        for path, key, value in _walk(plain[top], top):
            if key != "_target_":
                continue
            if not isinstance(value, str) or not _project_object(value):
                raise ConfigRefused(f"{path} = {value!r} is refused: only the project's own classes (audit.*) can be "
                                    "instantiated from a config or an override")


#: header / query / key names that carry a credential
_SECRET_NAME = re.compile(r"auth|key|token|secret|passw|cookie|session|credential|signature|bearer", re.I)
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")  # as audit.blackbox.target checks it, but before anything is written


def check_no_secrets(cfg: Any) -> None:
    """Refuse, before anything is written, a config that holds a credential: ``headers`` with a credential-like
    name or value (``Authorization``, ``X-Api-Key``, ``Cookie``, ``Bearer …``), a URL with ``user:password@`` or a
    key in its query, and an ``api_key_env`` that is not an environment variable's name (the key itself)."""
    plain = _plain(cfg)
    if not isinstance(plain, dict):
        return
    for path, key, value in _walk({k: v for k, v in plain.items() if k != "hydra"}):
        if key == "headers" and isinstance(value, dict):
            for name, v in value.items():
                if _SECRET_NAME.search(str(name)) or re.match(r"\s*(bearer|basic|token)\s", str(v), re.I):
                    raise ConfigRefused(f"{path}.{name}: a credential must not be given in a header (it would be "
                                        "written to the results folder); name an environment variable in "
                                        "target.api_key_env instead")
        if key.endswith("api_key_env") and value not in (None, ""):
            if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
                raise ConfigRefused(f"{path} must be the NAME of an environment variable (e.g. AUDIT_SERVICE_KEY), "
                                    "not the key itself; the value given is not shown")
        if isinstance(value, str) and re.match(r"[a-z][a-z0-9+.-]*://", value, re.I) and "${" not in value:
            try:
                parts = urlsplit(value)
                user = parts.username or parts.password
                query = parse_qsl(parts.query)
            except ValueError:
                continue
            if user:
                raise ConfigRefused(f"{path}: a URL must not hold a credential (user:password@); name an environment "
                                    "variable in target.api_key_env instead")
            if any(_SECRET_NAME.search(k) for k, _ in query):
                raise ConfigRefused(f"{path}: a URL must not hold a credential in its query; name an environment "
                                    "variable in target.api_key_env instead")


def check_report_names(report_cfg: Any) -> None:
    """``report.formats`` ⊆ {html, pdf}; ``report.filename`` / ``report.pdf_filename`` plain file names in the
    results folder (no ``/``, no ``..``), ending in .html / .pdf, different from each other and from every record
    (:data:`RECORD_NAMES`); language and jurisdiction — as declared in :class:`audit.schema.ReportSchema`."""
    check_section("report", report_cfg)
