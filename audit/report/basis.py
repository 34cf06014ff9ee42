"""The basis of the comparison: where the works came from, why each control is known not to be in training, and
what the records can check of it (the model's data cutoff against the works' publication dates).

Everything here is read from the accepted-image table (``images.parquet``: the manifest's ``artist``, ``created``
and the optional ``basis``, ``published``, ``source`` columns, and the decoded size and format) and the case record
(:mod:`audit.report.case`). The numbers it returns are written to the report's own record (``report_records.json``)
so that every number the report prints is in a sealed record.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from audit.report.case import earliest_date, parse_date

__all__ = ["basis_summary", "date_diagnostic", "NOT_IN_TRAINING_BASES"]

#: bases that do not rest on the data cutoff (a control with one of these is not checked against the cutoff date)
NOT_IN_TRAINING_BASES = frozenset({"unpublished", "held_out"})
_ROLES = ("suspect", "control", "member", "nonmember")
_TOP = 3  # distinct values shown per cell (the rest counted)


def _col(images: pd.DataFrame, name: str) -> pd.Series:
    return images[name].fillna("").astype(str) if name in images.columns else pd.Series([""] * len(images),
                                                                                       index=images.index)


def _counts(values: list[str]) -> list[dict[str, Any]]:
    c = Counter(v for v in values if v)
    return [{"value": v, "n": int(n)} for v, n in c.most_common()]


def _date_range(values: list[str]) -> dict[str, Any] | None:
    spans = [s for v in values if (s := parse_date(v))]
    if not spans:
        return None
    return {"first": min(s[0] for s in spans).isoformat(), "last": max(s[1] for s in spans).isoformat(),
            "n_dated": len(spans)}


def basis_summary(images: pd.DataFrame | None, case: dict[str, Any], control_role: str = "control"
                  ) -> dict[str, Any] | None:
    """Per role and artist: works, dates, pixel sizes, formats, sources and bases; the cutoff check.

    A work's basis is its manifest ``basis``, else the case file's default for its role
    (``selection.<role>s.basis``). Its date is ``published`` when given, else ``created`` (the table says which).
    The cutoff check names every control that may have been published before the model's data cutoff — the earliest
    day its date (``published``, else ``created``) can mean lies before the cutoff — unless its basis does not rest
    on the cutoff (unpublished, held out); known non-members are checked when they state a publication date or the
    basis post_cutoff.
    """
    if images is None or images.empty or "role" not in images.columns:
        return None
    df = images.copy()
    sel = (case or {}).get("selection") or {}
    # known-truth roles carry their basis in the role itself (the audit's own definition of member / nonmember)
    default_basis = {"suspect": (sel.get("suspects") or {}).get("basis"),
                     "control": (sel.get("controls") or {}).get("basis"),
                     "member": "known_member (role)", "nonmember": "known_nonmember (role)"}
    default_source = {"suspect": (sel.get("suspects") or {}).get("source"),
                      "control": (sel.get("controls") or {}).get("source")}
    if control_role != "control":
        default_basis[control_role] = default_basis["control"]
        default_source[control_role] = default_source["control"]
    basis = _col(df, "basis")
    from_case = basis.eq("") & df["role"].map(lambda r: bool(default_basis.get(r)) and r in ("suspect", control_role))
    df["_basis"] = [b or (default_basis.get(r) or "") for b, r in zip(basis, df["role"])]
    df["_published"] = _col(df, "published")
    df["_created"] = _col(df, "created")
    df["_source"] = [x or (default_source.get(r) or "") for x, r in zip(_col(df, "source"), df["role"])]
    df["_artist"] = _col(df, "artist")
    has_published = bool(df["_published"].ne("").any())
    rows = []
    for role in _ROLES:
        sub = df[df["role"] == role]
        if sub.empty:
            continue
        # per artist for the two roles the verdict compares; the known-truth roles as one row each
        by_artist = role in ("suspect", control_role) and sub["_artist"].nunique() > 1
        groups = [("all", sub)] + ([(a or "(none)", g) for a, g in sub.groupby("_artist", sort=True)]
                                   if by_artist else [])
        for artist, g in groups:
            w = pd.to_numeric(g.get("width", pd.Series(dtype=float)), errors="coerce")
            h = pd.to_numeric(g.get("height", pd.Series(dtype=float)), errors="coerce")
            rows.append({
                "role": role, "artist": artist, "n": int(len(g)), "total": artist == "all",
                "published": _date_range(list(g["_published"])), "created": _date_range(list(g["_created"])),
                "px_min": int(np.nanmin(np.minimum(w, h))) if w.notna().any() else None,
                "px_max": int(np.nanmax(np.maximum(w, h))) if w.notna().any() else None,
                "formats": _counts(list(g.get("format", pd.Series(dtype=str)).fillna("").astype(str))),
                "sources": _counts(list(g["_source"]))[:_TOP], "n_sources": int(g["_source"].ne("").sum()),
                "n_distinct_sources": int(g["_source"][g["_source"].ne("")].nunique()),
                "bases": _counts(list(g["_basis"])), "n_basis": int(g["_basis"].ne("").sum()),
                "n_basis_from_case": int(from_case[g.index].sum()),
                "n_without_basis": int(g["_basis"].eq("").sum()),
            })
    cutoff_text = ((case or {}).get("model") or {}).get("data_cutoff")
    cutoff = earliest_date(cutoff_text) if cutoff_text else None
    flagged, n_checked, n_undated = [], 0, 0
    if cutoff is not None:
        for r in df[df["role"].isin({control_role, "nonmember"})].to_dict(orient="records"):
            if r["_basis"] in NOT_IN_TRAINING_BASES:
                continue
            if r["role"] == "nonmember" and not r["_published"] and r["_basis"] != "post_cutoff":
                continue  # a known non-member whose status does not rest on a stated date
            n_checked += 1
            which = "published" if r["_published"] else ("created" if r["_created"] else "")
            when = earliest_date(r["_published"] or r["_created"])
            if when is None:
                n_undated += 1
                continue
            if when < cutoff:
                flagged.append({"image_id": str(r["image_id"]), "path": str(r.get("path", "")), "role": str(r["role"]),
                                "artist": r["_artist"], "date": r["_published"] or r["_created"], "date_kind": which,
                                "basis": r["_basis"]})
    controls = df[df["role"] == control_role]
    return {
        "rows": rows, "control_role": control_role, "date_column": "published" if has_published else "created",
        "has_published": has_published, "has_source": bool(df["_source"].ne("").any()),
        "has_basis": bool(df["_basis"].ne("").any()),
        "controls_without_basis": int(controls["_basis"].eq("").sum()),
        "cutoff": cutoff.isoformat() if cutoff else None, "cutoff_checked": n_checked,
        "cutoff_undated": n_undated, "flagged": flagged, "n_flagged": len(flagged),
    }


def date_diagnostic(images: pd.DataFrame | None, per_work_scores: pd.DataFrame | None,
                    control_role: str = "control", stratum: str | None = None) -> dict[str, Any] | None:
    """:func:`audit.stats.blind.date_trend` on the works' dates (``published``, else ``created``) and the per-work
    attack's scores (``image_id``, ``role``, ``score``), within the plan's strata (column ``stratum`` of the
    images) when it has them; None without dates on both sides."""
    from audit.stats.blind import date_trend, decimal_years

    if images is None or images.empty or per_work_scores is None or per_work_scores.empty:
        return None
    pub, cre = _col(images, "published"), _col(images, "created")
    dates = dict(zip(images["image_id"], [p or c for p, c in zip(pub, cre)]))
    kind = "published" if pub.ne("").any() else "created"
    d = per_work_scores.assign(date=per_work_scores["image_id"].map(dates).fillna(""))
    s, c = d[d["role"] == "suspect"], d[d["role"] == control_role]
    strata_s = strata_c = None
    if stratum and stratum in images.columns:
        g = dict(zip(images["image_id"], images[stratum].fillna("").astype(str)))
        strata_s, strata_c = list(s["image_id"].map(g)), list(c["image_id"].map(g))
    res = date_trend(decimal_years(s["date"]), s["score"].to_numpy(float), decimal_years(c["date"]),
                     c["score"].to_numpy(float), strata_s, strata_c)
    if res is not None:
        res["date_kind"] = kind
        res["stratum"] = stratum if strata_c is not None else None
    return res
