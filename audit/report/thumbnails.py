"""Thumbnails of the suspect works beside their nearest controls (issue 13).

A reader — or an opposing expert — should see that the controls are works of the same kind as the suspects.
For each suspect shown (every Holm-flagged work, then the others by per-work p-value up to ``report.thumbnails``),
the panel shows the work and the ``k`` controls nearest to it in the model-free feature space of the blind
baseline (``features.parquet``: colour, contrast, texture and file statistics, standardised on the controls),
restricted to the work's own stratum when the analysis is stratified.

Files are read again only to draw the thumbnails, and only after their SHA-256 is checked against the audited
``image_id``: a file that is missing or has changed since the audit is shown as such, never drawn.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["nearest_controls", "thumbnail", "thumbnail_panel"]

THUMB_PX = 96


def nearest_controls(features: pd.DataFrame, suspects: list[str], controls: list[str], k: int = 3,
                     strata: dict[str, str] | None = None) -> dict[str, list[tuple[str, float]]]:
    """For each suspect id, the ``k`` nearest control ids with their distance (Euclidean over the pixel
    features ``px_*``, standardised by the controls' mean and SD; same stratum only when ``strata`` is given)."""
    cols = [c for c in features.columns if c.startswith("px_")]
    f = features.drop_duplicates("image_id").set_index("image_id")
    suspects = [s for s in suspects if s in f.index]
    controls = [c for c in controls if c in f.index]
    if not cols or not suspects or not controls:
        return {}
    C = f.loc[controls, cols].to_numpy(float)
    mu, sd = C.mean(0), C.std(0)
    sd[sd == 0] = 1.0
    Cz = (C - mu) / sd
    out: dict[str, list[tuple[str, float]]] = {}
    for s in suspects:
        x = (f.loc[s, cols].to_numpy(float) - mu) / sd
        d = np.sqrt(((Cz - x) ** 2).sum(1))
        if strata is not None:
            own = np.array([strata.get(c) == strata.get(s) for c in controls])
            d = np.where(own, d, np.inf)
        order = [i for i in np.argsort(d, kind="stable")[:k] if np.isfinite(d[i])]
        out[s] = [(controls[i], float(d[i])) for i in order]
    return out


def thumbnail(path: str | None, image_id: str, px: int = THUMB_PX) -> tuple[str | None, str]:
    """(base64 PNG or None, note). The file's SHA-256 must equal ``image_id`` before it is decoded."""
    from PIL import Image

    from audit.data import ImageRejected, validate_and_load

    if not path or not Path(path).is_file():
        return None, "file not available here"
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if h != image_id:
        return None, "file differs from the audited one (SHA-256 mismatch)"
    try:
        arr, _ = validate_and_load(path, px)
    except ImageRejected as e:
        return None, f"not drawn: {e}"
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii"), ""


def thumbnail_panel(result: Any, images: pd.DataFrame | None, features: pd.DataFrame | None, limit: int = 24,
                    k: int = 3) -> dict[str, Any] | None:
    """Rows for the report: each shown suspect with its per-work p-value, flag and nearest controls."""
    if limit <= 0 or images is None or images.empty or features is None or features.empty:
        return None
    pa = next((a for a in result.attacks if a.attack == result.primary_attack and a.artworks), None)
    if pa is None:
        return None
    control_role = result.plan.control_role
    controls = images.loc[images["role"] == control_role, "image_id"].tolist()
    works = sorted(pa.artworks, key=lambda w: (not w.flagged, w.p_conformal if w.p_conformal is not None else 2.0))
    n_flag = sum(w.flagged for w in works)
    shown = works[:max(limit, n_flag)]  # every flagged work, then the lowest p-values up to the limit
    strata = None
    if result.plan.strata:
        col = result.plan.strata[0]
        if col in images.columns:
            strata = dict(zip(images["image_id"], images[col].astype(str)))
    near = nearest_controls(features, [w.image_id for w in shown], controls, k, strata)
    paths = dict(zip(images["image_id"], images.get("resolved_path", images["path"])))
    artist = dict(zip(images["image_id"], images["artist"].fillna("").astype(str))) if "artist" in images else {}
    rows = []
    for w in shown:
        b64, note = thumbnail(paths.get(w.image_id), w.image_id)
        ctrl = []
        for cid, dist in near.get(w.image_id, []):
            cb, cn = thumbnail(paths.get(cid), cid)
            ctrl.append({"image_id": cid, "b64": cb, "note": cn, "distance": dist, "artist": artist.get(cid, "")})
        rows.append({"image_id": w.image_id, "b64": b64, "note": note, "p": w.p_conformal, "p_holm": w.p_holm,
                     "flagged": w.flagged, "artist": artist.get(w.image_id, ""), "controls": ctrl})
    return {"rows": rows, "n_shown": len(rows), "n_suspect": len(works), "n_flagged": sum(w.flagged for w in works),
            "k": k, "stratified": strata is not None, "attack": pa.attack}
