"""Audit reports: figures (matplotlib) and a self-contained HTML file (Jinja2)."""
from audit.report.figures import histogram_png, roc_png, to_base64
from audit.report.html import render_html

__all__ = ["render_html", "roc_png", "histogram_png", "to_base64"]
