"""The report's "Queries to the service" section: what was asked of a hosted generator and what it answered.

:func:`blackbox_context` reads only the results folder (``blackbox/`` and ``run.json``; plain values, nothing
instantiated) and returns preformatted strings for ``audit/report/templates/_blackbox.html.j2``; ``None`` when the
folder holds no black-box run.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from audit.blackbox.log import BUDGET, DERIVATIONS, LOG, SERVICE, read_jsonl

MAX_ROWS = 12  # log rows shown (the full log is the sealed file)


def _t(s: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(s) if s else None
    except ValueError:
        return None


def blackbox_context(run_folder: str | Path) -> dict[str, Any] | None:
    bb = Path(run_folder) / "blackbox"
    if not (bb / LOG).is_file():
        return None
    entries = read_jsonl(bb / LOG)
    service = json.loads((bb / SERVICE).read_text()) if (bb / SERVICE).is_file() else {}
    budget = json.loads((bb / BUDGET).read_text()) if (bb / BUDGET).is_file() else {}
    derivations = read_jsonl(bb / DERIVATIONS)
    settings = service.get("settings") or {}
    by_source: dict[str, int] = {}
    by_op: dict[str, int] = {}
    statuses: dict[str, int] = {}
    retried = attempts = 0
    latencies: list[float] = []
    errors = []
    for e in entries:
        src = "failed" if e.get("error") else str(e.get("source"))
        by_source[src] = by_source.get(src, 0) + 1
        by_op[str(e.get("operation"))] = by_op.get(str(e.get("operation")), 0) + 1
        for a in e.get("attempts") or []:
            attempts += 1
            key = str(a.get("status") if a.get("status") is not None else a.get("error"))
            statuses[key] = statuses.get(key, 0) + 1
            if a.get("status") == 200:
                latencies.append(float(a.get("duration_s") or 0.0))
        retried += len(e.get("attempts") or []) > 1
        if e.get("error"):
            errors.append(e["error"].get("message", ""))
    starts = [t for t in (_t(e.get("started_utc")) for e in entries) if t]
    ends = [t for t in (_t(e.get("finished_utc")) for e in entries) if t]
    sent_imgs = {e.get("sent_sha256") for e in entries if e.get("sent_sha256")}
    got_imgs = {(e.get("response") or {}).get("received_sha256") for e in entries if (e.get("response") or {}).get("received_sha256")}
    log_sha = hashlib.sha256((bb / LOG).read_bytes()).hexdigest()
    rows = [{"seq": str(e.get("seq")), "time": (e.get("started_utc") or e.get("first_answered_utc") or "")[:23],
             "operation": str(e.get("operation")), "source": str(e.get("source")),
             "status": str((e.get("response") or {}).get("status") or (e.get("error") or {}).get("kind", "")),
             "attempts": str(len(e.get("attempts") or [])) if e.get("attempts") else "—",
             "params": ", ".join(f"{k}={v}" for k, v in sorted((e.get("params") or {}).items()) if k != "prompt"),
             "sent": (e.get("sent_sha256") or "—")[:16], "received": ((e.get("response") or {}).get("received_sha256") or "—")[:16],
             "key": str(e.get("request_sha256", ""))[:16]} for e in entries[:MAX_ROWS]]
    cred = settings.get("credential_env")
    return {
        "service": str(service.get("name") or service.get("base_url") or "?"),
        "base_url": str(service.get("base_url", "")),
        "fingerprint": str(service.get("fingerprint", ""))[:16],
        "operations": ", ".join(sorted((service.get("operations") or {}).keys())),
        "limits": (f"rate limit {settings.get('rate_limit_per_s') or 'none'} per s, {settings.get('max_concurrency')} "
                   f"concurrent, timeout {settings.get('timeout_s')} s, up to {settings.get('max_retries')} retries "
                   f"(backoff from {settings.get('backoff_s')} s, Retry-After honoured)"),
        "credential": (f"read from the environment variable {cred} when each request was sent; not recorded anywhere"
                       if cred else "none"),
        "budget": str(budget.get("line", "")),
        "n_entries": str(len(entries)),
        "by_source": ", ".join(f"{n} {k}" for k, n in sorted(by_source.items())),
        "by_operation": ", ".join(f"{n} {k}" for k, n in sorted(by_op.items())),
        "attempts": f"{attempts} HTTP attempts ({', '.join(f'{n}× {k}' for k, n in sorted(statuses.items()))}); "
                    f"{retried} request(s) needed a retry" if attempts else "no request was sent in this run",
        "latency": (f"median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s" if latencies else "—"),
        "span": (f"{min(starts).isoformat(timespec='seconds')} to {max(ends).isoformat(timespec='seconds')}"
                 if starts and ends else "—"),
        "images": f"{len(sent_imgs)} distinct images sent, {len(got_imgs)} distinct images received",
        "derivations": str(len(derivations)),
        "log_sha256": log_sha,
        "errors": errors[:5],
        "rows": rows,
        "more": max(0, len(entries) - MAX_ROWS),
    }
