"""Kept for old command lines: ``python scripts/report.py <folder> ...`` is ``audit-report <folder> ...``
(:mod:`audit.regenerate`)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/report.py` from a checkout

from audit.regenerate import RegenerationRefused, console, main  # noqa: E402,F401

if __name__ == "__main__":
    console()
