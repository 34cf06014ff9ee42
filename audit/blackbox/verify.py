"""``audit-verify`` for a black-box run: every score must follow from the logged answers.

Checks, for a results folder with ``blackbox/request_log.jsonl``: every image the log names is present under
``blackbox/images`` with that SHA-256; every black-box score row of ``scores.parquet`` has a derivation; each
derivation's requests are in the log with an answer, its img2img requests sent the artwork it scores, its statistic
and tiles are the attack's recorded parameters (plain values from ``run.json``, nothing instantiated); and the
statistic recomputed from the logged images equals the stored score. A log entry edited after the fact — even
with the folder resealed — shows up here as a score that no longer follows from the log (or as a changed file in
the seal, when it was not resealed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from audit import io
from audit.blackbox.images import decode_image, sha256, statistic
from audit.blackbox.log import DERIVATIONS, IMAGES, LOG, read_jsonl

#: attack class (as recorded in run.json params) -> the statistic it computes
STATISTIC_OF = {"BBVariation": "variation_mse", "BBImg2Img": "mean_tiled_l2", "BBGenerate": "min_tiled_l2"}
_MAX = 8


def check_request_log(folder: str | Path, notes: list[str] | None = None) -> list[str]:
    d = Path(folder)
    bb = d / "blackbox"
    if not (bb / LOG).is_file():
        return []
    problems: list[str] = []
    try:
        entries = read_jsonl(bb / LOG)
        derivations = read_jsonl(bb / DERIVATIONS)
    except ValueError as e:
        return [f"blackbox/{LOG} or {DERIVATIONS} is not valid JSON lines: {e}"]
    images: dict[str, Any] = {}
    bad_files: list[str] = []

    def image(digest: str):
        if digest not in images:
            p = bb / IMAGES / f"{digest}.png"
            if not p.is_file():
                images[digest] = None
                bad_files.append(f"{digest[:12]}… missing")
            else:
                data = p.read_bytes()
                if sha256(data) != digest:
                    images[digest] = None
                    bad_files.append(f"{digest[:12]}… does not have its SHA-256")
                else:
                    images[digest] = decode_image(data)
        return images[digest]

    answered: dict[str, dict[str, Any]] = {}
    rekeyed: list[str] = []
    for rec in entries:
        if rec.get("request_sha256") != _key(rec):
            rekeyed.append(f"entry {rec.get('seq')}")
        for digest in (rec.get("sent_sha256"), (rec.get("response") or {}).get("received_sha256")):
            if digest:
                image(digest)
        got = (rec.get("response") or {}).get("received_sha256")
        if got and rec.get("request_sha256"):
            answered.setdefault(rec["request_sha256"], rec)
    if rekeyed:
        problems.append(f"request log: {len(rekeyed)} entr(ies) whose request hash does not match their operation, "
                        "parameters and image: " + ", ".join(rekeyed[:_MAX]))
    if bad_files:
        problems.append(f"request log images: {len(bad_files)} problem(s): " + "; ".join(bad_files[:_MAX]))

    meta = json.loads((d / io.RUN).read_text()) if (d / io.RUN).is_file() else {}
    declared = {name: (a.get("params") or {}) for name, a in (meta.get("attacks") or {}).items()}
    bb_attacks = {n for n, p in declared.items() if p.get("attack") in STATISTIC_OF}
    scores = pd.read_parquet(d / io.SCORES) if (d / io.SCORES).is_file() else pd.DataFrame(columns=["image_id", "attack", "score"])
    stored = {(r.image_id, r.attack): float(r.score) for r in scores.itertuples(index=False) if r.attack in bb_attacks}
    derived: set[tuple[str, str]] = set()
    wrong: list[str] = []
    for der in derivations:
        k = (str(der.get("image_id")), str(der.get("attack")))
        derived.add(k)
        label = f"{k[1]} of {k[0][:12]}…"
        params = declared.get(k[1])
        if params is None or params.get("attack") not in STATISTIC_OF:
            wrong.append(f"{label}: not a black-box attack of this run")
            continue
        if der.get("statistic") != STATISTIC_OF[params["attack"]] or int(der.get("tiles", -1)) != int(params.get("tiles", 4)):
            wrong.append(f"{label}: statistic/tiles differ from the attack's recorded parameters")
            continue
        art = image(str(der.get("artwork_sha256")))
        if art is None:
            wrong.append(f"{label}: the artwork as sent is not in the log")
            continue
        try:
            s = _recompute(der, answered, image, art, "requests", label)
            if der.get("reference_requests"):
                s -= _recompute(der, answered, image, art, "reference_requests", label)
        except LookupError as e:
            wrong.append(str(e))
            continue
        if k not in stored:
            wrong.append(f"{label}: derivation without a row in {io.SCORES}")
        elif abs(stored[k] - s) > 1e-6 * max(1.0, abs(s)):
            wrong.append(f"{label}: {io.SCORES} has {stored[k]:.9g}, the logged answers give {s:.9g}")
    missing = sorted(set(stored) - derived)
    if missing:
        wrong.append(f"{len(missing)} black-box score row(s) without a derivation in the request log, e.g. "
                     f"{missing[0][1]} of {missing[0][0][:12]}…")
    if wrong:
        problems.append(f"black-box scores do not follow from the request log ({len(wrong)}): " + "; ".join(wrong[:_MAX]))
    elif notes is not None:
        notes.append(f"{len(stored)} black-box scores recomputed from {len(entries)} logged requests and their images")
    return problems


def _recompute(der: dict[str, Any], answered: dict[str, dict[str, Any]], image, art, field: str, label: str) -> float:
    imgs = []
    for key in der.get(field) or []:
        rec = answered.get(key)
        if rec is None:
            raise LookupError(f"{label}: request {str(key)[:12]}… is not answered in the log")
        if rec.get("operation") == "img2img" and rec.get("sent_sha256") != der.get("artwork_sha256"):
            raise LookupError(f"{label}: request {str(key)[:12]}… sent another image than the artwork it scores")
        img = image(rec["response"]["received_sha256"])
        if img is None:
            raise LookupError(f"{label}: the answer to {str(key)[:12]}… is missing or damaged")
        imgs.append(img)
    if not imgs:
        raise LookupError(f"{label}: no requests recorded")
    return statistic(str(der["statistic"]), art, imgs, int(der["tiles"]))


def _key(rec: dict[str, Any]) -> str:
    """The request hash recomputed from a log entry (as :meth:`audit.blackbox.service.Request.key`)."""
    blob = json.dumps({"service": rec.get("service"), "operation": rec.get("operation"), "params": rec.get("params"),
                       "image_sha256": rec.get("sent_sha256")}, sort_keys=True, separators=(",", ":"))
    import hashlib

    return hashlib.sha256(blob.encode()).hexdigest()
