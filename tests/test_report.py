"""The HTML report carries the verdict, every attack, the rejections and its figures, self-contained."""
from __future__ import annotations

import base64
import html
import re

import numpy as np
import pandas as pd
import pytest

from audit.report import histogram_png, render_html, roc_png
from audit.stats import AnalysisPlan, analyze
from audit.types import ScoreTable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_table(
    shift: float,
    n_suspect: int = 20,
    n_control: int = 30,
    n_member: int = 0,
    n_nonmember: int = 0,
    attacks: tuple[str, ...] = ("loss",),
) -> ScoreTable:
    """Synthetic ScoreTable: suspects shifted by ``shift``, members by 2, controls/nonmembers N(0, 1)."""
    rng = np.random.default_rng(0)
    sizes = {"suspect": (n_suspect, shift), "control": (n_control, 0.0), "member": (n_member, 2.0),
             "nonmember": (n_nonmember, 0.0)}
    rows = [
        dict(image_id=f"{role}-{i:05d}".ljust(64, "0"), role=role, attack=attack, attack_params_hash="p0",
             target_fingerprint="fp0", seed=0, score=float(rng.normal(mu, 1.0)))
        for attack in attacks for role, (n, mu) in sizes.items() for i in range(n)
    ]
    return ScoreTable(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def audit_inputs():
    scores = make_table(1.0, n_suspect=12, n_control=30, n_member=15, n_nonmember=40, attacks=("loss", "pia"))
    ids = scores.df.drop_duplicates("image_id")[["image_id", "role"]]
    images = ids.assign(
        path=[f"works/{r}/{i:03d}.png" for i, r in enumerate(ids["role"])],
        caption=["a <b>bold</b> & 'quoted' caption"] + [f"painting {i}" for i in range(1, len(ids))],
        artist="Artist A",
        created="2021-05-01",
        width=512,
        height=512,
        format="PNG",
    )
    rejected = [
        {"path": "works/suspect/broken.png", "role": "suspect", "reason": "truncated PNG: image file is truncated"}
    ]
    metadata = {
        "command": "audit-run experiment=fine_tune",
        "target_fingerprint": "fp0",
        "seed": 0,
        "timestamp": "2025-01-01T00:00:00Z",
        "package_versions": {"audit": "0.1.0", "torch": "2.13.0"},
        "config_yaml": "analysis:\n  alpha: 0.05\n  test: mann_whitney\n",
    }
    result = analyze(scores, images, AnalysisPlan(n_permutations=199, n_bootstrap=100))
    return result, scores, images, rejected, metadata


def test_render_html_contains_verdict_attacks_rejections_and_figures(tmp_path, audit_inputs):
    result, scores, images, rejected, metadata = audit_inputs
    out = render_html(result, scores, images, rejected, metadata, tmp_path / "sub" / "report.html")
    assert out.exists() and out.name == "report.html"
    raw = out.read_text(encoding="utf-8")
    text = html.unescape(raw)
    assert result.verdict.sentence in text
    for attack in ("loss", "pia"):
        assert attack in text
    assert "exploratory" in text and "primary" in text
    assert "truncated PNG: image file is truncated" in text
    assert "works/suspect/broken.png" in text
    assert "alpha: 0.05" in text  # resolved config
    assert "2.13.0" in text  # nested metadata rendered
    # Every figure is inlined, decodes to a PNG, and nothing is fetched from outside.
    blobs = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', raw)
    assert len(blobs) == 1 + 2  # ROC + one histogram per attack
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in blobs)
    assert not re.search(r'(src|href)="(https?:)?//', raw)
    # Untrusted text is escaped (autoescape on), not injected as markup.
    assert "<b>bold</b>" not in raw and "&lt;b&gt;bold&lt;/b&gt;" in raw
    # Full hashes of the evidence are in the report.
    assert all(i in raw for i in images["image_id"])


def test_render_html_says_none_without_rejections(tmp_path, audit_inputs):
    result, scores, images, _, metadata = audit_inputs
    raw = render_html(result, scores, images, [], metadata, tmp_path / "r.html").read_text(encoding="utf-8")
    section = raw.split('id="rejected"', 1)[1].split('id="notes"', 1)[0]
    assert "None" in section and "<table" not in section


def test_render_html_not_tested_verdict(tmp_path):
    scores = make_table(1.0, n_control=0, n_member=10, n_nonmember=10)
    result = analyze(scores, None, AnalysisPlan(n_permutations=99, n_bootstrap=50))
    raw = render_html(result, scores, None, [], {}, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Not tested" in raw
    assert result.verdict.sentence in html.unescape(raw)


def test_figures_are_png_and_roc_needs_two_classes():
    scores = make_table(1.0, n_suspect=10, n_control=10)
    assert roc_png(scores).startswith(PNG_MAGIC)
    assert histogram_png(scores, "loss").startswith(PNG_MAGIC)
    only_suspects = make_table(1.0, n_suspect=10, n_control=0)
    assert roc_png(only_suspects) is None
    assert histogram_png(only_suspects, "loss").startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="not in the ScoreTable"):
        histogram_png(scores, "nope")
