"""Exhibits: a work and its best-matching output side by side, the matched keypoints and region drawn, with the
output's capture provenance and both SHA-256s — the comparison an expert shows, made reproducible.

One PNG per pair under ``outputs/exhibits/``: the strongest suspects by the exhibit statistic (by default the first
local-feature statistic of the run, else the first statistic), and the strongest control, for contrast (a control
that matches as well as the suspects is what the set-level test weighs).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_pair", "write_exhibits"]

_H = 360  # panel height in px
_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230)]


def _fit(arr: np.ndarray, h: int) -> tuple[Image.Image, float]:
    s = h / arr.shape[0]
    img = Image.fromarray(arr).resize((max(1, round(arr.shape[1] * s)), h), Image.Resampling.LANCZOS)
    return img, s


def draw_pair(work: np.ndarray, output: np.ndarray, match: dict[str, Any] | None, lines: list[str],
              max_lines: int = 60) -> Image.Image:
    """The exhibit image: work (left), output (right), inlier matches as coloured lines, the work's outline mapped
    into the output by the fitted transform, and ``lines`` of text below."""
    wimg, ws = _fit(work, _H)
    oimg, os_ = _fit(output, _H)
    gap = 24
    width = wimg.width + gap + oimg.width
    text = [t for line in lines for t in (textwrap.wrap(line, width=max(40, width // 7)) or [""])]
    canvas = Image.new("RGB", (width, _H + 14 * len(text) + 16), (255, 255, 255))
    canvas.paste(wimg, (0, 0))
    ox = wimg.width + gap
    canvas.paste(oimg, (ox, 0))
    d = ImageDraw.Draw(canvas)
    if match and match.get("transform") is not None:
        T = np.asarray(match["transform"], dtype=np.float64)
        h, w = work.shape[:2]
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        mapped = corners @ T[:, :2].T + T[:, 2]
        poly = [(ox + x * os_, y * os_) for x, y in mapped]
        d.line(poly + [poly[0]], fill=(255, 0, 0), width=3)
        d.rectangle((0, 0, wimg.width - 1, _H - 1), outline=(255, 0, 0), width=3)
    if match:
        pw = np.asarray(match.get("work_xy") or [], dtype=np.float64).reshape(-1, 2)
        po = np.asarray(match.get("output_xy") or [], dtype=np.float64).reshape(-1, 2)
        step = max(1, len(pw) // max_lines)
        for k in range(0, len(pw), step):
            c = _COLOURS[k % len(_COLOURS)]
            a = (pw[k, 0] * ws, pw[k, 1] * ws)
            b = (ox + po[k, 0] * os_, po[k, 1] * os_)
            d.line((a, b), fill=c, width=1)
            for x, y in (a, b):
                d.ellipse((x - 3, y - 3, x + 3, y + 3), outline=c, width=2)
    for k, t in enumerate(text):
        d.text((6, _H + 8 + 14 * k), t, fill=(0, 0, 0))
    return canvas


def _exhibit_statistic(target: Any) -> str | None:
    if target.exhibit_statistic:
        return target.exhibit_statistic if target.exhibit_statistic in target.matches else None
    for name in target.matches:
        first = next(iter(target.matches[name].values()), {})
        if "inliers" in first:
            return name
    return next(iter(target.matches), None)


def write_exhibits(target: Any, folder: Path, scores: Any = None) -> list[dict[str, Any]]:
    """Draw the strongest suspect pairs (and the strongest control) into ``folder/exhibits``; returns their records."""
    stat = _exhibit_statistic(target)
    if stat is None or target.n_exhibits == 0:
        return []
    rows = target.matches[stat]
    by_role: dict[str, list[tuple[float, str]]] = {}
    for iid, rec in rows.items():
        role = target._work_meta.get(iid, {}).get("role", "")
        by_role.setdefault(role, []).append((float(rec["score"]), iid))
    chosen = [(iid, "suspect") for _, iid in sorted(by_role.get("suspect", []), reverse=True)[: target.n_exhibits]]
    chosen += [(iid, "control") for _, iid in sorted(by_role.get("control", []), reverse=True)[:1]]
    out_dir = folder / "exhibits"
    out_dir.mkdir(parents=True, exist_ok=True)
    by_sha = {r.sha256: (k, r) for k, r in enumerate(target.collection.records)}
    written = []
    for n, (iid, role) in enumerate(chosen, 1):
        rec = rows[iid]
        if rec.get("output_sha256") not in by_sha:
            continue
        k, orec = by_sha[rec["output_sha256"]]
        meta = target._work_meta.get(iid, {})
        others = {s: target.matches[s][iid]["score"] for s in target.matches if iid in target.matches[s]}
        lines = [f"Exhibit {n} ({role}): work {Path(meta.get('path', '')).name} (artist {meta.get('artist') or '-'})"
                 f" vs output {Path(orec.path).name}",
                 f"work SHA-256 {iid}", f"output SHA-256 {orec.sha256}",
                 f"captured {orec.captured_at or '(not recorded)'} by {orec.capture_method or '(not recorded)'}"
                 f" from {orec.source or '(not recorded)'}",
                 f"prompt: {orec.prompt or '(not recorded)'}; notes: {orec.notes or '-'}",
                 f"{stat}: {rec['score']:g}" + (f" (RANSAC inliers of {rec.get('matches')} ratio-test matches)"
                                              if "inliers" in rec else ""),
                 "best-match values: " + ", ".join(f"{s} {v:.3g}" for s, v in others.items()),
                 "Resemblance alone does not show training: read this beside the controls' values and the test."]
        img = draw_pair(target.work(iid), target.output(k), rec if "inliers" in rec else None, lines)
        name = f"{n:02d}_{role}_{iid[:12]}_{orec.sha256[:12]}.png"
        img.save(out_dir / name, format="PNG", optimize=True)
        written.append({"file": f"outputs/exhibits/{name}", "role": role, "work_sha256": iid,
                        "output_sha256": orec.sha256, "statistic": stat, "score": float(rec["score"]),
                        "inliers": rec.get("inliers"), "work_path": meta.get("path", ""), "output_path": orec.path,
                        "source": orec.source, "captured_at": orec.captured_at, "capture_method": orec.capture_method,
                        "prompt": orec.prompt, "notes": orec.notes})
    return written
