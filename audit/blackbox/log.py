"""The request log (evidence) and the response cache (replay).

In a results folder, ``blackbox/`` holds:

- ``service.json``: the service as configured (URL, operation templates, limits; never a credential);
- ``budget.json``: the requests the run planned, how many were already answered, the time and cost estimate;
- ``request_log.jsonl``: one JSON line per request the run needed, in order: its key (SHA-256 of the service
  identity and the canonical request), operation, method, URL, the body as sent with every image replaced by its
  SHA-256, every attempt (UTC time, HTTP status, duration, the wait before it), and the response (status,
  content type, size, the SHA-256 of the image received); ``source`` says whether it was sent now
  (``service``) or answered from the response cache / a replayed log (``cache`` / ``replay``, with the time and
  run of the original answer);
- ``images/<sha256>.png``: every image sent and every image received, named by its SHA-256;
- ``derivations.jsonl``: for each (work, black-box statistic): the statistic, the requests whose answers it
  used, the SHA-256 of the artwork as sent, and the score, so ``audit-verify`` recomputes every score from the
  logged images.

Everything there is covered by the folder's seal (``checksums.json``). The response cache
(``target.cache_dir``) keeps one JSON record and the image bytes per request key; a rerun (or a run with
``target.replay=<results folder>``) answers every request it finds there without contacting the service.
"""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from audit.blackbox.images import sha256

LOG = "request_log.jsonl"
DERIVATIONS = "derivations.jsonl"
SERVICE = "service.json"
BUDGET = "budget.json"
IMAGES = "images"


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _write_once(path: Path, data: bytes) -> None:
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RequestLog:
    """Appends request records and stores images under ``folder`` (thread-safe; each line flushed)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (self.folder / IMAGES).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.seq = 0
        self.counts = {"service": 0, "cache": 0, "replay": 0, "failed": 0}

    def image(self, data: bytes) -> str:
        digest = sha256(data)
        _write_once(self.folder / IMAGES / f"{digest}.png", data)
        return digest

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.seq += 1
            record = {"seq": self.seq, **record}
            src = record.get("source", "service")
            kind = "failed" if record.get("error") else src
            self.counts[kind] = self.counts.get(kind, 0) + 1
            with open(self.folder / LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
        return record

    def derivation(self, record: dict[str, Any]) -> None:
        with self._lock, open(self.folder / DERIVATIONS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def write_json(self, name: str, obj: Any) -> None:
        (self.folder / name).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class ResponseCache:
    """Answers by request key: ``<root>/<key[:2]>/<key>.json`` (the original log record) + ``<root>/images``."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root else None
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[dict[str, Any], bytes] | None:
        if self.root is None:
            return None
        meta = self.root / key[:2] / f"{key}.json"
        if not meta.is_file():
            return None
        rec = json.loads(meta.read_text())
        img = self.root / IMAGES / f"{rec['received_sha256']}.png"
        if not img.is_file():
            return None
        data = img.read_bytes()
        if sha256(data) != rec["received_sha256"]:  # a damaged cache entry is ignored, never trusted
            return None
        return rec, data

    def put(self, key: str, record: dict[str, Any], image: bytes) -> None:
        if self.root is None:
            return
        _write_once(self.root / IMAGES / f"{sha256(image)}.png", image)
        _write_once(self.root / key[:2] / f"{key}.json", json.dumps(record, sort_keys=True).encode())


class ReplayLog:
    """A previous results folder's request log as a read-only source of answers (``target.replay``)."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        bb = folder / "blackbox" if (folder / "blackbox" / LOG).is_file() else folder
        if not (bb / LOG).is_file():
            from audit.blackbox.errors import ConfigError

            raise ConfigError(f"target.replay: no {LOG} under {folder} (give a results folder of a black-box run)")
        self.folder = bb
        self.by_key: dict[str, dict[str, Any]] = {}
        for rec in read_jsonl(bb / LOG):
            if rec.get("response") and rec["response"].get("received_sha256") and rec.get("request_sha256"):
                self.by_key.setdefault(rec["request_sha256"], rec)

    def get(self, key: str) -> tuple[dict[str, Any], bytes] | None:
        rec = self.by_key.get(key)
        if rec is None:
            return None
        digest = rec["response"]["received_sha256"]
        p = self.folder / IMAGES / f"{digest}.png"
        if not p.is_file():
            return None
        data = p.read_bytes()
        if sha256(data) != digest:
            return None
        return {"first_answered_utc": rec.get("first_answered_utc") or rec.get("finished_utc"),
                "received_sha256": digest, "status": rec["response"].get("status"),
                "content_type": rec["response"].get("content_type"), "body_bytes": rec["response"].get("body_bytes"),
                "replayed_from": str(self.folder)}, data
