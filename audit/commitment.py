"""Committed analysis plans: fix the plan, the evidence and the model *before* any score exists.

``audit-plan [the same overrides as audit-run]`` (:func:`audit.cli.commit_plan`) resolves the analysis plan exactly as ``audit-run`` would
(strata included), hashes the manifest file and every image file it lists, loads the model once for its
fingerprint, and writes ``committed_plan.json`` with the tool version, its git commit and the time. It prints
the commitment's SHA-256 — the number to lodge with the court or the other side. ``audit-run
plan_commitment=<file>`` then refuses to score unless the plan, the manifest, every image and the model are
the committed ones, and the report says "plan committed at T (SHA-256 H), before scoring". A plan made inside
a run is said to be exactly that.

The commitment file is plain JSON read as data: nothing in it is instantiated or executed.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["COMMITTED_PLAN", "build_commitment", "commitment_sha256", "load_commitment", "check_before_scoring",
           "check_plan", "check_evidence", "check_target", "summary"]


COMMITTED_PLAN = "committed_plan.json"
_VERSION = 1


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != "commitment_sha256"}, sort_keys=True,
                      ensure_ascii=False, default=str).encode()


def commitment_sha256(record: dict[str, Any]) -> str:
    """SHA-256 of the commitment's canonical JSON (sorted keys, without the hash field itself)."""
    return hashlib.sha256(_canonical(record)).hexdigest()


def _sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _image_hashes(entries: list[dict[str, Any]]) -> dict[str, str | None]:
    """Absolute path → SHA-256 of each listed file (None for a file that does not exist)."""
    out: dict[str, str | None] = {}
    for e in entries:
        p = str(e["path"])
        out[p] = _sha256_file(p) if os.path.isfile(p) else None
    return out


def _manifest_path(cfg: Any) -> str | None:
    m = cfg.data.get("manifest") if cfg.get("data") is not None else None
    return str(m) if m else None


def build_commitment(plan: Any, decisions: str, entries: list[dict[str, Any]], manifest: str | None,
                     target_fingerprint: str, target_source: str | None) -> dict[str, Any]:
    from audit.report.texts import _git_commit

    try:
        from importlib.metadata import version

        tool = version("diffusion-membership-audit")
    except Exception:  # pragma: no cover
        tool = "unknown"
    record: dict[str, Any] = {
        "format": _VERSION,
        "committed_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": plan.to_dict(),
        "plan_sha256": plan.sha256(),
        "decisions": decisions,
        "manifest": manifest,
        "manifest_sha256": _sha256_file(manifest) if manifest and os.path.isfile(manifest) else None,
        "images": _image_hashes(entries),
        "target_source": target_source,
        "target_fingerprint": target_fingerprint,
        "tool_version": tool,
        "tool_git_commit": _git_commit(),
    }
    record["commitment_sha256"] = commitment_sha256(record)
    return record


def load_commitment(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a commitment file as data and check its own hash; a one-line ValueError when it does not hold."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"plan commitment not found: {p}")
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"plan commitment {p} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != _VERSION:
        raise ValueError(f"plan commitment {p} is not a committed_plan.json written by audit-plan")
    if record.get("commitment_sha256") != commitment_sha256(record):
        raise ValueError(f"plan commitment {p} was altered after it was written (its SHA-256 does not match)")
    return record


def check_plan(record: dict[str, Any], plan: Any) -> None:
    """Refuse (one-line ValueError) a plan that differs from the committed one."""
    if plan.sha256() != record.get("plan_sha256"):
        committed = record.get("plan") or {}
        now = plan.to_dict()
        diff = sorted(k for k in set(committed) | set(now) if committed.get(k) != now.get(k))
        raise ValueError(f"the analysis plan differs from the committed one (fields {diff[:6]}); change the "
                         "configuration back or commit a new plan with audit-plan")


def check_evidence(record: dict[str, Any], entries: list[dict[str, Any]], manifest: str | None) -> None:
    """Refuse (one-line ValueError) when the manifest or any image file differs from the commitment."""
    msha = _sha256_file(manifest) if manifest and os.path.isfile(manifest) else None
    if msha != record.get("manifest_sha256"):
        raise ValueError(f"the manifest {manifest} differs from the committed one (SHA-256 "
                         f"{str(msha)[:16]}… vs {str(record.get('manifest_sha256'))[:16]}…)")
    now_imgs = _image_hashes(entries)
    committed_imgs = record.get("images") or {}
    changed = sorted(p for p in set(now_imgs) | set(committed_imgs) if now_imgs.get(p) != committed_imgs.get(p))
    if changed:
        raise ValueError(f"{len(changed)} image file(s) differ from the committed evidence (changed, added or "
                         f"missing), e.g. {changed[0]}")


def check_before_scoring(record: dict[str, Any], plan: Any, entries: list[dict[str, Any]],
                         manifest: str | None) -> None:
    """Both checks: the plan, then the manifest and every image."""
    check_plan(record, plan)
    check_evidence(record, entries, manifest)


def check_target(record: dict[str, Any], fingerprint: str) -> None:
    if fingerprint != record.get("target_fingerprint"):
        raise ValueError(f"the model differs from the committed one (fingerprint {fingerprint[:16]}… vs "
                         f"{str(record.get('target_fingerprint'))[:16]}…)")


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a run records about the commitment it was checked against (in plan.json / run.json)."""
    return {"commitment_sha256": record.get("commitment_sha256"), "committed_utc": record.get("committed_utc"),
            "manifest_sha256": record.get("manifest_sha256"), "n_images": len(record.get("images") or {}),
            "target_fingerprint": record.get("target_fingerprint"), "tool_git_commit": record.get("tool_git_commit")}
