"""Open a report in a real browser (headless Chromium) and check what it shows (issue 13).

``check_in_browser(report.html, out_dir)`` loads the file in ``chromium-headless-shell`` / ``chromium``
(Debian: ``apt-get install chromium-headless-shell``), saves a screenshot of the first screen and the DOM as the
browser built it, and checks that the DOM has every numbered section, that every embedded image decoded (the
browser replaces an undecodable ``data:`` image with a broken-image box of its own; we count the ``<img>``
elements that survived parsing and compare with the source), and that the screenshot is not blank.

The PDF side is checked by :func:`pdf_outline`: the titles of the PDF's bookmarks (its outline), which
WeasyPrint builds from the report's headings.

    python scripts/browser_check.py results/demo/report.html --out results/demo/browser
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["BROWSERS", "find_browser", "check_in_browser", "pdf_outline", "SECTIONS"]

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome")
SECTIONS = ("summary", "plan", "data", "model", "methods", "results", "gates", "limitations", "notes", "glossary",
            "bibliography", "declaration", "appendix")


def find_browser() -> str | None:
    for b in BROWSERS:
        p = shutil.which(b)
        if p:
            return p
    return None


def _run(browser: str, args: list[str], timeout: int) -> subprocess.CompletedProcess:
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
            "--allow-file-access-from-files"]
    return subprocess.run(base + args, capture_output=True, timeout=timeout, check=False)


def check_in_browser(html_path: str | Path, out_dir: str | Path, width: int = 1280, height: int = 2000,
                     timeout: int = 120) -> dict[str, Any]:
    """Screenshot + DOM of ``html_path`` in headless Chromium; returns the findings (``ok`` and ``problems``)."""
    import numpy as np
    from PIL import Image

    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium-headless-shell); tried "
                                + ", ".join(BROWSERS))
    html_path = Path(html_path).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "screenshot.png"
    url = html_path.as_uri()
    r = _run(browser, [f"--screenshot={shot}", f"--window-size={width},{height}", url], timeout)
    dom = _run(browser, ["--dump-dom", url], timeout).stdout.decode("utf-8", "replace")
    (out / "dom.html").write_text(dom, encoding="utf-8")
    source = html_path.read_text(encoding="utf-8")
    problems = []
    missing = [s for s in SECTIONS if f'id="{s}"' not in dom]
    if missing:
        problems.append(f"sections missing from the browser's DOM: {missing}")
    n_src, n_dom = len(re.findall(r"<img\b", source)), len(re.findall(r"<img\b", dom))
    if n_dom != n_src:
        problems.append(f"{n_src} images in the file, {n_dom} in the browser's DOM")
    blank = True
    if shot.is_file():
        a = np.asarray(Image.open(shot).convert("L"), dtype=float)
        blank = float(a.std()) < 5.0
    if blank:
        problems.append("the screenshot is missing or blank" + (f": {r.stderr.decode()[-300:]}" if r.returncode else ""))
    return {"browser": browser, "version": _run(browser, ["--version"], 30).stdout.decode().strip(),
            "screenshot": str(shot), "dom_bytes": len(dom), "images": n_dom, "missing_sections": missing,
            "problems": problems, "ok": not problems}


def pdf_outline(pdf_path: str | Path) -> list[str]:
    """Titles of the PDF's outline (bookmarks), in order."""
    from pypdf import PdfReader

    reader = PdfReader(str(pdf_path))
    titles: list[str] = []

    def walk(items: Any) -> None:
        for it in items:
            if isinstance(it, list):
                walk(it)
            else:
                titles.append(str(it.title))

    walk(reader.outline)
    return titles
