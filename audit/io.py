"""Everything that touches a results folder: the ScoreTable, the image table, rejections, metadata.

A results folder holds:
    scores.parquet   long-format ScoreTable (image_id, role, attack, params hash, target fingerprint, seed, score)
    images.parquet   one row per accepted artwork (sha256 image_id, path, role, caption, artist, ...)
    features.parquet model-free image features per artwork (image_id, role, px_*/meta_* columns), computed
                     from the evidence at scoring time for the blind-baseline gate; optional (older folders)
    plan.json        the analysis plan and its SHA-256, written before scoring starts
    rejected.json    entries that could not be used, each with its reason
    run.json         run metadata (command, versions, seed, target, attacks, timings)
    config.yaml      the fully resolved config
    analysis.json    the statistical analysis (written by the analysis step)
    report.html, report.pdf   the report
    reconstruction/  reconstruction figures and seeds (when reconstruction tests ran)
    checksums.json   SHA-256 of every file above (and row digests of the tables), written after them
    COMPLETE         completion marker (the SHA-256 of checksums.json), written last of all
    regenerated.json what a later scripts/report.py run changed, when the report was regenerated in place
Everything after scoring reads only these files, so reports can be regenerated without the model. Readers
take plain values from them and never instantiate anything named in them (a results folder may come from an
opposing party): see :func:`plan_from_values` and :mod:`audit.verify`.
"""
from __future__ import annotations

import json
import logging
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd

from audit.types import ScoreTable

SCORES = "scores.parquet"
IMAGES = "images.parquet"
REJECTED = "rejected.json"
RUN = "run.json"
CONFIG = "config.yaml"
ANALYSIS = "analysis.json"
FEATURES = "features.parquet"
PLAN = "plan.json"
CHECKSUMS = "checksums.json"
COMPLETE = "COMPLETE"
REGENERATED = "regenerated.json"


@dataclass
class RunData:
    scores: ScoreTable
    images: pd.DataFrame
    rejected: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    config_yaml: str = ""
    features: pd.DataFrame | None = None  # model-free features (blind baseline); None for older folders
    complete: bool = True  # False: the folder has no completion marker (an interrupted or failed run)


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("diffusion-membership-audit", "torch", "diffusers", "transformers", "peft", "safetensors",
                 "numpy", "scipy", "scikit-learn", "pandas", "hydra-core", "statsmodels", "matplotlib",
                 "jinja2", "weasyprint"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def write_run(out_dir: str | Path, run: RunData) -> Path:
    """Write the data of a run (scores, images, features, rejections, metadata, config). Done once, right
    after scoring; nothing rewrites these files afterwards (regeneration writes analysis and report only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run.scores.df.to_parquet(out / SCORES, index=False)
    run.images.to_parquet(out / IMAGES, index=False)
    if run.features is not None:
        run.features.to_parquet(out / FEATURES, index=False)
    write_json(out / REJECTED, run.rejected)
    write_json(out / RUN, run.metadata)
    if run.config_yaml:
        (out / CONFIG).write_text(run.config_yaml)
    return out


def read_run(out_dir: str | Path) -> RunData:
    d = Path(out_dir)
    if not (d / SCORES).is_file():
        raise FileNotFoundError(f"{d} is not an audit results folder (no {SCORES})")
    complete = (d / COMPLETE).is_file()
    if not complete:
        logging.getLogger(__name__).warning(
            "%s is an unfinished run: no %s marker (interrupted, failed, or written before runs were sealed); "
            "check it with audit-verify", d, COMPLETE)
    return RunData(
        complete=complete,
        scores=ScoreTable(pd.read_parquet(d / SCORES)),
        images=pd.read_parquet(d / IMAGES) if (d / IMAGES).is_file() else pd.DataFrame(),
        rejected=read_json(d / REJECTED, []),
        metadata=read_json(d / RUN, {}),
        config_yaml=(d / CONFIG).read_text() if (d / CONFIG).is_file() else "",
        features=pd.read_parquet(d / FEATURES) if (d / FEATURES).is_file() else None,
    )


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------------------------------
# Rebuilding the analysis plan from plain values (never from code named in a folder)
# --------------------------------------------------------------------------------------------------

def plan_from_values(values: Any, where: str = "plan"):
    """An :class:`~audit.stats.AnalysisPlan` from plain values (e.g. ``plan.json``'s ``plan``, or overrides).

    Only the plan's own fields are accepted, each converted to its declared type; any other key (a Hydra
    ``_target_``, ``_args_``, ``_partial_``, a typo) is refused with one line, and nothing is instantiated or
    imported: a results folder may have been written by someone else.
    """
    import dataclasses
    import typing

    from audit.stats import AnalysisPlan

    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of analysis-plan values, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(AnalysisPlan)}
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise ValueError(f"{where}: not analysis-plan fields (refused, nothing is instantiated from a results "
                         f"folder): {unknown}; allowed: {sorted(names)}")
    hints = typing.get_type_hints(AnalysisPlan)
    kwargs = {k: _plain(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return AnalysisPlan(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def _plain(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the plain type ``hint`` declares (int, float, str, bool, tuple of those, Literal, Optional)."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _plain(value, inner[0], where)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return tuple(_plain(v, args[0], where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    raise ValueError(f"{where}: unsupported value {value!r}")
