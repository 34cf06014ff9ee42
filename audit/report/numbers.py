"""Every number in the report's text comes from the run's records (issue 13).

:func:`unexplained_numbers` scans the visible text of a rendered report for numbers and returns those that are
not a formatting of some number in the run's records (``analysis.json``, ``run.json``, ``plan.json``). A
sentence with a number typed into the code or a template — "on the demo, 60 suspects: a standard deviation
of about 6 works" — is caught, because 60 and 6 are nowhere in the records of another run.

What is scanned: everything a reader sees, except

- ``<code>``, ``<pre>``, ``<style>``, ``<script>``, headings, ``<cite>`` and ``<time>`` (hashes, configuration
  dumps, section numbers, citation years, timestamps) and cells of class ``path`` / ``caption`` (file names and
  the manifest's own text);
- elements marked ``data-noscan`` by the template: fixed reference text (glossary, bibliography, declaration),
  the reproducibility appendix (itself a copy of ``run.json``) and structural numbers (row indices).

A printed number is *explained* when it equals one of the formatted forms the report's own filters make of a
recorded number (:func:`formatted_forms`): fixed decimals, significant figures, p-value text, percentages,
thousands separators, and the "about 1 in N" of the plain-language page.
"""
from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from typing import Any, Iterable

__all__ = ["formatted_forms", "recorded_numbers", "report_numbers", "unexplained_numbers"]

# a number not glued to letters / other digits: 16, 0.0001, 1.06e-10, 10,000, 95%, −0.183
# (a CJK character is not part of a number's word: "共12件" is scanned like "12 works")
_W = r"[^\W\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]"
_NUMBER = re.compile(rf"(?<!{_W})(?<![.,/])[-−]?\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?%?(?!{_W})"
                     rf"|(?<!{_W})(?<![.,/])[-−]?\d+(?:\.\d+)?(?:e[-+−]?\d+)?%?(?!{_W})")
_SKIP_TAGS = {"code", "pre", "style", "script", "title", "h1", "h2", "h3", "h4", "svg", "cite", "time"}
# identifiers and user text from the manifest, not numbers the audit computed
_SKIP_CLASSES = {"path", "caption"}
_VOID = {"br", "img", "hr", "meta", "link", "input", "col", "wbr", "source"}
# Numbers that are part of the wording, not of any measurement: "1 in 40", "one-sided", "0 of 12".
TRIVIAL = frozenset({"0", "1", "100%"})


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[bool] = []  # skip flag per open element
        self.chunks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = ((bool(self.stack) and self.stack[-1]) or tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
                or any(k == "data-noscan" for k, _ in attrs))
        self.stack.append(skip)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not (self.stack and self.stack[-1]):
            self.chunks.append(data)


def report_numbers(html: str) -> list[tuple[str, str]]:
    """(number, context) for every number in the scanned text of ``html``."""
    p = _Text()
    p.feed(html)
    text = re.sub(r"\s+", " ", " ".join(p.chunks)).replace("SHA-256", "SHA256")
    return [(m.group(0), text[max(0, m.start() - 60): m.end() + 40]) for m in _NUMBER.finditer(text)]


def _walk(x: Any) -> Iterable[float]:
    if isinstance(x, bool) or x is None:
        return
    if isinstance(x, (int, float)):
        if math.isfinite(x):
            yield x
    elif isinstance(x, str):
        for m in _NUMBER.finditer(x):
            v = _parse(m.group(0))
            if v is not None:
                yield v
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _walk(k)
            yield from _walk(v)
    elif isinstance(x, (list, tuple, set)):
        for v in x:
            yield from _walk(v)


def _parse(token: str) -> float | None:
    t = token.replace("−", "-").replace(",", "").rstrip("%")
    try:
        v = float(t)
    except ValueError:
        return None
    return v / 100 if token.endswith("%") else v


def recorded_numbers(*records: Any) -> set[float]:
    """Every finite number in ``records`` (dicts / lists / strings, numbers inside strings included)."""
    out: set[float] = set()
    for r in records:
        out.update(_walk(r))
    return out


def formatted_forms(v: float) -> set[str]:
    """The texts the report's filters can print for the recorded number ``v``."""
    from audit.report.html import chance_number
    from audit.stats.analysis import format_p

    forms: set[str] = set()
    for x in (v, -v):
        if float(x).is_integer() and abs(x) < 1e15:
            i = int(x)
            forms |= {str(i), f"{i:,}"}
        for d in range(0, 6):
            forms.add(f"{x:.{d}f}")
        for d in range(1, 10):
            forms |= {f"{x:.{d}g}", f"{x:,.{d}g}"}
        forms.add(format_p(x))
    for pct in (v * 100, (1 - v) * 100):
        for d in range(0, 3):
            forms.add(f"{pct:.{d}f}%")
        forms.add(f"{pct:g}%")
    if 0 < v < 1:
        n = chance_number(v)
        if n is not None:
            forms |= {str(n), f"{n:,}"}
    return {f.replace("-", "−") for f in forms} | forms


def unexplained_numbers(html: str, *records: Any) -> list[tuple[str, str]]:
    """Numbers in the report text that are no formatting of a recorded number: (number, context)."""
    allowed = set(TRIVIAL)
    for v in recorded_numbers(*records):
        allowed |= formatted_forms(v)
    return [(tok, ctx) for tok, ctx in report_numbers(html) if tok not in allowed]
