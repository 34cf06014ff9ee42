"""The HTML report carries the verdict, every attack, the rejections and its figures, self-contained."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.report import histogram_png, limitations, plain_summary, render_html, roc_png, write_reports
from audit.report import html as report_html
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
    # no image features in this fixture: the blind baseline is waived explicitly (it would withhold otherwise)
    plan = AnalysisPlan(n_permutations=199, n_bootstrap=100, gates=("placebo", "positive_control", "power"))
    result = analyze(scores, images, plan, recorded_plan_sha256=plan.sha256())
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
    # ROC (suspects vs controls) + ROC (members vs nonmembers) + one histogram per attack + the per-artwork
    # p-value histogram + one figure per gate that ran (placebo, positive control, power; no blind features here)
    assert [g.status != "not_run" for g in result.gates] == [False, True, True, True]
    assert len(blobs) == 2 + 2 + 1 + 3
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in blobs)
    assert not re.search(r'(src|href)="(https?:)?//', raw)
    # Untrusted text is escaped (autoescape on), not injected as markup.
    assert "<b>bold</b>" not in raw and "&lt;b&gt;bold&lt;/b&gt;" in raw
    # Full hashes of the evidence are in the report.
    assert all(i in raw for i in images["image_id"])


def test_render_html_says_none_without_rejections(tmp_path, audit_inputs):
    result, scores, images, _, metadata = audit_inputs
    raw = render_html(result, scores, images, [], metadata, tmp_path / "r.html").read_text(encoding="utf-8")
    section = raw.split('id="rejected"', 1)[1].split('id="model"', 1)[0]
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


SECTIONS = ("summary", "plan", "data", "model", "methods", "results", "gates", "limitations", "appendix")


def test_report_has_every_section_the_plan_hash_and_plain_language(tmp_path, audit_inputs):
    result, scores, images, rejected, metadata = audit_inputs
    meta = {**metadata, "attacks": {"loss": {"name": "loss", "paper": "Matsumoto et al. 2023", "access": "gray",
                                             "params": {"attack": "LossAttack", "timesteps": [100]}}}}
    raw = render_html(result, scores, images, rejected, meta, tmp_path / "r.html").read_text(encoding="utf-8")
    text = html.unescape(raw)
    positions = [raw.index(f'id="{s}"') for s in SECTIONS]
    assert positions == sorted(positions)
    assert result.plan_sha256 in text and len(result.plan_sha256) == 64
    assert "Matsumoto et al. 2023" in text
    assert "training-objective MSE" in text  # the attack's docstring explains what it measures
    summary = plain_summary(result)
    assert result.verdict.decision == "reject_h0"
    assert "inconsistent with no suspect work being in the training data" in summary[0]
    assert all(p in text for p in summary)
    assert "Inconsistent with no suspect work being in the training data, at α = 0.05" in text
    lims = limitations(result)
    assert any("not proof of absence" in x for x in lims) and all(x in text for x in lims)
    for g in result.gates:
        assert g.summary in text
    assert "Storey" in text and "bootstrap interval" in text


def _pdf_pages(pdf: bytes) -> int:
    """Page objects in a PDF, looking inside compressed object streams too (no PDF library needed)."""
    import zlib

    chunks = [pdf]
    for m in re.finditer(rb"/FlateDecode.*?stream\r?\n", pdf, re.S):
        try:
            chunks.append(zlib.decompressobj().decompress(pdf[m.end():]))
        except zlib.error:
            pass
    return sum(len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", c)) for c in chunks)


@pytest.mark.slow
def test_write_reports_writes_html_and_a_paged_pdf(tmp_path, audit_inputs):
    result, scores, images, rejected, metadata = audit_inputs
    written = write_reports(result, scores, images, rejected, metadata, tmp_path, formats=["html", "pdf"])
    assert set(written) == {"html", "pdf"}
    pdf = written["pdf"].read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert _pdf_pages(pdf) >= 3
    assert "PDF report not written" not in written["html"].read_text(encoding="utf-8")
    # WeasyPrint turns on PIL's global LOAD_TRUNCATED_IMAGES when imported; the report must switch it back
    # off, or truncated evidence files rendered after a report would be silently accepted.
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ValueError, match="unknown report formats"):
        write_reports(result, scores, images, rejected, metadata, tmp_path, formats=["docx"])


def test_a_pdf_failure_keeps_the_html_and_says_so(tmp_path, audit_inputs, monkeypatch, capsys):
    import sys

    result, scores, images, rejected, metadata = audit_inputs
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # as if WeasyPrint were not installed
    written = write_reports(result, scores, images, rejected, metadata, tmp_path, formats=["html", "pdf"])
    assert set(written) == {"html"} and not (tmp_path / "report.pdf").exists()
    raw = html.unescape(written["html"].read_text(encoding="utf-8"))
    assert "PDF report not written" in raw and "WeasyPrint is not installed" in raw
    assert result.verdict.sentence in raw
    assert "PDF report NOT written" in capsys.readouterr().out
    # missing system libraries (pango) are reported with the Debian packages to install
    class NoPango:
        def __getattr__(self, name):
            raise OSError("cannot load library 'libpango-1.0-0'")

    monkeypatch.setitem(sys.modules, "weasyprint", NoPango())
    with pytest.raises(report_html.PdfUnavailable, match="libpangoft2-1.0-0"):
        report_html.render_pdf(written["html"], tmp_path / "x.pdf")


def test_withheld_verdict_is_rendered_with_the_failed_gate(tmp_path):
    scores = make_table(1.0, n_suspect=20, n_control=60)
    ids = scores.df.drop_duplicates("image_id")[["image_id", "role"]].reset_index(drop=True)
    rng = np.random.default_rng(1)
    features = ids.assign(px_mean_r=rng.normal(size=len(ids)) + np.where(ids["role"] == "suspect", 3.0, 0.0),
                          px_gradient=rng.normal(size=len(ids)))
    plan = AnalysisPlan(n_permutations=199, n_bootstrap=50, crossfit_permutations=99, n_placebo=200)
    result = analyze(scores, None, plan, features=features)
    assert result.verdict.decision == "withheld"
    raw = html.unescape(render_html(result, scores, None, [], {}, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert "Verdict withheld" in raw and result.gate("blind_baseline").summary in raw
    assert "FAILED" in raw
    assert "No verdict is given" in plain_summary(result)[0]
    blobs = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', raw)
    assert len(blobs) == 1 + 1 + 1 + 3  # ROC, histogram, p-values, gates: blind baseline, placebo, power


def test_report_has_glossary_references_declaration_and_provenance(tmp_path, audit_inputs):
    result, scores, images, rejected, metadata = audit_inputs
    cfg = ("report:\n  expert:\n    name: Dr Jane Roe\n    qualifications: PhD statistics\n"
           "    instructing_party: Counsel for the claimants\n")
    meta = {**metadata, "config_yaml": cfg, "timing_s": 12.345678901234567,
            "attacks": {"pian": {"name": "pian", "params": {"attack": "PIAN"}}}}
    raw = render_html(result, scores, images, rejected, meta, tmp_path / "r.html").read_text(encoding="utf-8")
    text = html.unescape(raw)
    ids = ["notes", "glossary", "bibliography", "declaration", "appendix"]
    pos = [raw.index(f'id="{s}"') for s in ids]
    assert pos == sorted(pos)
    assert "Dr Jane Roe" in text and "PhD statistics" in text and "Counsel for the claimants" in text
    assert "Goeman, J. J. & Solari, A. (2011)" in text and "van Elteren" in text
    assert "report made (UTC)" in text and "tool git commit (report)" in text
    assert "12.345678901234567" not in text and "12.3457" in text  # no 17-digit timings
    from audit.report.html import _describe_attacks

    pian_scores = ScoreTable(scores.df.assign(attack="pian"))
    (d,) = _describe_attacks(meta, pian_scores)
    assert "module docstring" not in d["description"] and len(d["description"]) > 80  # quotes the module instead
    assert 'counter(figure)' in raw  # figures are numbered
    import hashlib

    exhibit = tmp_path / "evidence_inventory.csv"  # the hash inventory is an exhibit quoted by its own hash
    assert hashlib.sha256(exhibit.read_bytes()).hexdigest() in text
    inv = pd.read_csv(exhibit)
    assert len(inv) == images["image_id"].nunique() and set(inv["sha256"]) == set(images["image_id"])
    assert 'class="inventory screen-only"' in raw
    blank = render_html(result, scores, images, rejected, metadata, tmp_path / "b.html").read_text(encoding="utf-8")
    assert "set report.expert.name" in html.unescape(blank)


# --------------------------------------------------------------------------------------------------
# every number in the report's text comes from the run's records (issue 13)
# --------------------------------------------------------------------------------------------------
def test_every_number_in_the_report_text_is_in_the_records(tmp_path, audit_inputs):
    from audit.report.numbers import report_numbers, unexplained_numbers

    result, scores, images, rejected, metadata = audit_inputs
    raw = render_html(result, scores, images, rejected, metadata, tmp_path / "r.html").read_text(encoding="utf-8")
    scanned = report_numbers(raw)
    assert len(scanned) > 100  # the scan sees the prose and the tables, not an empty string
    import json

    derived = json.loads((tmp_path / "report_records.json").read_text(encoding="utf-8"))
    assert unexplained_numbers(raw, result.to_dict(), metadata, derived) == []


def test_the_number_scan_fails_on_a_hard_coded_sentence(tmp_path, audit_inputs, monkeypatch):
    from audit.report.numbers import unexplained_numbers

    result, scores, images, rejected, metadata = audit_inputs
    # the sentence an earlier version printed in every report, whatever the run
    monkeypatch.setattr(report_html, "plain_summary", lambda r, *a: [
        *plain_summary(r, *a), "On the demo, 60 suspects: a standard deviation of about 6 works."])
    raw = render_html(result, scores, images, rejected, metadata, tmp_path / "r.html").read_text(encoding="utf-8")
    import json

    derived = json.loads((tmp_path / "report_records.json").read_text(encoding="utf-8"))
    bad = unexplained_numbers(raw, result.to_dict(), metadata, derived)
    assert [tok for tok, _ in bad] == ["60"] and "60 suspects" in bad[0][1]


def test_chance_words_follow_the_p_value():
    assert report_html.chance_words(0.025) == "about 1 in 40"
    assert report_html.chance_words(0.00021) == "about 1 in 4,800"
    assert report_html.chance_words(9.999e-5) == "less than 1 in ten thousand"
    assert report_html.chance_words(5.6e-17) == "less than 1 in a trillion"
    assert report_html.chance_words(3e-10) == "less than 1 in a billion"
    assert report_html.chance_words(0.7) == "about even odds or more"


def test_thumbnails_pair_each_suspect_with_its_nearest_same_artist_controls_and_check_hashes(tmp_path):
    from PIL import Image

    from audit.data import sha256_file
    from audit.groundtruth.synthetic import render_artwork
    from audit.report.thumbnails import thumbnail_panel
    from audit.stats.blind import pixel_features

    rows, pix = [], []
    for role, n in (("suspect", 3), ("control", 12)):
        for i in range(n):
            artist = ("stripes", "circles")[i % 2]
            arr = render_artwork(artist, i + (100 if role == "suspect" else 0), size=32, seed=1)
            path = tmp_path / f"{role}_{i}.png"
            Image.fromarray(arr).save(path)
            rows.append({"image_id": sha256_file(path), "role": role, "path": str(path), "artist": artist})
            pix.append(arr)
    images = pd.DataFrame(rows)
    features = pixel_features(np.stack(pix).transpose(0, 3, 1, 2)).assign(image_id=images["image_id"], role=images["role"])
    rng = np.random.default_rng(0)
    scores = ScoreTable(pd.DataFrame([dict(image_id=r["image_id"], role=r["role"], attack="loss",
                                           attack_params_hash="p", target_fingerprint="f", seed=0,
                                           score=float(rng.normal(1.0 if r["role"] == "suspect" else 0.0)))
                                      for r in rows]))
    plan = AnalysisPlan(n_permutations=99, n_bootstrap=50, gates=(), strata=("artist",))
    result = analyze(scores, images, plan, recorded_plan_sha256=plan.sha256())
    # one control changed on disk after the audit, one deleted
    changed = images[images.role == "control"].iloc[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed["path"])
    missing = images[images.role == "control"].iloc[1]
    Path(missing["path"]).unlink()

    panel = thumbnail_panel(result, images, features, limit=24, k=3)
    assert panel["n_shown"] == 3 and panel["stratified"]
    artist_of = dict(zip(images.image_id, images.artist))
    notes = {}
    for row in panel["rows"]:
        assert row["b64"] and base64.b64decode(row["b64"]).startswith(PNG_MAGIC)
        assert len(row["controls"]) == 3
        assert all(artist_of[c["image_id"]] == artist_of[row["image_id"]] for c in row["controls"])
        d = [c["distance"] for c in row["controls"]]
        assert d == sorted(d)
        notes.update({c["image_id"]: c["note"] for c in row["controls"]})
    if changed["image_id"] in notes:
        assert "SHA-256 mismatch" in notes[changed["image_id"]]
    if missing["image_id"] in notes:
        assert notes[missing["image_id"]] == "file not available here"
    # a file that changed is never drawn, whichever panel shows it
    from audit.report.thumbnails import thumbnail

    assert thumbnail(changed["path"], changed["image_id"]) == (None, "file differs from the audited one (SHA-256 mismatch)")
    assert thumbnail(missing["path"], missing["image_id"])[0] is None
    html_text = render_html(result, scores, images, [], {}, tmp_path / "r.html", features).read_text(encoding="utf-8")
    assert 'id="thumbnails"' in html_text and html_text.count('alt="suspect ') == 3


@pytest.mark.slow
def test_the_pdf_has_an_outline_of_the_report_sections(tmp_path, audit_inputs):
    pytest.importorskip("weasyprint")
    from audit.report.browser import pdf_outline

    result, scores, images, rejected, metadata = audit_inputs
    written = write_reports(result, scores, images, rejected, metadata, tmp_path)
    if "pdf" not in written:
        pytest.skip("PDF could not be written on this machine (see the PDF failure test)")
    titles = pdf_outline(written["pdf"])
    for t in ("In plain language", "1. Summary", "3. Basis of the comparison", "5. The model audited", "7. Results",
              "8. Validity gates", "9. Alternative explanations", "12. Glossary", "14. Declaration",
              "Appendix: exhibits and reproducibility"):
        assert t in titles


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(tmp_path, audit_inputs):
    from audit.report.browser import check_in_browser, find_browser

    if find_browser() is None:
        pytest.skip("no Chromium here (apt-get install chromium-headless-shell)")
    result, scores, images, rejected, metadata = audit_inputs
    path = render_html(result, scores, images, rejected, metadata, tmp_path / "report.html")
    found = check_in_browser(path, tmp_path / "browser")
    assert found["ok"], found["problems"]
    assert found["images"] >= 4 and not found["missing_sections"]
    # the check can fail: a section the browser never sees is reported
    broken = tmp_path / "broken.html"
    broken.write_text(path.read_text(encoding="utf-8").replace('id="gates"', 'id="gone"'), encoding="utf-8")
    assert check_in_browser(broken, tmp_path / "b2")["missing_sections"] == ["gates"]


def test_the_committed_demo_report_has_no_number_outside_its_records():
    """results/demo is the example report we hand out: every number in its text is in its own records."""
    import json

    from audit.report.numbers import report_numbers, unexplained_numbers

    demo = Path(__file__).resolve().parents[1] / "results" / "demo"
    raw = (demo / "report.html").read_text(encoding="utf-8")
    # report_records.json: what the report derives from the records (basis table, procedure record, exhibits)
    records = [json.loads((demo / f).read_text(encoding="utf-8"))
               for f in ("analysis.json", "run.json", "plan.json", "report_records.json") if (demo / f).is_file()]
    assert len(report_numbers(raw)) > 200
    assert unexplained_numbers(raw, *records) == []


def test_a_p_value_at_the_permutation_floor_is_called_the_floor_in_plain_words():
    scores = make_table(3.0, n_suspect=12, n_control=40, attacks=("loss", "pia"))
    plan = AnalysisPlan(features=("loss", "pia"), crossfit_permutations=19, n_bootstrap=20, gates=("placebo",),
                        n_placebo=20)
    res = analyze(scores, None, plan, recorded_plan_sha256=plan.sha256())
    assert res.verdict.decision == "reject_h0" and res.verdict.p_value == pytest.approx(1 / 20)
    text = " ".join(plain_summary(res))
    assert "the smallest this test can report" in text and "19 random reshufflings" in text
    weaker = make_table(0.6, n_suspect=12, n_control=40, attacks=("loss", "pia"))
    res2 = analyze(weaker, None, replace_plan(plan, crossfit_permutations=999), recorded_plan_sha256=None)
    if res2.verdict.p_value > 1 / 1000:
        assert "smallest this test can report" not in " ".join(plain_summary(res2))


def replace_plan(plan, **kw):
    from dataclasses import replace

    return replace(plan, **kw)
