"""The report's "Collected outputs" section: what was collected, from where and when, what matched, and what the
comparison with the controls adds.

:func:`outputs_context` reads only the results folder (``outputs/outputs.json``, ``outputs/matches.json``, the
exhibits, ``analysis.json`` and ``run.json``; plain values, nothing instantiated) and returns preformatted values for
``audit/report/templates/_outputs.html.j2``; ``None`` when the folder holds no outputs audit.
"""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from audit.outputs.target import MATCHES_JSON, OUTPUTS_DIR, OUTPUTS_JSON

MAX_ROWS = 40  # outputs listed in the report (the full list is the sealed outputs.json)

_DESCRIPTIONS = {
    "out_sift": "RANSAC inliers of SIFT keypoint matches (similarity transform) with the best output — finds partial "
                "copies under crop, rescaling and rotation",
    "out_orb": "RANSAC inliers of ORB keypoint matches with the best output",
    "out_phash": "−normalised Hamming distance of 256-bit DCT perceptual hashes (whole frame or detected picture)",
    "out_ssim": "SSIM with the best output after alignment (SIFT transform, else the detected picture region)",
    "out_tiled_l2": "−tiled ℓ2 (worst of 4×4 tiles) with the best output after the same alignment",
    "out_embed": "cosine similarity of a local image encoder with the best output",
    "out_style": "style similarity (colour and edge-orientation histograms), mean of the 3 closest outputs — "
                 "circumstantial",
}


def _b64(path: Path) -> str | None:
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def outputs_context(run_folder: str | Path) -> dict[str, Any] | None:
    root = Path(run_folder)
    folder = root / OUTPUTS_DIR
    if not (folder / OUTPUTS_JSON).is_file():
        return None
    record = json.loads((folder / OUTPUTS_JSON).read_text())
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").is_file() else {}
    analysis = json.loads((root / "analysis.json").read_text()) if (root / "analysis.json").is_file() else {}
    summary = run.get("outputs") or {}
    accepted = list(record.get("accepted") or [])
    rows = [{"n": k + 1, "name": Path(str(a.get("path", ""))).name, "sha": str(a.get("sha256", "")),
             "source": a.get("source") or "(not recorded)", "captured_at": a.get("captured_at") or "(not recorded)",
             "method": a.get("capture_method") or "(not recorded)", "prompt": a.get("prompt") or "—",
             "notes": a.get("notes") or "—", "size": f"{a.get('width')}×{a.get('height')} {a.get('format', '')}"}
            for k, a in enumerate(accepted[:MAX_ROWS])]
    missing = {c: sum(1 for a in accepted if not a.get(c)) for c in ("source", "captured_at", "capture_method")}
    attacks = (run.get("attacks") or {})
    stats = []
    primary = analysis.get("primary_attack")
    for name in attacks:
        if not str(name).startswith("out_") and attacks[name].get("access") != "outputs":
            continue
        kind = attacks[name].get("evidence_kind", "direct")
        stats.append({"name": name, "primary": name == primary, "kind": kind,
                      "description": _DESCRIPTIONS.get(name, attacks[name].get("paper", ""))})
    exhibits = []
    for e in summary.get("exhibits") or []:
        rel = str(e.get("file", ""))
        f = folder / "exhibits" / Path(rel).name
        # only outputs/exhibits/<plain file name> (a crafted run.json could name ../../x or /etc/passwd), no links
        if rel != f"{OUTPUTS_DIR}/exhibits/{f.name}" or f.is_symlink() or not f.is_file():
            continue
        exhibits.append({**e, "b64": _b64(f), "file": e.get("file")})
    sealed = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
              for name in (OUTPUTS_JSON, MATCHES_JSON) if (folder / name).is_file()}
    return {
        "n_accepted": len(accepted), "n_refused": len(record.get("refused") or []),
        "refused": [{"path": r.get("path", ""), "reason": r.get("reason", ""), "sha": r.get("sha256") or ""}
                    for r in record.get("refused") or []],
        "manifest": record.get("manifest", ""), "manifest_sha256": record.get("manifest_sha256") or "(a folder)",
        "fingerprint": record.get("fingerprint", ""), "rows": rows, "more": max(0, len(accepted) - MAX_ROWS),
        "missing": {k: v for k, v in missing.items() if v}, "statistics": stats,
        "circumstantial": [s["name"] for s in stats if s["kind"] == "circumstantial"],
        "primary_is_circumstantial": any(s["primary"] and s["kind"] == "circumstantial" for s in stats),
        "exhibits": exhibits, "sealed": sealed, "copied": any(a.get("stored_as") for a in accepted),
    }
