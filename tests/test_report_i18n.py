"""The report in Chinese and English, and the expert's formalities (issue 22).

Rendered from a small synthetic results record (no model), as tests/test_report.py does; the en+zh pair is written
once per module and shared.
"""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from audit.report import i18n
from audit.report.expert import EXPERT_KEYS, ExpertFileRefused, load_expert, public_key_fingerprint
from audit.report.html import write_reports
from audit.stats import AnalysisPlan, analyze
from audit.types import ScoreTable

HAVE_PDF_TOOLS = bool(shutil.which("pdftotext") and shutil.which("pdffonts"))
HAVE_CJK = i18n.cjk_font_status() is None


def _table(n_suspect=12, n_control=30, n_member=15, n_nonmember=40) -> ScoreTable:
    rng = np.random.default_rng(0)
    sizes = {"suspect": (n_suspect, 1.0), "control": (n_control, 0.0), "member": (n_member, 2.0),
             "nonmember": (n_nonmember, 0.0)}
    rows = [dict(image_id=f"{role}-{i:05d}".ljust(64, "0"), role=role, attack=attack, attack_params_hash="p0",
                 target_fingerprint="fp0", seed=0, score=float(rng.normal(mu, 1.0)))
            for attack in ("loss", "pia") for role, (n, mu) in sizes.items() for i in range(n)]
    return ScoreTable(pd.DataFrame(rows))


def _inputs(config: dict):
    scores = _table()
    ids = scores.df.drop_duplicates("image_id")[["image_id", "role"]]
    images = ids.assign(path=[f"works/{r}/{i:03d}.png" for i, r in enumerate(ids["role"])],
                        caption=[f"painting {i}" for i in range(len(ids))], artist="Artist A", created="2021-05-01",
                        width=512, height=512, format="PNG")
    plan = AnalysisPlan(n_permutations=199, n_bootstrap=100, gates=("placebo", "positive_control", "power"))
    result = analyze(scores, images, plan, recorded_plan_sha256=plan.sha256())
    metadata = {"command": "audit-run", "target_fingerprint": "fp0", "seed": 0, "timestamp": "2025-01-01T00:00:00Z",
                "started_utc": "2025-01-01T00:00:00Z", "package_versions": {"audit": "0.1.0"},
                "target": {"fingerprint": "f" * 64, "source": "/models/tool", "files": {"unet/w.safetensors": "a" * 64}},
                "config_yaml": yaml.safe_dump(config)}
    return result, scores, images, [], metadata


def _expert_file(tmp: Path, **over) -> Path:
    values = {"name": "Dr. Wang <Li>", "qualifications": "PhD (statistics), 12 years of forensic analysis",
              "instructing_party": "Counsel for the claimants", "appointment": "party",
              "question": "Were any of the 12 suspect works in the training data?",
              "assumptions": ["The model files are those of the deployed tool."],
              "materials": ["Screenshots of the tool's output, 2024-03-01"], **over}
    p = tmp / "expert.yaml"
    p.write_text(yaml.safe_dump(values, allow_unicode=True), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def bilingual(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bilingual")
    cfg = {"report": {"language": "en+zh", "jurisdiction": "prc_civil"}, "expert": {"file": str(_expert_file(tmp))}}
    result, scores, images, rejected, metadata = _inputs(cfg)
    out = tmp / "run"
    written = write_reports(result, scores, images, rejected, metadata, out, formats=["html", "pdf"])
    return result, metadata, out, written


def _text(path: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8")))


def test_language_switch_writes_both_reports_each_bound_to_its_analysis(bilingual):
    result, _, out, written = bilingual
    assert written["html"] == out / "report.html" and written["html.zh"] == out / "report.zh.html"
    en, zh = (out / "report.html").read_text(encoding="utf-8"), (out / "report.zh.html").read_text(encoding="utf-8")
    assert '<html lang="en">' in en and '<html lang="zh-Hans">' in zh
    assert "Training-data membership audit" in en and "训练数据成员推断审查报告" in zh
    assert "训练数据成员推断审查报告" not in en
    # both state the verdict of the analysis record (audit-verify's binding), the Chinese one quoting it as recorded
    for raw in (en, zh):
        assert result.verdict.sentence in html.unescape(raw)
    assert "数据与“没有任何涉案作品属于训练数据”" in zh
    # the Chinese headings, captions and page-1 prose come from the catalogue
    for s in ("1. 摘要", "有效性检验及其发现。", "通俗说明", "术语表", "专家与委托事项"):
        assert s in zh
    with pytest.raises(Exception, match="report.language"):
        write_reports(*_inputs({})[:5], out / "x", formats=["html"], language="fr")


def test_a_default_report_is_english_only(tmp_path):
    written = write_reports(*_inputs({}), tmp_path, formats=["html"])
    assert set(written) == {"html"} and not (tmp_path / "report.zh.html").exists()
    assert '<html lang="en">' in (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.skipif(not HAVE_PDF_TOOLS, reason="pdftotext/pdffonts (poppler-utils) not installed")
@pytest.mark.skipif(not HAVE_CJK, reason="no CJK font (apt-get install fonts-noto-cjk)")
def test_the_chinese_pdf_embeds_a_cjk_font_and_its_text_extracts(bilingual):
    _, _, out, written = bilingual
    pdf = written["pdf.zh"]
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
    cjk = [ln for ln in fonts.splitlines() if "CJK" in ln]
    assert cjk, fonts
    assert all(" yes " in ln for ln in cjk), fonts  # embedded (emb column)
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = "".join(text.split())
    for s in ("训练数据成员推断审查报告", "涉案作品", "对照作品", "有效性检验", "本人承诺"):
        assert s in flat, s
    assert "\ufffd" not in text and "\u25a1" not in text  # no replacement characters, no empty boxes


def test_the_number_scan_passes_for_both_languages(bilingual):
    import json

    from audit.report.numbers import report_numbers, unexplained_numbers

    result, metadata, out, _ = bilingual
    derived = json.loads((out / "report_records.json").read_text())
    for name in ("report.html", "report.zh.html"):
        raw = (out / name).read_text(encoding="utf-8")
        assert len(report_numbers(raw)) > 20
        assert unexplained_numbers(raw, result.to_dict(), metadata, derived) == [], name
    # numbers glued to Chinese characters are scanned, not skipped
    assert [n for n, _ in report_numbers("<p>共12件作品，p = 0.05。</p>")] == ["12", "0.05"]


#: English words outside these are counted: quoted technical terms in brackets, code, times, the manifest's own
#: text, the quoted record sentence (lang="en") and what is marked as not yet translated below
_ENGLISH_RUN = re.compile(r"[A-Za-z][A-Za-z'’\-]*(?:[ ,;:]+[A-Za-z][A-Za-z'’\-]*){3,}")


def _visible_outside_quotes(raw: str) -> str:
    raw = re.sub(r"<(style|script|code|pre|time|cite|title)\b.*?</\1>", " ", raw, flags=re.S)
    raw = re.sub(r'<(?!html\b)(\w+)[^>]*\blang="en"[^>]*>.*?</\1>', " ", raw, flags=re.S)  # quoted records
    raw = re.sub(r'<td class="(path|caption)[^"]*"[^>]*>.*?</td>', " ", raw, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", raw))
    return re.sub(r"（[^（）]*）|\([^()]*\)", " ", text)  # bracketed technical terms and identifiers


def english_left(raw: str) -> list[str]:
    return [m.group(0) for m in _ENGLISH_RUN.finditer(_visible_outside_quotes(raw))]


def test_the_chinese_report_counts_the_english_it_still_holds(bilingual, tmp_path):
    _, _, out, _ = bilingual
    zh = (out / "report.zh.html").read_text(encoding="utf-8")
    en = (out / "report.html").read_text(encoding="utf-8")
    given = yaml.safe_load(_expert_file(tmp_path).read_text(encoding="utf-8"))  # the expert's own words, as given
    for v in [x for x in given.values() if isinstance(x, str)] + [y for x in given.values() if isinstance(x, list)
                                                                  for y in x]:
        zh, en = zh.replace(html.escape(v, quote=False), " "), en.replace(html.escape(v, quote=False), " ")
    left, total = english_left(zh), english_left(en)
    # the parts the catalogue covers are free of English sentences
    for part in (r'<h[123][^>]*>.*?</h[123]>', r"<caption>.*?</caption>", r"<th[^>]*>.*?</th>",
                 r'<section id="plain".*?</section>', r'<dl class="glossary".*?</dl>',
                 r'<div class="declaration".*?</div>\s*</div>', r'<nav class="toc">.*?</nav>',
                 r'<section id="expert-front".*?</section>'):
        for chunk in re.findall(part, zh, flags=re.S):
            assert english_left(chunk) == [], (part, english_left(chunk))
    # what remains (gate findings, notes, alternative explanations, methods cells built from the records) is
    # counted; this bound is lowered as more of it moves into the catalogue
    share = len(left) / max(1, len(total))
    print(f"English runs left in the Chinese report: {len(left)} of {len(total)} in the English one ({share:.0%})")
    assert share < 0.5, left[:40]


def test_the_expert_file_fields_appear_in_the_declaration(bilingual, tmp_path):
    _, _, out, _ = bilingual
    zh = (out / "report.zh.html").read_text(encoding="utf-8")
    en = (out / "report.html").read_text(encoding="utf-8")
    for raw in (en, zh):
        decl = raw.split('id="expert-declaration"', 1)[1]
        assert "Dr. Wang &lt;Li&gt;" in decl and "<Li>" not in raw  # escaped, never markup
        assert "Counsel for the claimants" in decl and "PhD (statistics)" in decl
        front = raw.split('id="expert-front"', 1)[1].split("</section>", 1)[0]
        assert "Were any of the 12 suspect works in the training data?" in front
        assert "The model files are those of the deployed tool." in front
        materials = raw.split('id="materials"', 1)[1].split("</section>", 1)[0]
        assert "Screenshots of the tool" in materials and "unet/w.safetensors" in materials and "a" * 64 in materials
        assert 'id="unsigned-notice"' not in raw
    assert "本人承诺" in zh and "第三十六条" in zh  # prc_civil wording
    assert "I undertake that I carried out this analysis" in en
    # the exhibit is sealed with the rest and quoted by its SHA-256
    assert (out / "expert.yaml").is_file()
    import hashlib
    assert hashlib.sha256((out / "expert.yaml").read_bytes()).hexdigest() in en
    # a hash is never said to show a time order; what the records show about the order is stated as such
    decl = en.split('id="expert-declaration"', 1)[1]
    assert "SHA-256 shows" not in decl and "The records do not show that the analysis plan preceded the scores" in decl


def test_us_federal_wording_lists_the_rule_26_elements(tmp_path):
    cfg = {"report": {"jurisdiction": "us_federal"},
           "expert": {"file": str(_expert_file(tmp_path, compensation="USD 400 per hour"))}}
    write_reports(*_inputs(cfg), tmp_path / "r", formats=["html"])
    raw = html.unescape((tmp_path / "r" / "report.html").read_text(encoding="utf-8"))
    assert "26(a)(2)(B)" in raw and "penalty of perjury" in raw and "USD 400 per hour" in raw
    assert "not stated in the expert file" in raw  # publications and prior testimony were not given
    assert "duty in giving this evidence is to the court" not in raw  # that is the neutral / UK-style wording


@pytest.mark.skipif(not HAVE_PDF_TOOLS, reason="pdftotext (poppler-utils) not installed")
def test_an_unsigned_report_says_so_on_page_one(tmp_path):
    written = write_reports(*_inputs({}), tmp_path, formats=["html", "pdf"])
    raw = written["html"].read_text(encoding="utf-8")
    assert raw.index('id="unsigned-notice"') < raw.index('id="plain"')
    page1 = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(written["pdf"]), "-"], capture_output=True,
                           text=True, check=True).stdout
    assert "Unsigned report." in page1


def test_bad_expert_files_are_refused_in_one_line(tmp_path):
    def refused(content, match: str) -> None:
        p = tmp_path / "e.yaml"
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        with pytest.raises(ExpertFileRefused, match=match) as e:
            load_expert({"expert": {"file": str(p)}})
        assert "\n" not in str(e.value)

    refused("nmae: Dr X\n", "unknown expert key 'nmae'")
    refused("name: " + "x" * 201 + "\n", "longer than 200")
    refused("- a\n- b\n", "must be a mapping")
    refused("name: [a, b]\n", "name must be text")
    refused("assumptions:\n" + "".join(f"  - a{i}\n" for i in range(51)), "more than 50")
    refused("date: 01/02/2025\n", "YYYY-MM-DD")
    refused("appointment: witness\n", "one of party, court")
    refused(b"name: \xff\xfe\n", "not UTF-8")
    refused("name: [unclosed\n", "not valid YAML")
    refused("name: x\n" + "#" * 300_000, "larger than")
    key = tmp_path / "k.pub"
    key.write_text("not a key\n")
    refused(f"public_key: {key}\n", "not a PEM public key")
    with pytest.raises(FileNotFoundError):
        load_expert({"expert": {"file": str(tmp_path / "missing.yaml")}})
    with pytest.raises(Exception, match="report.jurisdiction"):
        load_expert({"report": {"jurisdiction": "uk"}})
    assert set(EXPERT_KEYS) >= {"name", "qualifications", "instructing_party", "question", "assumptions", "materials"}


def test_the_signature_block_names_the_public_key_fingerprint(tmp_path):
    pytest.importorskip("cryptography")
    from audit.verify import keygen

    pub = keygen(tmp_path / "expert.pem")
    fp = public_key_fingerprint(pub)
    assert re.fullmatch(r"SHA256:[0-9a-f]{64}", fp)
    cfg = {"expert": {"file": str(_expert_file(tmp_path, public_key=str(pub)))}}
    write_reports(*_inputs(cfg), tmp_path / "r", formats=["html"])
    raw = html.unescape((tmp_path / "r" / "report.html").read_text(encoding="utf-8"))
    assert fp in raw and "--sign" in raw and "--public-key" in raw


def test_the_catalogue_is_complete_and_uses_the_standard_terms():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cat", Path(__file__).parents[1] / "scripts" / "i18n_catalogue.py")
    cat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cat)
    assert cat.main(["--check"]) == 0  # every message of the code and templates has a translation
    messages = i18n.catalogue_messages("zh")
    placeholder = re.compile(r"%\(\w+\)s")
    for en, zh in messages.items():
        assert sorted(placeholder.findall(en)) == sorted(placeholder.findall(zh)), en
        assert sorted(re.findall(r"</?\w+", en)) == sorted(re.findall(r"</?\w+", zh)), en  # the same markup
    terms = {t.en.lower(): t.zh for t in i18n.TERMS}
    for en_term in ("control work", "suspect work", "training data", "permutation test", "confidence bound",
                    "exchangeable", "validity gate", "blind baseline"):
        uses = [(en, zh) for en, zh in messages.items() if en_term in en.lower()]
        assert uses, en_term
        assert all(terms[en_term] in zh for en, zh in uses), [en for en, zh in uses if terms[en_term] not in zh]


def test_formatters_per_language():
    assert i18n.format_p(0.050004, 0.05, lang="zh") == i18n.format_p(0.050004, 0.05, lang="en") == "0.050004"
    assert i18n.format_date("2025-03-01", lang="zh") == "2025年3月1日"
    assert i18n.format_date("2025-03-01T08:00:00Z", lang="zh") == "2025年3月1日 08:00:00 UTC"
    assert i18n.format_date("2025-03-01", lang="en") == "2025-03-01"
    assert i18n.format_integer(12345, lang="zh") == "12,345"
    assert i18n.format_number(float("nan"), lang="zh") == "–"
    with i18n.use("zh"):
        assert i18n.chance_words(0.025) == "约 40 次中有 1 次" and i18n.chance_words(1e-7) == "不到千万分之一"
    with i18n.use("en"):
        assert i18n.chance_words(0.025) == "about 1 in 40"
    assert i18n.localized_name("report.html", "zh", first=False) == "report.zh.html"
    assert i18n.localized_name("report.html", "zh", first=True) == "report.html"


def test_language_jurisdiction_and_the_expert_file_are_checked_before_the_model_loads(tmp_path):
    import os

    from hydra import compose, initialize_config_dir

    from audit.prepare import validate_config
    from audit.safety import ConfigRefused

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Dr X\nsalary: 1\n", encoding="utf-8")
    configs = os.path.join(os.path.dirname(__file__), "..", "configs")
    with initialize_config_dir(config_dir=os.path.abspath(configs), version_base="1.3"):
        validate_config(compose("audit", overrides=["report.language=en+zh", "report.jurisdiction=prc_civil",
                                                    "expert=example"]))
        for override, match in (("report.language=fr", "report.language"), ("report.jurisdiction=uk",
                                                                              "report.jurisdiction"),
                                (f"expert.file={bad}", "unknown expert key 'salary'")):
            with pytest.raises(ConfigRefused, match=match):
                validate_config(compose("audit", overrides=[override]))
