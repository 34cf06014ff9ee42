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
Everything after scoring reads only these files, so reports can be regenerated without the model.
"""
from __future__ import annotations

import json
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


@dataclass
class RunData:
    scores: ScoreTable
    images: pd.DataFrame
    rejected: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    config_yaml: str = ""
    features: pd.DataFrame | None = None  # model-free features (blind baseline); None for older folders


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
    return RunData(
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
