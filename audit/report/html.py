"""Self-contained HTML report (Jinja2, autoescaped; figures inlined as base64 PNG; no external resources).

Formatting lives here as Jinja filters so the template stays declarative and every number in the report
is rounded the same way.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from audit.report.figures import histogram_png, roc_png, to_base64
from audit.stats.analysis import TEST_LABELS, AuditResult, format_p
from audit.types import ScoreTable

__all__ = ["render_html"]

_TEMPLATES = Path(__file__).parent / "templates"


def _fmt_num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _fmt_pct(f: float) -> str:
    return f"{f * 100:g}%"


def _env() -> Environment:
    # autoescape=True, not select_autoescape(): the template is "*.html.j2", which select_autoescape's
    # extension check would not recognise as HTML, and captions/paths are untrusted text.
    env = Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["pval"] = format_p
    env.filters["pct"] = _fmt_pct
    return env


def _image_lookup(images: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    if images is None or images.empty:
        return {}
    return {str(r["image_id"]): r for r in images.to_dict(orient="records")}


def render_html(
    result: AuditResult,
    scores: ScoreTable,
    images: pd.DataFrame | None,
    rejected: list[dict[str, Any]],
    metadata: dict[str, Any],
    out_path: str | Path,
) -> Path:
    """Write the audit report as one self-contained HTML file at ``out_path`` and return its path.

    ``images``: the accepted-image table (image_id, path, role, caption, artist, created, width, height,
    format); ``rejected``: dicts with at least path, role, reason; ``metadata``: provenance (command,
    target fingerprint, package versions, seed, timestamp, ``config_yaml`` …), rendered as given.
    """
    lookup = _image_lookup(images)
    roc = roc_png(scores)
    figures = {
        "roc": to_base64(roc) if roc is not None else None,
        "hist": [(a.attack, a.primary, to_base64(histogram_png(scores, a.attack))) for a in result.attacks],
    }
    meta = dict(metadata)
    config_yaml = meta.pop("config_yaml", None)
    inventory = [] if images is None else images.sort_values(["role", "path"]).to_dict(orient="records")
    html = _env().get_template("report.html.j2").render(
        r=result,
        plan=result.plan,
        test_label=TEST_LABELS[result.plan.test],
        primary=result.attack(result.primary_attack),
        exploratory=[a for a in result.attacks if not a.primary],
        img=lookup,
        figures=figures,
        rejected=[{"path": d.get("path", ""), "role": d.get("role", ""), "reason": d.get("reason", ""),
                   "sha256": d.get("sha256") or ""} for d in rejected],
        metadata=meta,
        config_yaml=config_yaml,
        inventory=inventory,
        any_benchmark=any(a.auc_member_nonmember is not None for a in result.attacks),
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
