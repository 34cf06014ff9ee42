"""The reconstruction section of the report: a Jinja2 partial and the context it needs.

The partial ``audit/report/templates/_reconstruction.html.j2`` reads one variable, ``reconstruction``,
built by :func:`reconstruction_context` from the files a run wrote (``reconstruction/reconstruction.json``
and the PNGs) — no model needed, as for the rest of the report. Every value in it is already a
formatted string, so the partial uses no custom filters and renders in any autoescaping environment:

    ctx["reconstruction"] = reconstruction_context(run_folder)      # None when the run had none
    {% if reconstruction %}{% include "_reconstruction.html.j2" %}{% endif %}

:func:`write_fragment` renders the partial on its own (``reconstruction.html`` in the run folder).
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

__all__ = ["reconstruction_context", "write_fragment", "TEMPLATE_NAME", "TEMPLATE_DIR"]

TEMPLATE_NAME = "_reconstruction.html.j2"
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "report" / "templates"
_ROLE_NAMES = {"suspect": "suspects", "control": "controls", "member": "known members", "nonmember": "known non-members"}


def _folder(path: str | Path) -> Path | None:
    p = Path(path)
    for cand in (p, p / "reconstruction"):
        if (cand / "reconstruction.json").is_file():
            return cand
    return None


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.3g}"


def _src(folder: Path, rel: str, embed: bool, prefix: str) -> str:
    # a results folder may be crafted: a figure is a plain relative .png path inside the folder, never a path
    # out of it (``../``, absolute) nor a symbolic link, so no file from elsewhere is embedded in a report
    parts = Path(str(rel)).parts
    if (not isinstance(rel, str) or not rel.endswith(".png") or Path(rel).is_absolute() or ".." in parts
            or not parts):
        raise ValueError(f"reconstruction.json: figure {rel!r} is not a .png file inside the run's reconstruction "
                         "folder (refused)")
    p = folder / rel
    cur = folder
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            raise ValueError(f"reconstruction.json: figure {rel!r} goes through a symbolic link (refused)")
    if embed:
        return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
    return f"{prefix}{rel}"


def _value_text(name: str, score: float) -> str:
    if name in ("recon_gen_tiled_l2", "recon_img2img_tiled_l2"):
        return f"distance {_num(-score)}"
    if name.startswith("recon_inpaint_"):
        return f"RMS error {_num(-score)}"
    if name == "recon_gen_clique":
        return f"{int(score)} generations"
    return f"similarity {_num(score)}"


def reconstruction_context(folder: str | Path, *, embed: bool = True, prefix: str = "reconstruction/") -> dict[str, Any] | None:
    """The ``reconstruction`` variable of the partial, from a run folder (or its ``reconstruction/``).

    ``embed=True`` inlines the figures as base64 data URIs (a self-contained report); ``embed=False``
    links them as ``prefix + relative path`` (for an HTML file next to the run's ``reconstruction/``
    folder use the default prefix; for a file inside it, ``prefix=""``). Returns None when the run did
    not run reconstruction tests.
    """
    d = _folder(folder)
    if d is None:
        return None
    rec = json.loads((d / "reconstruction.json").read_text())
    cfg = rec.get("config", {})
    stats = []
    for name, desc in rec.get("statistics", {}).items():
        s = rec.get("summary", {}).get(name, {})
        cal = s.get("calibration") or {}
        frac = cal.get("fraction_reconstructed", {})
        count = cal.get("count_reconstructed", {})
        n = s.get("n", {})
        recon_text = "; ".join(
            f"{_ROLE_NAMES[r]} {count[r]}/{n[r]} ({frac[r] * 100:.0f}%)" for r in ("suspect", "member", "control", "nonmember")
            if r in frac and n.get(r)
        )
        stats.append({
            "name": name,
            "description": desc,
            "auc_suspect_control": _num(s.get("auc_suspect_control")),
            "auc_member_nonmember": _num(s.get("auc_member_nonmember")),
            "reconstructed": recon_text or "–",
        })
    items = []
    for it in rec.get("figures", []):
        scores = it.get("scores", {})
        pv = it.get("p_conformal", {})
        items.append({
            "label": f"{it['role']} {it['image_id'][:12]}",
            "image_id": it["image_id"],
            "path": it.get("path", ""),
            "caption": it.get("caption", ""),
            "src": _src(d, it["figure"], embed, prefix),
            "alt": f"reconstruction evidence for {it['image_id'][:12]}",
            "stats": [{"name": k, "value": _value_text(k, v), "p": _p(pv.get(k))} for k, v in scores.items()],
            "seeds": ", ".join(f"#{g['generation']} (seed {g['seed']})" for g in it.get("generations", [])) or "–",
        })
    gens = rec.get("generations", [])
    n_gen = sum(len(g["record"]["seeds"]) for g in gens)
    gcfg = cfg.get("generate", {})
    parts = []
    if gcfg.get("enabled", False) and gens:
        r0 = gens[0]["record"]
        parts.append(
            f"{n_gen} images generated in {len(gens)} group(s) ({'one per distinct prompt' if gens[0].get('prompt') is not None else 'one shared unconditional pool'}), "
            f"{r0['steps']} deterministic DDIM steps (η = {r0['eta']:g}), guidance scale {r0['guidance_scale']:g}; "
            f"tiled ℓ2 on a {gcfg.get('tiles')}×{gcfg.get('tiles')} grid, clique threshold {gcfg.get('clique_threshold')}, "
            f"flag at ≥ {gcfg.get('min_clique')} near-identical generations."
        )
    icfg = cfg.get("inpaint", {})
    if icfg.get("enabled", False) and icfg.get("masks"):
        parts.append(f"Inpainting (RePaint): masks {', '.join(icfg['masks'])}; {icfg['steps']} steps, resampling U = {icfg['resample']}; "
                     "error measured inside the hidden region only.")
    mcfg = cfg.get("img2img", {})
    if mcfg.get("enabled", False):
        parts.append(f"img2img: strength {mcfg['strength']:g}, {mcfg['steps']} DDIM steps, {mcfg['n']} variation(s).")
    ext = rec.get("extraction") or {}
    if ext:
        es = ext.get("settings", {})
        parts.append(f"Model-guided extraction (FineXtract's idea): {es.get('n')} samples per distinct caption guided "
                     f"along fine-tune − base with weight {es.get('model_guidance')} ({es.get('steps')} steps; base "
                     f"{ext.get('base', {}).get('source')}), clustered at tiled ℓ2 ≤ {es.get('cluster_threshold')}; the "
                     f"medoids of the {es.get('top_clusters')} largest clusters are the extracted images.")
    fpr = cfg.get("calibration_fpr", 0.05)
    return {
        "extract_grid_src": (_src(d, ext["grid"], embed, prefix) if ext.get("grid") and (d / str(ext["grid"])).is_file()
                             else ""),
        "statistics": stats,
        "works": items,
        "grid_src": _src(d, "evidence_grid.png", embed, prefix) if (d / "evidence_grid.png").is_file() else "",
        "method": " ".join(parts),
        "calibration": (f"“Reconstructed” means a statistic beyond the {100 * (1 - fpr):g}% quantile of the controls' values "
                        f"(a nominal {100 * fpr:g}% false-positive rate on controls)."),
        "seeds_file": f"{prefix}reconstruction.json",
        "fingerprint": rec.get("target_fingerprint", ""),
        "seed": str(rec.get("seed", "")),
    }


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def write_fragment(folder: str | Path, out_file: str | Path, *, embed: bool = False) -> Path:
    """Render the partial on its own into ``out_file`` (images linked relative to ``folder`` unless embedded)."""
    d = _folder(folder)
    if d is None:
        raise FileNotFoundError(f"no reconstruction.json in {folder}")
    out = Path(out_file)
    prefix = "" if out.parent.resolve() == d.resolve() else "reconstruction/"
    ctx = reconstruction_context(d, embed=embed, prefix=prefix)
    out.write_text(_env().get_template(TEMPLATE_NAME).render(reconstruction=ctx))
    return out
