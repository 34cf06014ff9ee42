"""Audit reports: figures (matplotlib), a self-contained HTML file (Jinja2) and its PDF (WeasyPrint)."""
from audit.report.figures import gate_png, histogram_png, roc_png, to_base64
from audit.report.html import PdfUnavailable, limitations, plain_summary, render_html, render_pdf, write_reports

__all__ = ["render_html", "render_pdf", "write_reports", "plain_summary", "limitations", "PdfUnavailable",
           "roc_png", "histogram_png", "gate_png", "to_base64"]
