"""Open a report in headless Chromium: screenshot, DOM, every section and image present; list the PDF's outline.

    python scripts/browser_check.py results/demo/report.html --out results/demo/browser

Needs Chromium (Debian: ``apt-get install chromium-headless-shell``). Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.report.browser import check_in_browser, pdf_outline  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="report.html (report.pdf beside it is checked for an outline)")
    ap.add_argument("--out", default=None, help="folder for screenshot.png, dom.html, browser_check.json")
    a = ap.parse_args()
    html = Path(a.report)
    out = Path(a.out) if a.out else html.parent / "browser"
    found = check_in_browser(html, out)
    pdf = html.with_suffix(".pdf")
    if pdf.is_file():
        found["pdf_outline"] = pdf_outline(pdf)
        if not found["pdf_outline"]:
            found["problems"].append("the PDF has no outline")
            found["ok"] = False
    (out / "browser_check.json").write_text(json.dumps(found, indent=1))
    (out / "dom.html").unlink(missing_ok=True)  # large and re-creatable; the JSON keeps the findings
    print(json.dumps({k: v for k, v in found.items() if k != "pdf_outline"}, indent=1))
    print(f"PDF outline: {len(found.get('pdf_outline', []))} entries")
    return 0 if found["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
