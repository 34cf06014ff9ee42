"""The report's languages: gettext catalogues (Babel) for its sentences, one formatter per language for its numbers.

English is the source language: every message id is the English sentence, so an English report needs no catalogue
(:class:`gettext.NullTranslations`). Simplified Chinese comes from ``locale/zh_Hans/LC_MESSAGES/messages.po``; a
compiled ``messages.mo`` beside it is used when it is at least as new as the ``.po``, otherwise the ``.po`` is
compiled in memory with Babel (so an installed wheel, which ships the ``.po``, needs no build step).

Templates get the catalogue through Jinja2's ``jinja2.ext.i18n`` extension (new-style ``{{ _("... %(n)s", n=x) }}``,
whose arguments are escaped); Python prose uses :func:`_` / :func:`ngettext` under :func:`use`, with the same
``%(name)s`` placeholders, so one ``.po`` file serves both.

Numbers: the digits are always produced by Python's own formatting (the same rounding as the English report and
as :mod:`audit.report.numbers`' scan of it); the locale contributes its symbols (decimal sign, grouping sign,
percent sign) from Babel's CLDR data, and dates are written in the locale's long form. For ``zh_Hans_CN`` the
symbols are those of English, so the number scan checks both languages with one set of forms.

The court glossary (:data:`TERMS`) fixes the Chinese term used for each technical concept; the report prints it
with the English term in brackets where a court needs it, and a test checks the catalogue uses these terms.
"""
from __future__ import annotations

import contextlib
import gettext as _gettext
import io
import math
import re
import shutil
import subprocess
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

__all__ = ["LANGUAGES", "REPORT_LANGUAGES", "TERMS", "CJK_FONT_FAMILIES", "FONT_STACK", "check_language",
           "check_jurisdiction", "report_languages", "localized_name", "translations", "install", "use", "current",
           "_", "ngettext", "format_number", "format_p", "format_percent", "format_integer", "format_date",
           "chance_words", "cjk_font_status", "CJK_FONT_PACKAGE", "catalogue_messages", "dynamic_messages"]

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"

#: report language code → (Babel locale for numbers and dates, catalogue folder or None, HTML ``lang``)
LANGUAGES: dict[str, tuple[str, str | None, str]] = {
    "en": ("en_US", None, "en"),
    "zh": ("zh_Hans_CN", "zh_Hans", "zh-Hans"),
}
#: ``report.language`` → the reports written (the first one keeps the configured file names)
REPORT_LANGUAGES: dict[str, tuple[str, ...]] = {"en": ("en",), "zh": ("zh",), "en+zh": ("en", "zh")}
JURISDICTIONS = ("neutral", "us_federal", "prc_civil")

#: The Debian package that provides the CJK glyphs WeasyPrint embeds in the PDF, and the families the CSS names.
CJK_FONT_PACKAGE = "fonts-noto-cjk"
CJK_FONT_FAMILIES = ("Noto Serif CJK SC", "Noto Sans CJK SC")
FONT_STACK = {
    "serif": '"DejaVu Serif", "Noto Serif CJK SC", "Noto Sans CJK SC", Georgia, "Times New Roman", serif',
    "sans": '"DejaVu Sans", "Noto Sans CJK SC", Helvetica, Arial, sans-serif',
    "mono": '"DejaVu Sans Mono", "Noto Sans Mono CJK SC", "Noto Sans CJK SC", Menlo, Consolas, monospace',
}

_current: ContextVar[str] = ContextVar("report_language", default="en")


def check_language(value: Any) -> tuple[str, ...]:
    """``report.language`` → the languages to write, or a one-line ``ConfigRefused``."""
    from audit.errors import ConfigRefused

    if value is None:
        return REPORT_LANGUAGES["en"]
    if not isinstance(value, str) or value not in REPORT_LANGUAGES:
        raise ConfigRefused(f"report.language must be one of {', '.join(REPORT_LANGUAGES)}, got {value!r}")
    return REPORT_LANGUAGES[value]


def check_jurisdiction(value: Any) -> str:
    """``report.jurisdiction`` → one of :data:`JURISDICTIONS` (``neutral`` when unset), or ``ConfigRefused``."""
    from audit.errors import ConfigRefused

    if value is None:
        return "neutral"
    if not isinstance(value, str) or value not in JURISDICTIONS:
        raise ConfigRefused(f"report.jurisdiction must be one of {', '.join(JURISDICTIONS)}, got {value!r}")
    return value


report_languages = check_language


def localized_name(filename: str, lang: str, first: bool) -> str:
    """The file name of the report in ``lang``: the configured name for the first language, else ``name.<lang>.ext``
    (``report.html`` → ``report.zh.html``)."""
    if first:
        return filename
    stem, dot, ext = filename.rpartition(".")
    return f"{stem}.{lang}.{ext}" if dot else f"{filename}.{lang}"


# ---------------------------------------------------------------------------------------------- catalogues
def _po_path(lang: str) -> Path | None:
    folder = LANGUAGES[lang][1]
    return LOCALE_DIR / folder / "LC_MESSAGES" / f"{DOMAIN}.po" if folder else None


@lru_cache(maxsize=None)
def translations(lang: str) -> _gettext.NullTranslations:
    """The gettext catalogue of ``lang`` (English: none). A compiled ``.mo`` is used when it is not older than its
    ``.po``; otherwise the ``.po`` is compiled in memory with Babel."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown report language {lang!r}; choose from {', '.join(LANGUAGES)}")
    po = _po_path(lang)
    if po is None:
        return _gettext.NullTranslations()
    from babel.support import Translations

    mo = po.with_suffix(".mo")
    if mo.is_file() and (not po.is_file() or mo.stat().st_mtime >= po.stat().st_mtime):
        with open(mo, "rb") as f:
            return Translations(f, domain=DOMAIN)
    if not po.is_file():
        raise FileNotFoundError(f"the {lang} message catalogue is missing: {po}")
    return Translations(io.BytesIO(_compile(po)), domain=DOMAIN)


def _compile(po: Path) -> bytes:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with open(po, "rb") as f:
        catalog = read_po(f, locale=po.parent.parent.name, ignore_obsolete=True)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    return buf.getvalue()


def catalogue_messages(lang: str = "zh") -> dict[str, str]:
    """``{English message id: translation}`` of the catalogue (fuzzy and untranslated entries left out)."""
    from babel.messages.pofile import read_po

    po = _po_path(lang)
    if po is None:
        return {}
    with open(po, "rb") as f:
        catalog = read_po(f, locale=po.parent.parent.name, ignore_obsolete=True)
    return {str(m.id): str(m.string) for m in catalog if m.id and m.string and not m.fuzzy}


def install(env: Any, lang: str) -> None:
    """Give a Jinja2 environment the i18n extension with ``lang``'s catalogue, the per-language filters
    (``num``, ``pval``, ``pct``, ``count``, ``date``) and ``lang`` / ``html_lang`` globals."""
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_translations(translations(lang), newstyle=True)
    # fixed texts translated at render time (glossary terms, gate titles): a plain lookup, escaped on output
    env.filters["tr"] = lambda text: translations(lang).gettext(str(text)) if text else text
    env.filters["num"] = lambda x, digits=3: format_number(x, digits, lang=lang)
    env.filters["pval"] = lambda p, alpha=None: format_p(p, alpha, lang=lang)
    env.filters["pct"] = lambda f, digits=None: format_percent(f, digits, lang=lang)
    env.filters["count"] = lambda n: format_integer(n, lang=lang)  # (not "int": Jinja's own int filter stays)
    env.filters["date"] = lambda d: format_date(d, lang=lang)
    env.globals.update(lang=lang, html_lang=LANGUAGES[lang][2], font_stack=FONT_STACK)


@contextlib.contextmanager
def use(lang: str) -> Iterator[str]:
    """Within the block, :func:`_` and the formatters without ``lang=`` speak ``lang``."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown report language {lang!r}; choose from {', '.join(LANGUAGES)}")
    token = _current.set(lang)
    try:
        yield lang
    finally:
        _current.reset(token)


def current() -> str:
    return _current.get()


def _(message: str, **values: Any) -> str:
    """``message`` in the current language, with ``%(name)s`` placeholders filled from ``values``."""
    text = translations(_current.get()).gettext(message)
    return text % values if values else text


def ngettext(singular: str, plural: str, n: int, **values: Any) -> str:
    text = translations(_current.get()).ngettext(singular, plural, n)
    return text % {"num": n, **values}


# ---------------------------------------------------------------------------------------------- numbers and dates
@lru_cache(maxsize=None)
def _symbols(lang: str) -> tuple[str, str, str]:
    """(decimal sign, grouping sign, percent sign) of ``lang``'s Babel locale."""
    from babel import Locale

    symbols = Locale.parse(LANGUAGES[lang][0]).number_symbols["latn"]
    return symbols["decimal"], symbols["group"], symbols["percentSign"]


def _localize(text: str, lang: str) -> str:
    dec, grp, pct = _symbols(lang)
    if (dec, grp, pct) == (".", ",", "%"):
        return text
    return text.translate(str.maketrans({".": dec, ",": grp, "%": pct}))


def _lang(lang: str | None) -> str:
    return lang or _current.get()


def format_number(x: Any, digits: int = 3, *, lang: str | None = None) -> str:
    """A measurement with ``digits`` decimals (``–`` when missing or not finite)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return _localize(f"{x:.{digits}f}", _lang(lang))


def format_integer(n: Any, *, lang: str | None = None) -> str:
    """A count with the locale's grouping (``1,234``)."""
    if n is None:
        return "–"
    return _localize(f"{int(n):,}", _lang(lang))


def format_p(p: float | None, alpha: float | None = None, *, lang: str | None = None) -> str:
    """A p-value as :func:`audit.stats.core.format_p` writes it (never rounded across α), in the locale's symbols."""
    from audit.stats.core import format_p as _format_p

    return _localize(_format_p(p, alpha), _lang(lang))


def format_percent(f: float, digits: int | None = None, *, lang: str | None = None) -> str:
    """A share as a percentage: ``95%`` (``g`` format), or with ``digits`` decimals (``4.5%``)."""
    text = f"{f * 100:g}%" if digits is None else f"{f * 100:.{digits}f}%"
    return _localize(text, _lang(lang))


_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?(Z|[+-]\d{2}:?\d{2})?)?$")


def format_date(value: Any, *, lang: str | None = None) -> str:
    """An ISO date or UTC time in the language's long form (English keeps ISO 8601, which is unambiguous);
    anything that is not an ISO date is returned as given."""
    lang = _lang(lang)
    if value is None:
        return "–"
    text = value.isoformat() if isinstance(value, (date, datetime)) else str(value).strip()
    m = _ISO.match(text)
    if lang == "en" or not m:
        return text
    from babel.dates import format_date as _bd

    y, mo, d = (int(m.group(i)) for i in (1, 2, 3))
    try:
        day = _bd(date(y, mo, d), format="long", locale=LANGUAGES[lang][0])
    except ValueError:
        return text
    if m.group(4) is None:
        return day
    clock = f"{m.group(4)}:{m.group(5)}" + (f":{m.group(6)}" if m.group(6) else "")
    zone = m.group(7)
    zone = " UTC" if zone in ("Z", "+00:00", "+0000") else (f" UTC{zone}" if zone else "")
    return f"{day} {clock}{zone}"


#: "less than 1 in ten thousand" … by the power of ten (catalogue messages, so each reads naturally in Chinese)
_LESS_THAN = {4: "less than 1 in ten thousand", 5: "less than 1 in a hundred thousand",
              6: "less than 1 in a million", 7: "less than 1 in ten million", 8: "less than 1 in a hundred million",
              9: "less than 1 in a billion", 10: "less than 1 in ten billion", 11: "less than 1 in a hundred billion",
              12: "less than 1 in a trillion"}


def chance_words(p: float | None) -> str:
    """A p-value in words for a lay reader, in the current language ("about 1 in 40" / "约 40 次中有 1 次")."""
    from audit.report.html import chance_number

    if p is None or not math.isfinite(p):
        return ""
    if p >= 0.5:
        return _("about even odds or more")
    if p < 1e-4:
        k = min(int(math.floor(-math.log10(p))) if p > 0 else 12, 12)
        return _(_LESS_THAN[k])
    return _("about 1 in %(n)s", n=format_integer(chance_number(p)))


# ---------------------------------------------------------------------------------------------- fonts
def cjk_font_status() -> str | None:
    """None when fontconfig finds a CJK font WeasyPrint can embed, else the one-line reason and the remedy."""
    fc = shutil.which("fc-list")
    if fc is None:
        return (f"fontconfig (fc-list) not found, so no CJK font can be located; install {CJK_FONT_PACKAGE} "
                f"(apt-get install -y fontconfig {CJK_FONT_PACKAGE})")
    try:
        out = subprocess.run([fc, ":lang=zh-cn", "family"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"fc-list failed ({e}); install {CJK_FONT_PACKAGE}"
    if any(f in out for f in CJK_FONT_FAMILIES):
        return None
    return (f"no Simplified-Chinese font is installed (fontconfig finds none of {', '.join(CJK_FONT_FAMILIES)}): the "
            f"Chinese PDF would print empty boxes; apt-get install -y {CJK_FONT_PACKAGE}")


# ---------------------------------------------------------------------------------------------- court glossary
@dataclass(frozen=True)
class Term:
    """A technical concept: the English term, the standard Simplified-Chinese term the report uses for it, and
    whether the English term is kept in brackets on its first use in a Chinese report."""

    en: str
    zh: str
    bracket: bool = True

    @property
    def zh_with_en(self) -> str:
        return f"{self.zh}（{self.en}）" if self.bracket else self.zh


#: The standard terms of the field in Simplified Chinese, used throughout the catalogue (checked by a test).
TERMS: tuple[Term, ...] = (
    Term("membership inference", "成员推断"),
    Term("training data", "训练数据"),
    Term("diffusion model", "扩散模型"),
    Term("suspect work", "涉案作品"),
    Term("control work", "对照作品"),
    Term("known member", "已知训练作品"),
    Term("known non-member", "已知非训练作品"),
    Term("membership score", "成员得分"),
    Term("null hypothesis", "原假设"),
    Term("p-value", "p值", bracket=False),
    Term("significance level", "显著性水平"),
    Term("conformal p-value", "共形p值"),
    Term("Holm correction", "Holm校正", bracket=False),
    Term("false discovery rate", "错误发现率"),
    Term("family-wise error rate", "族错误率"),
    Term("closed testing", "闭合检验"),
    Term("confidence bound", "置信下限"),
    Term("confidence interval", "置信区间"),
    Term("AUC", "曲线下面积"),
    Term("true-positive rate", "真阳性率"),
    Term("false-positive rate", "假阳性率"),
    Term("Mann–Whitney U test", "曼-惠特尼U检验"),
    Term("permutation test", "置换检验"),
    Term("cross-fitting", "交叉拟合"),
    Term("stratum", "分层"),
    Term("exchangeable", "可交换"),
    Term("validity gate", "有效性检验"),
    Term("blind baseline", "盲基线"),
    Term("placebo split", "安慰剂拆分"),
    Term("positive control", "阳性对照"),
    Term("negative control", "阴性对照"),
    Term("power", "检验效能"),
    Term("exploratory", "探索性"),
    Term("confirmatory", "验证性"),
    Term("analysis plan", "分析计划"),
    Term("reference model", "参照模型"),
    Term("fine-tune", "微调"),
    Term("data cutoff", "训练数据截止日期"),
    Term("SHA-256", "SHA-256哈希值", bracket=False),
    Term("fingerprint", "指纹"),
    Term("seal", "封存清单"),
)


def dynamic_messages() -> list[tuple[str, str]]:
    """Messages the templates translate at render time from fixed texts (``{{ _(term) }}``), with where they come
    from: the glossary, the gate titles, the studies and critiques, the less-than words of :func:`chance_words`.
    The catalogue tool adds them to the extracted ones; a test checks that each has a translation."""
    from audit.report import texts
    from audit.stats.gates import GATE_REGISTRY

    out: list[tuple[str, str]] = []
    for term, meaning in texts.GLOSSARY:
        out += [("audit/report/texts.py:GLOSSARY", term), ("audit/report/texts.py:GLOSSARY", meaning)]
    for name, spec in GATE_REGISTRY.items():
        out.append((f"audit/stats/gates/{name}.py", spec.title))
    from audit.stats.plan import TEST_LABELS, test_label

    for name in TEST_LABELS:  # the set-level test as the verdict line and the methods table name it
        out += [(f"audit/stats/settests/{name}.py", test_label(name, alt)) for alt in ("greater", "two-sided")]
    out.append(("audit/report/texts.py:STUDIES_SHORT", texts.STUDIES_SHORT))
    out.append(("audit/report/texts.py:CRITIQUES", texts.CRITIQUES))
    out += [("audit/report/i18n.py:_LESS_THAN", m) for m in _LESS_THAN.values()]
    out.append(("audit/stats/analysis.py:decision_rates.measured_on", "this model and these controls"))
    report = Path(__file__).parent
    out += [("audit/report/html.py:limitations", m) for m in _static_strings(report / "html.py", "limitations")]
    out += [("audit/report/texts.py:alternative_explanations", m)
            for m in _static_strings(report / "texts.py", "alternative_explanations", keys=("explanation", "status"))]
    return out


def _static_strings(path: Path, function: str, keys: tuple[str, ...] | None = None) -> list[str]:
    """The fixed sentences of ``function`` in ``path`` that the template translates at render time (``|tr``): string
    constants in its list literals (``keys=None``) or the values of ``keys`` in its dict literals (and the constant
    branches of a conditional value). Sentences built with values (f-strings) are not among them and stay in the
    source language; the coverage test counts them."""
    import ast

    if not path.is_file():
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if fn is None:
        return []

    def constants(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return constants(node.body) + constants(node.orelse)
        return []

    found: list[str] = []
    for node in ast.walk(fn):
        if keys is None and isinstance(node, ast.List):
            found += [v for e in node.elts for v in constants(e)]
        elif keys is not None and isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value in keys:
                    found += constants(v)
    return list(dict.fromkeys(x for x in found if x.strip()))
