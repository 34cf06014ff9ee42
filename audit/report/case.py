"""The case file: facts about the model and the choice of works that only the people involved can state.

Who selected the suspect and the control works, when, by which criteria and whether blind to any score; the
model's training-data cutoff; where the weights came from and how they were kept. Nothing here changes a score or
the analysis: the report prints these facts as *stated* (in "Basis of the comparison" and "The model audited") and
checks what it can against the records (the cutoff against the works' publication dates).

Sources, later ones overriding earlier ones: the ``case`` config group (``configs/case/``), then a YAML file named by
``case.file`` (read with the safe loader, plain values only). The merged record is written into the results folder
as the exhibit ``case.yaml`` and quoted there by SHA-256; a report regenerated from a folder reads that exhibit
only, never a path named inside the folder (a crafted folder could name any file on the machine).
"""
from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CASE_EXHIBIT", "CASE_KEYS", "load_case", "parse_date", "earliest_date"]

CASE_EXHIBIT = "case.yaml"

#: every key a case record may hold (section → keys); anything else is refused with its name
CASE_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("name", "obtained_from", "obtained_how", "obtained_utc", "kept_how", "data_cutoff", "cutoff_source"),
    "selection.suspects": ("by", "when", "criteria", "basis", "source"),
    "selection.controls": ("by", "when", "criteria", "by_date", "basis", "source"),
    "selection": ("blind_to_scores",),
}
_BOOLS = {"selection.controls.by_date", "selection.blind_to_scores"}
_DATES = {"model.data_cutoff", "selection.suspects.when", "selection.controls.when"}
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_MAX_TEXT = 2000


def parse_date(text: Any) -> tuple[date, date] | None:
    """``(earliest, latest)`` day a date written YYYY, YYYY-MM or YYYY-MM-DD (optionally with a time) can mean;
    None for an empty or unreadable value."""
    if text is None:
        return None
    if isinstance(text, date):
        return text, text
    m = _DATE.match(str(text).strip())
    if not m:
        return None
    y, mo, d = int(m.group(1)), m.group(2), m.group(3)
    try:
        if mo is None:
            return date(y, 1, 1), date(y, 12, 31)
        if d is None:
            nxt = date(y + (int(mo) == 12), int(mo) % 12 + 1, 1)
            return date(y, int(mo), 1), date.fromordinal(nxt.toordinal() - 1)
        day = date(y, int(mo), int(d))
    except ValueError:
        return None
    return day, day


def earliest_date(text: Any) -> date | None:
    r = parse_date(text)
    return r[0] if r else None


def _empty() -> dict[str, Any]:
    return {"model": {k: None for k in CASE_KEYS["model"]},
            "selection": {"suspects": {k: None for k in CASE_KEYS["selection.suspects"]},
                          "controls": {k: None for k in CASE_KEYS["selection.controls"]},
                          "blind_to_scores": None}}


def _check_value(where: str, value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if where in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"case file: {where} must be true, false or null, got {value!r}")
        return value
    if isinstance(value, (dict, list)):
        raise ValueError(f"case file: {where} must be a plain value, got {type(value).__name__}")
    text = value.isoformat() if isinstance(value, date) else str(value).strip()
    if len(text) > _MAX_TEXT:
        raise ValueError(f"case file: {where} is longer than {_MAX_TEXT} characters")
    if where in _DATES and parse_date(text) is None:
        raise ValueError(f"case file: {where} must be a date YYYY-MM-DD, got {text!r}")
    return text


def _merge(into: dict[str, Any], values: Any, origin: str) -> None:
    if values is None:
        return
    if not isinstance(values, dict):
        raise ValueError(f"{origin}: a case record must be a mapping, got {type(values).__name__}")
    for top, v in values.items():
        if top == "file":
            continue
        if top == "model":
            sections = {"model": v}
        elif top == "selection":
            if v is not None and not isinstance(v, dict):
                raise ValueError(f"{origin}: selection must be a mapping")
            v = dict(v or {})
            sections = {f"selection.{k}": v.pop(k) for k in ("suspects", "controls") if k in v}
            sections["selection"] = v
        else:
            raise ValueError(f"{origin}: unknown case key {top!r} (expected model, selection, file)")
        for sec, block in sections.items():
            if block is None:
                continue
            if not isinstance(block, dict):
                raise ValueError(f"{origin}: {sec} must be a mapping")
            for k, x in block.items():
                if k not in CASE_KEYS[sec]:
                    raise ValueError(f"{origin}: unknown case key {sec}.{k} (expected one of "
                                     f"{', '.join(CASE_KEYS[sec])})")
                target = into
                for part in sec.split("."):
                    target = target[part]
                target[k] = _check_value(f"{sec}.{k}", x)


def load_case(cfg: dict[str, Any], folder: str | Path | None = None, regenerated: bool = False
              ) -> dict[str, Any]:
    """The case record of a run: ``{"model": {...}, "selection": {...}, "stated": bool, "exhibit": {...}|None,
    "origin": str}``.

    ``cfg``: the run's resolved configuration (plain values). ``folder``: the results folder; when it already
    holds the exhibit ``case.yaml`` (a regenerated report), that exhibit is the record. Otherwise the ``case``
    group and ``case.file`` are merged and — for a run, not a regeneration — written to ``folder/case.yaml``.
    ``regenerated``: a report made again from a folder: only the folder's exhibit is read.
    """
    rec = _empty()
    exhibit_path = Path(folder) / CASE_EXHIBIT if folder is not None else None
    origin = "not stated"
    if exhibit_path is not None and exhibit_path.is_file():
        data = exhibit_path.read_bytes()
        _merge(rec, yaml.safe_load(data.decode("utf-8")) or {}, CASE_EXHIBIT)
        origin = f"exhibit {CASE_EXHIBIT}"
    elif not regenerated:
        group = cfg.get("case") if isinstance(cfg, dict) else None
        if isinstance(group, dict):
            _merge(rec, group, "case config")
            origin = "case config group"
            file = group.get("file")
            if file:
                p = Path(str(file)).expanduser()
                if not p.is_file():
                    raise FileNotFoundError(f"case.file not found: {p}")
                _merge(rec, yaml.safe_load(p.read_text(encoding="utf-8")) or {}, str(p))
                origin = f"case file {p.name}"
        data = None
        if exhibit_path is not None and _stated(rec):
            data = yaml.safe_dump({"model": rec["model"], "selection": rec["selection"]}, sort_keys=False,
                                  allow_unicode=True).encode("utf-8")
            exhibit_path.parent.mkdir(parents=True, exist_ok=True)
            exhibit_path.write_bytes(data)
    else:
        data = None
    rec["stated"] = _stated(rec)
    rec["origin"] = origin
    rec["exhibit"] = ({"name": CASE_EXHIBIT, "sha256": hashlib.sha256(data).hexdigest()}
                      if data is not None else None)
    return rec


def _stated(rec: dict[str, Any]) -> bool:
    sel = rec["selection"]
    return any(v is not None for v in rec["model"].values()) or any(
        v is not None for v in [*sel["suspects"].values(), *sel["controls"].values(), sel["blind_to_scores"]])
