"""What the report template needs for one language (issue 22): the expert block, and — for a language other than
English — the plain-language page and the verdict frame from the catalogue (:mod:`audit.report.plain_i18n`).

:func:`localized_context` is called by :func:`audit.report.html._render` inside :func:`audit.report.i18n.use`, after
the English context is built; what it returns replaces the English prose of that context.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.report import i18n, plain_i18n
from audit.report.expert import expert_block

__all__ = ["localized_context", "font_note"]


def localized_context(result: Any, ctx: dict[str, Any], cfg: dict[str, Any], records: dict[str, Any] | None,
                      metadata: dict[str, Any], folder: str | Path | None, lang: str) -> dict[str, Any]:
    records = records or {}
    role_counts = ctx.get("role_counts") or {}
    out: dict[str, Any] = {
        "xb": expert_block(cfg, records, metadata, dict(role_counts), folder),
        "lang": lang,
        "decision_line": plain_i18n.decision_line(result),
        "verdict_label": plain_i18n.verdict_label(bool(ctx.get("confirmatory")), bool(result.verdict.confirmatory)),
    }
    if lang != "en":
        facts = {"basis": records.get("basis")}
        out["headline"] = plain_i18n.plain_headline(result)
        out["summary"] = plain_i18n.plain_summary(result, facts)
    return out


def font_note(lang: str) -> str | None:
    """Why a PDF in ``lang`` would print empty boxes (no CJK font), else None."""
    return i18n.cjk_font_status() if lang == "zh" else None
