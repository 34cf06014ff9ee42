"""Keep the report's message catalogue in step with the code (issue 22).

    python scripts/i18n_catalogue.py            # extract every message, update locale/zh_Hans/.../messages.po
    python scripts/i18n_catalogue.py --check    # exit 1 and list the messages without a translation
    python scripts/i18n_catalogue.py --compile  # also write messages.mo beside the .po (optional: the report
                                                # compiles the .po in memory when no up-to-date .mo is there)

Messages come from Babel's extractors — Python (``_`` / ``ngettext``) in the report modules that speak through the
catalogue, Jinja2 (``jinja2.ext.i18n``) in the templates — plus the fixed texts the templates translate at render
time (:func:`audit.report.i18n.dynamic_messages`: glossary, gate titles, the studies and critiques). Existing
translations are kept; messages no longer in the code become obsolete entries.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's audit package, whatever is installed
REPORT = ROOT / "audit" / "report"
PO = REPORT / "locale" / "zh_Hans" / "LC_MESSAGES" / "messages.po"
PYTHON_SOURCES = ("i18n.py", "expert.py", "plain_i18n.py")
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2)}


def extract() -> Catalog:
    from audit.report.i18n import dynamic_messages

    cat = Catalog(locale="zh_Hans", project="diffusion-membership-audit", domain="messages",
                  msgid_bugs_address="", copyright_holder="", fuzzy=False)
    for name in PYTHON_SOURCES:
        path = REPORT / name
        for lineno, msg, comments, _ctx in extract_from_file("python", str(path), keywords=KEYWORDS):
            cat.add(msg, locations=[(f"audit/report/{name}", lineno)], auto_comments=comments)
    for path in sorted((REPORT / "templates").glob("*.j2")):
        options = {"extensions": "jinja2.ext.i18n", "trimmed": "false", "newstyle_gettext": "true"}
        for lineno, msg, comments, _ctx in extract_from_file("jinja2", str(path), keywords=KEYWORDS,
                                                             options=options):
            cat.add(msg, locations=[(f"audit/report/templates/{path.name}", lineno)], auto_comments=comments)
    for where, msg in dynamic_messages():
        cat.add(msg, locations=[(where, 0)])
    return cat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="list untranslated messages; exit 1 if any")
    ap.add_argument("--compile", action="store_true", help="also write messages.mo")
    args = ap.parse_args(argv)
    po = PO
    template = extract()
    if po.is_file():
        with open(po, "rb") as f:
            cat = read_po(f, locale="zh_Hans")
    else:
        po.parent.mkdir(parents=True, exist_ok=True)
        cat = Catalog(locale="zh_Hans", domain="messages", fuzzy=False)
    if args.check:
        ids = {m.id for m in template if m.id}
        done = {m.id for m in cat if m.id and m.string and not m.fuzzy}
        missing = sorted(ids - done, key=str)
        for m in missing:
            print(f"untranslated: {m!r}")
        print(f"{len(ids) - len(missing)} of {len(ids)} messages translated")
        return 1 if missing else 0
    cat.update(template, no_fuzzy_matching=True, update_header_comment=False)
    cat.fuzzy = False
    with open(po, "wb") as f:
        write_po(f, cat, width=0, sort_output=False, include_previous=False, omit_header=False, include_lineno=False,
                 ignore_obsolete=True)
    n = sum(1 for m in cat if m.id)
    t = sum(1 for m in cat if m.id and m.string)
    print(f"{po.relative_to(ROOT)}: {n} messages, {t} translated")
    if args.compile:
        with open(po.with_suffix(".mo"), "wb") as f:
            write_mo(f, cat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
