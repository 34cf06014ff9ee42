"""The procedure record, derived from the run's own records (never template text).

Whether the analysis plan existed before the scores is a question of times that the records hold: when the plan
was declared (``plan.json`` / ``run.json`` ``analysis_plan.declared_utc``), when it was committed with
``audit-plan`` (``analysis_plan.committed.committed_utc``), and when each score was computed — in this run, or
earlier, by another run, and reused from the score store (``run.json`` ``score_provenance``, per attack; older
records only count the reused scores, ``score_store.reused``).

:func:`procedure_record` turns those records into one status and the facts behind it. The report calls a run
confirmatory only when its plan provably preceded every score it used; a run whose scores were reused from an
earlier run that computed them before this plan was declared or committed is not, however its plan hash compares.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["procedure_record", "ORDER_OK"]

#: statuses under which the plan (declared or committed) preceded every score the analysis used
ORDER_OK = frozenset({"computed_in_run", "reused_after_plan"})


def _time(v: Any) -> datetime | None:
    if not v:
        return None
    try:
        t = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _int(v: Any) -> int | None:
    try:
        return None if v is None or isinstance(v, bool) else int(v)
    except (TypeError, ValueError):
        return None


def _attack_rows(prov: Any) -> list[dict[str, Any]]:
    """``score_provenance`` (``audit.store.provenance_summary``: ``{"attacks": {name: {"computed", "reused",
    "reused_computed_at": {"earliest", "latest"}, "reused_from_runs", "reused_plan_sha256", ...}}}``) → one row per
    attack: attack, computed, reused, earliest / latest computed_at of the reused scores, runs, plans."""
    if isinstance(prov, dict) and isinstance(prov.get("attacks"), (dict, list)):
        prov = prov["attacks"]
    items: list[tuple[str, dict[str, Any]]] = []
    if isinstance(prov, dict):
        items = [(str(k), v) for k, v in prov.items() if isinstance(v, dict)]
    elif isinstance(prov, list):
        items = [(str(v.get("attack", i)), v) for i, v in enumerate(prov) if isinstance(v, dict)]
    rows = []
    for name, v in items:
        nested = v.get("reused_computed_at") if isinstance(v.get("reused_computed_at"), dict) else {}
        runs = _first(v, "source_runs", "reused_from_runs", "runs", "reused_from")
        plans = _first(v, "source_plans", "plan_sha256s", "reused_plan_sha256", "plans")
        rows.append({
            "attack": name,
            "computed": _int(_first(v, "computed", "n_computed", "computed_in_run", "computed_here")) or 0,
            "reused": _int(_first(v, "reused", "n_reused")) or 0,
            "earliest": _first(nested, "earliest") or _first(v, "reused_earliest_computed_at", "reused_earliest"),
            "latest": _first(nested, "latest") or _first(v, "reused_latest_computed_at", "reused_latest"),
            "under_other_plan": _int(v.get("reused_under_other_plan")) or 0,
            "runs": [str(r) for r in runs] if isinstance(runs, (list, tuple)) else ([str(runs)] if runs else []),
            "plans": [str(p) for p in plans] if isinstance(plans, (list, tuple)) else ([str(plans)] if plans else []),
        })
    return rows


def procedure_record(metadata: dict[str, Any], plan_sha256: str | None = None) -> dict[str, Any]:
    """What the records say about the order of plan and scores.

    Returns ``status`` — ``computed_in_run`` (every score computed by this run, after its plan),
    ``reused_after_plan`` (some reused, all computed after this plan was declared or committed),
    ``scores_predate_plan`` (some reused score was computed before the plan), ``reused_time_unknown`` (scores
    reused, the records do not say when they were computed) or ``unknown`` (no record of where the scores came
    from) — with ``order_ok`` (the plan provably preceded every score), the times, counts per attack, the runs
    that computed reused scores, and ``tool_uncommitted`` (the tool's code had uncommitted changes).
    """
    plan_rec = metadata.get("analysis_plan") or {}
    committed = plan_rec.get("committed") or {}
    declared_utc = plan_rec.get("declared_utc")
    committed_utc = committed.get("committed_utc") if committed else None
    store = metadata.get("score_store") or {}
    prov = metadata.get("score_provenance")
    rows = _attack_rows(prov) if prov else []
    if rows:
        n_reused = sum(r["reused"] for r in rows)
        n_computed = sum(r["computed"] for r in rows)
        earliest = min((t for r in rows if (t := _time(r["earliest"])) is not None), default=None)
        latest = max((t for r in rows if (t := _time(r["latest"])) is not None), default=None)
        runs = sorted({x for r in rows for x in r["runs"]})
        source = "score_provenance"
    else:
        n_reused, n_computed = _int(store.get("reused")), _int(store.get("computed"))
        earliest = latest = None
        runs = []
        source = "score_store" if n_reused is not None or n_computed is not None else None
    # the plan's own time: a commitment made with audit-plan comes first; otherwise the declaration in this run
    t_commit, t_declared = _time(committed_utc), _time(declared_utc)
    t_plan = t_commit or t_declared
    if source is None:
        status = "unknown"
    elif not n_reused:
        status = "computed_in_run" if t_plan is not None else "unknown"
    elif earliest is None:
        status = "reused_time_unknown"
    elif t_plan is not None and earliest >= t_plan:
        status = "reused_after_plan"
    else:
        status = "scores_predate_plan"
    mismatched = sorted({p for r in rows for p in r["plans"] if plan_sha256 and p and p != plan_sha256})
    uncommitted = [str(v) for v in (metadata.get("git_commit"), committed.get("tool_git_commit"))
                   if v and "uncommitted" in str(v)]
    return {
        "status": status,
        "order_ok": status in ORDER_OK,
        "committed": bool(committed),
        "committed_utc": committed_utc,
        "commitment_sha256": committed.get("commitment_sha256") if committed else None,
        "declared_utc": declared_utc,
        "n_reused": n_reused or 0,
        "n_computed": n_computed or 0,
        "reused_earliest": earliest.isoformat(timespec="seconds") if earliest else None,
        "reused_latest": latest.isoformat(timespec="seconds") if latest else None,
        "source_runs": runs,
        "other_plans": mismatched,
        "per_attack": rows,
        "record": source,
        "tool_uncommitted": uncommitted,
    }
