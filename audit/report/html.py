"""The audit report: one self-contained HTML file (Jinja2, autoescaped; figures inlined as base64 PNG; no
external resources) and the same document as PDF (WeasyPrint).

Formatting lives here as Jinja filters so the template stays declarative and every number in the report
is rounded the same way. The plain-language summary and the limitations are written here too, from the
analysis result, so tests can check them without parsing HTML.
"""
from __future__ import annotations

import inspect
import logging
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from audit.report.texts import (BIBLIOGRAPHY, CRITIQUES, GLOSSARY, STUDIES, STUDIES_SHORT, alternative_explanations,
                                 declaration,
                                 expert_from_config, procedure_page_one, procedure_sentences, report_provenance,
                                 uncommitted_page_one)
from audit.report.figures import gate_png, histogram_png, pvalue_png, roc_png, to_base64
from audit.stats.analysis import AuditResult, format_p, test_label
from audit.stats.blind import FEATURE_DESCRIPTIONS
from audit.types import ROLES, ScoreTable

__all__ = ["render_html", "render_pdf", "write_reports", "plain_summary", "limitations", "PdfUnavailable"]

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).parent / "templates"

PDF_LIBRARIES = "libpango-1.0-0 libpangoft2-1.0-0"  # Debian packages WeasyPrint needs
_PDF_NOTE_MARK = "<!-- pdf-note -->"


class PdfUnavailable(RuntimeError):
    """The PDF could not be written (WeasyPrint or its system libraries missing, or rendering failed)."""


def _fmt_num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _fmt_pct(f: float) -> str:
    return f"{f * 100:g}%"


_ISO_TIME = re.compile(r"\b\d{4}-\d{2}(?:-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?)?\b")
_HEX = re.compile(r"\b[0-9a-f]{16,64}\b")


def _marked(text: Any) -> Markup:
    """Escaped text with times in ``<time>``, hashes and `quoted names` in ``<code>`` (which the number scan skips:
    they are identifiers, not measurements)."""
    t = str(escape(str(text)))
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = _ISO_TIME.sub(lambda m: f"<time>{m.group(0)}</time>", t)
    t = _HEX.sub(lambda m: f"<code>{m.group(0)}</code>", t)
    return Markup(t)


_LONG_RUN = re.compile(r"(\S{80})(?=\S)")  # longer than a SHA-256 (64), which stays whole


def _breakable(value: Any) -> Any:
    """Untrusted text as printed: a run of more than 80 characters without a space gets a zero-width break
    opportunity every 80, so the PDF layout never has to search one for a break (with ``overflow-wrap: anywhere`` a
    2,000-character unbroken caption took WeasyPrint 52 s, 100,000 over 10 minutes). Markup, numbers and
    embedded images pass unchanged."""
    if type(value) is not str or len(value) <= 80 or value.startswith(("data:", "iVBORw0KGgo", "/9j/")):
        return value
    return _LONG_RUN.sub("\\1\u200b", value)


def _env(lang: str = "en") -> Environment:
    # autoescape=True, not select_autoescape(): the template is "*.html.j2", which select_autoescape's
    # extension check would not recognise as HTML, and captions/paths are untrusted text.
    env = Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        finalize=_breakable,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["pval"] = format_p
    env.filters["pct"] = _fmt_pct
    env.filters["marked"] = _marked
    env.filters["basename"] = lambda v: Path(str(v)).name if v else ""
    env.filters["sig"] = lambda v: f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else str(v)
    env.globals["zip"] = zip
    from audit.report.i18n import install

    install(env, lang)  # issue 22: the catalogue of `lang` (jinja2.ext.i18n) and its number formatters
    return env


def _image_lookup(images: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    if images is None or images.empty:
        return {}
    return {str(r["image_id"]): r for r in images.to_dict(orient="records")}


# ---------------------------------------------------------------------------------------------- prose
_POWERS_OF_TEN = {4: "ten thousand", 5: "a hundred thousand", 6: "a million", 7: "ten million",
                  8: "a hundred million", 9: "a billion", 10: "ten billion", 11: "a hundred billion",
                  12: "a trillion"}


def chance_number(p: float | None) -> int | None:
    """N of "about 1 in N" for 1e-4 ≤ p < 0.5 (two significant figures from 100 on), else None."""
    if p is None or not math.isfinite(p) or p >= 0.5 or p < 1e-4 or p <= 0:
        return None
    n = 1.0 / p
    n = round(n, -int(math.floor(math.log10(n))) + 1) if n >= 100 else round(n)
    return int(n)


def chance_words(p: float | None) -> str:
    """A p-value in words for a lay reader: "about 1 in 40", "less than 1 in a million"."""
    if p is None or not math.isfinite(p):
        return ""
    if p >= 0.5:
        return "about even odds or more"
    if p < 1e-4:
        k = min(int(math.floor(-math.log10(p))) if p > 0 else 12, 12)
        return f"less than 1 in {_POWERS_OF_TEN[k]}"
    return f"about 1 in {chance_number(p):,}"


def _bound(result: AuditResult) -> tuple[Any, int | None, int | None]:
    """(per-work attack result, k of "at least k", works named by the same closed-testing procedure or None when
    the analysis does not record them)."""
    a = _per_artwork_attack(result)
    if a is None or a.members_lower_bound is None:
        return a, None, None
    named = _closed_named(result, a.attack)
    return a, int(a.members_lower_bound), named


def _closed_named(result: AuditResult, attack: str) -> int | None:
    """``n_flagged_closed`` of the attack in analysis.json (closed-testing per-work claims), when recorded."""
    for ad in (result.to_dict().get("attacks") or []):
        if ad.get("attack") == attack:
            works = ad.get("artworks") or []
            if not any(w.get("p_closed") is not None for w in works):
                return None  # not recorded (older analysis): the wording falls back to the bound alone
            v = ad.get("n_flagged_closed")
            if v is None:
                v = sum(1 for w in works if w.get("p_closed") is not None and w["p_closed"] <= result.plan.alpha)
            return int(v)
    return None


def plain_headline(result: AuditResult) -> str:
    """One sentence without statistics vocabulary or double negatives, its claim no larger than the numbers'."""
    d = result.verdict.decision
    if d == "reject_h0":
        a, k, _ = _bound(result)
        who = (f"at least {k} of the {a.n_bound} suspect works were" if k else "some of the suspect works were")
        return ("The model fits the suspect works more closely than comparable works known not to be in its "
                f"training data. If those comparison works are a fair comparison, this indicates that {who} used to "
                "train it.")
    return {
        "fail_to_reject": "This audit found no evidence that the suspect works were used to train the model. That "
                          "does not show that they were not used.",
        "reject_lower": "The suspect works differ from the comparison works in a way that does not point to training; "
                        "the comparison works should be reconsidered.",
        "withheld": "No conclusion: a check of the method's own assumptions failed or could not be run, so the "
                    "comparison cannot be trusted either way.",
    }.get(d, "No test could be run on these works.")


def _basis_phrase(facts: dict[str, Any]) -> str:
    """Why the controls are said to be outside the training data, as the records state it."""
    b = facts.get("basis") or {}
    rows = [r for r in b.get("rows") or [] if r["role"] == b.get("control_role", "control") and r["total"]]
    if not rows or not rows[0]["bases"]:
        return (" The records do not state why the controls are known not to be in the training data (no basis in "
                "the manifest or the case file): that is for whoever chose them to establish.")
    bases = ", ".join(f"{x['value']} ({x['n']:,})" for x in rows[0]["bases"])
    return (f" The stated basis of the controls is: {bases} (see \"Basis of the comparison\"); the audit takes it as "
            "given.")


def plain_summary(result: AuditResult, facts: dict[str, Any] | None = None) -> list[str]:
    """The verdict in plain language, for a reader without statistics (a few short paragraphs). ``facts``: what
    the report derived from the records (basis of the comparison, procedure record, decision-level error rates)."""
    facts = facts or {}
    v, plan = result.verdict, result.plan
    t = result.primary_test
    out: list[str] = []
    n_s = t.n_suspect if t else 0
    n_c = t.n_control if t else 0
    assumption = ("If the controls are a fair comparison — that is, if a suspect work the model was not trained on "
                  "is, for the model, no different from them (exchangeable with them): works of the same kind, chosen "
                  "without regard to any score —")
    if v.decision == "reject_h0":
        out.append(
            f"The model fits the {n_s} suspect works more closely than {n_c} comparable works known not to be in its "
            f"training data (the controls), by more than chance would explain at the level fixed in advance "
            f"(α = {plan.alpha:g}, p = {format_p(v.p_value, plan.alpha)}: a difference this large would arise by "
            f"chance {chance_words(v.p_value)} times if none of them had been used). {assumption} the data are "
            "inconsistent with no suspect work being in the training data." + _basis_phrase(facts)
            + " That p-value is the audit's one headline result (every other p-value in the report is labelled "
            "per-work or exploratory); it is statistical evidence, not proof."
        )
        if t is not None and t.n_resamples and v.p_value is not None and v.p_value <= 1.0 / (t.n_resamples + 1) + 1e-12:
            out.append(
                f"That p-value is the smallest this test can report: it compares the real result with "
                f"{t.n_resamples:,} random reshufflings of which works are called suspects, and none of them came "
                "out as extreme. The evidence may be stronger still; more reshufflings (stats.n_permutations or "
                "stats.crossfit_permutations) would show how much."
            )
    elif v.decision == "fail_to_reject":
        out.append(
            f"The model does not treat the {n_s} suspect works differently from {n_c} comparable works known not "
            f"to be in its training data, beyond what chance would explain at the level fixed in advance "
            f"(α = {plan.alpha:g}, p = {format_p(v.p_value, plan.alpha)}). The data are consistent with no suspect "
            "work being in the training data. That is not evidence that the works were not used: the test may "
            "be too weak for this model or this number of works (see the power analysis)."
        )
    elif v.decision == "reject_lower":
        out.append(
            f"The {n_s} suspect works score lower than {n_c} comparable works known not to be in the training data "
            f"(α = {plan.alpha:g}, two-sided p = {format_p(v.p_value, plan.alpha)}). Training on a work makes it "
            "score higher, not lower, so this is not evidence that any suspect work was used; it suggests that the "
            "control works differ from the suspects and are not a fair comparison."
        )
    elif v.decision == "withheld":
        failed = [g for g in result.gates if g.failed]
        out.append(
            "No verdict is given. A check of the audit's own assumptions failed, so the comparison between the "
            "suspect works and the control works cannot be trusted in either direction: "
            + " ".join(g.summary for g in failed)
        )
        if any(g.name == "blind_baseline" for g in failed):
            out.append("Remedy: choose control works that match the suspects in everything except training "
                       "(same artist or style, period, size, format and source) and run the audit again.")
    else:
        out.append(v.sentence)
    if v.decision in ("reject_h0", "fail_to_reject"):
        how_many = _how_many(result)
        if how_many:
            out.append(how_many)
        sens = _sensitivity_sentence(result)
        if sens:
            out.append(sens)
    out.extend(wrong_way_warnings(result))
    rates = _decision_rates_sentence(result)
    if rates:
        out.append(rates)
    if not v.confirmatory:
        out.append("This report was regenerated with an analysis plan that differs from the one recorded before "
                   "the scores were computed; its verdict is exploratory.")
    return out


def _stratum_counts(result: AuditResult) -> tuple[str, int, int] | None:
    """(stratum column, fewest, most controls per stratum that has suspects) of a stratified plan."""
    comp = result.composition or {}
    if not (result.plan.strata and comp.get("rows")):
        return None
    role = result.plan.control_role
    counts = [int(r.get(role, 0)) for r in comp["rows"] if int(r.get("suspect", 0)) > 0]
    return (str(comp.get("column")), min(counts), max(counts)) if counts else None


def _how_many(result: AuditResult) -> str | None:
    """The count of trained works and the per-work claims, both from the one closed-testing procedure."""
    plan = result.plan
    a, k, named = _bound(result)
    if a is None or k is None:
        return None
    conf = (1.0 - plan.alpha) * 100
    per = _stratum_counts(result)
    if per is not None:
        col, lo, hi = per
        against = (f"Each suspect is compared only with the controls of its own {col} "
                   + (f"({lo:,} per {col})" if lo == hi else f"({lo:,} to {hi:,} per {col})")
                   + f", so no single work's p-value can be smaller than one over the number of its {col}'s controls "
                   "plus one.")
    else:
        against = (f"Each work is compared with all {a.n_control:,} controls, so no single work's p-value can be "
                   "smaller than one over their number plus one.")
    if k == 0:
        return (f"How many? The per-work analysis (closed testing on the per-work p-values of attack '{a.attack}') "
                f"does not establish, at {conf:g}% confidence, that any particular number of the {a.n_bound} suspect "
                f"works were in the training data. {against}")
    txt = (f"How many? With {conf:g}% confidence, at least {k} of the {a.n_bound} suspect works were in the training "
           f"data (closed testing on the per-work p-values of attack '{a.attack}'; the bound holds simultaneously for "
           "any subset of the works a reader picks).")
    if named is not None:
        if named >= k:
            txt += (f" The same procedure names {named} of them individually (their closed-testing p-values are in "
                    "the per-work table).")
        elif named > 0:
            txt += (f" The same procedure names {named} of them individually; for the rest of the count it cannot "
                    "say which works they are.")
        else:
            txt += " The count is about the group: the same procedure cannot say which of the works they are."
    elif k == a.n_bound:
        txt += " As the bound covers every suspect work, it is a statement about each of them."
    else:
        txt += " The count is about the group: it does not say which of the works they are."
    return txt + " " + against


def _sensitivity_sentence(result: AuditResult) -> str | None:
    """Said when the conclusion hinges on one or two works, or fails in a variant an opposing expert could choose."""
    plan, v = result.plan, result.verdict
    a, k, _ = _bound(result)
    parts = []
    n_s = result.primary_test.n_suspect if result.primary_test else 0
    if v.decision == "reject_h0" and 0 < n_s <= 2:
        parts.append(f"the conclusion rests on {n_s} suspect work{'s' if n_s > 1 else ''} only")
    if k in (1, 2) and a is not None and a.n_bound > k:
        parts.append(f"the count rests on {k} work{'s' if k > 1 else ''}: if {'it' if k == 1 else 'they'} proved not "
                     "comparable with the controls, it could fall to zero")
    if v.decision == "reject_h0":
        flips = [s for s in (result.sensitivity or [])[1:] if s.get("p_value") is not None
                 and s["p_value"] > plan.alpha]
        if flips:
            shown = "; ".join(f"{s['variant']} ({s['attack']}): p = {format_p(s['p_value'], plan.alpha)}"
                              for s in flips[:3])
            parts.append(f"{len(flips)} of the exploratory variants in the sensitivity table "
                         f"{'does' if len(flips) == 1 else 'do'} not reach α ({shown})")
    if not parts:
        return None
    return "Sensitivity: " + "; ".join(parts) + "."


def wrong_way_warnings(result: AuditResult) -> list[str]:
    """A warning for every planned feature (or the primary attack) that is worse than chance on the known members."""
    plan = result.plan
    planned = list(plan.features) if plan.features else [result.primary_attack]
    weights = dict(zip(result.crossfit.features, result.crossfit.coef)) if result.crossfit else {}
    out = []
    for a in result.attacks:
        auc = a.auc_member_nonmember
        if a.attack not in planned or auc is None or auc.auc is None or auc.auc >= 0.5:
            continue
        txt = (f"Warning: on this model the planned feature '{a.attack}' scores the {a.n_member} known training works "
               f"lower than the {a.n_nonmember} known non-training works (AUC {auc.auc:.3f}, "
               f"{auc.level * 100:g}% interval {auc.lo:.3f}–{auc.hi:.3f}; below 0.5 is worse than chance): it does not "
               "measure membership here.")
        if a.attack in weights:
            txt += (f" The cross-fitted combination gave it weight {weights[a.attack]:.3f} (weights cannot be "
                    "negative, so it can add noise but not reverse the evidence).")
        out.append(txt)
    return out


def _decision_rates_sentence(result: AuditResult) -> str | None:
    """The measured error rates of the whole decision on this model (analysis.json ``decision_rates``)."""
    if result.verdict.decision not in ("reject_h0", "fail_to_reject", "withheld"):
        return None
    dr = result.to_dict().get("decision_rates")
    if not dr:
        return ("How often is this procedure wrong on this model? The false-positive rate of the whole decision "
                "(test and validity gates together) was not measured on this model in this report; the validity "
                "gates in the summary give the checks that were run.")
    fpr, power = dr.get("fpr"), dr.get("power")
    where = dr.get("measured_on") or "this model"
    bits = []
    if fpr:
        bits.append(f"the whole decision (test and validity gates together) concluded wrongly that suspect works were "
                    f"trained on in {fpr['k']:,} of {fpr['n']:,} trials in which none was ({fpr['rate'] * 100:.1f}%, "
                    f"{result.plan.ci_level * 100:g}% interval {fpr['lo'] * 100:.1f}%–{fpr['hi'] * 100:.1f}%; "
                    f"{fpr.get('source') or 'source not recorded'})")
    else:
        bits.append("the false-positive rate of the whole decision could not be measured")
    if power:
        bits.append(f"it detected known training works in {power['k']:,} of {power['n']:,} trials "
                    f"({power['rate'] * 100:.1f}%, interval {power['lo'] * 100:.1f}%–{power['hi'] * 100:.1f}%; "
                    f"{power.get('source') or 'source not recorded'})")
    else:
        bits.append("its power could not be measured")
    txt = f"How often is this procedure wrong? Measured on {where}, " + "; ".join(bits) + "."
    if fpr:
        txt += (" Those trials draw the innocent works from the controls themselves, so the rate holds when the "
                "comparison works are a fair comparison; mis-chosen ones raise it (below).")
    if dr.get("note"):
        txt += f" {dr['note']}"
    return txt


def limitations(result: AuditResult) -> list[str]:
    """What the report cannot show; general points plus those that apply to this audit's numbers."""
    plan = result.plan
    out = [
        "Failing to detect membership is not proof of absence: a model can have been trained on a work without "
        "the attacks being able to tell, especially a large model trained on each work once.",
        "The verdict concerns the suspect set as a whole. Statements about single works rest on the per-artwork "
        "p-values after Holm's correction, which need many controls.",
        "Validity rests on the controls: a suspect work that was not in training must be exchangeable with the "
        "control works. The blind baseline checks the measured model-free features only (colour, texture, size, "
        "format, compression, caption length); differences it cannot see — e.g. a change of the artist's style "
        "over time, or controls re-encoded differently — could still bias the comparison. A blind baseline that "
        "does not fire is not proof that the sets are matched, in particular with few suspect works.",
        "The random placebo splits only check the implementation and the test's calibration: splits of one "
        "control set are exchangeable by construction, so they cannot show that the controls are a valid null. "
        "The leave-one-stratum-out part (when the controls record an artist or another stratum) can: it tests "
        "each artist's controls against the others, as a suspect set of one artist would be tested.",
        "A detected difference shows that the model fits the suspect pictures unusually well. It cannot tell "
        "whether the model saw these exact files, other copies or near-duplicates of them (resized, cropped, "
        "re-encoded), or derivative works.",
        "The model is identified by the SHA-256 of its files. Whether those are the weights of a deployed "
        "product rests on how they were obtained and kept (stated in the case file, shown under \"The model "
        "audited\"), which the tool cannot check.",
        "Exploratory results (every attack other than the primary statistic, the second set-level test, "
        "per-attack tables) are not corrected for multiple comparisons and must not be quoted as confirmatory.",
        "Storey's estimate of the number of member suspects is noisy when there are few suspects, it is clipped "
        "at zero (so with no members it still averages a few), and its interval reflects sampling variability "
        "only.",
    ]
    pc = result.gate("positive_control")
    if pc is None or pc.status == "not_run":
        out.append("No known members were given, so the attacks' power on this model was not measured; a "
                   "non-detection is then hard to interpret.")
    elif pc.details.get("power_method") == "subsampled":
        out.append("The positive control's power draws subsets of the same known members many times; its interval "
                   "is a Monte-Carlo interval and does not reflect which members happened to be known.")
    if plan.alternative == "greater":
        out.append("The tests are one-sided: suspects scoring lower than the controls count as no evidence.")
    return out


def _per_artwork_attack(result: AuditResult):
    try:
        return result.attack(result.primary_attack)
    except KeyError:  # pragma: no cover - analyze() guarantees it
        return None


# ---------------------------------------------------------------------------------------------- context
def _describe_attacks(metadata: dict[str, Any], scores: ScoreTable) -> list[dict[str, Any]]:
    """Per attack: paper, access, parameters and the class docstring's first paragraph (what it computes)."""
    described = metadata.get("attacks") or {}
    out = []
    try:
        import audit.attacks as attacks_mod
    except Exception:  # pragma: no cover - the report must render without the attack code
        attacks_mod = None
    for name in scores.attacks:
        d = dict(described.get(name) or {"name": name})
        params = dict(d.get("params") or {})
        cls_name = params.get("attack")
        doc = ""
        cls = getattr(attacks_mod, str(cls_name), None) if attacks_mod is not None and cls_name else None
        if cls is not None:
            doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
            if "module docstring" in doc:  # the class points at its module for the method: quote that instead
                mod = inspect.getmodule(cls)
                mdoc = (inspect.getdoc(mod) or "").split("\n\n")[0].replace("\n", " ") if mod else ""
                doc = re.sub(r"\s*[(;,]?\s*see (the )?module docstring\)?", "", doc).rstrip(" .;,") + ". " + mdoc
            d.setdefault("paper", getattr(cls, "paper", ""))
        out.append({"name": name, "paper": d.get("paper", ""), "access": d.get("access", ""),
                    "evaluations": d.get("evaluations_per_image"), "params": params, "description": doc,
                    "reference": d.get("reference")})
    return out


def _config_values(config_yaml: str | None) -> dict[str, Any]:
    if not config_yaml:
        return {}
    try:
        cfg = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _common_folder(paths: list[str]) -> str:
    import os

    paths = [p for p in paths if p]
    if len(paths) < 2:
        return ""
    try:
        root = os.path.commonpath(paths)
    except ValueError:  # mixed absolute/relative paths or drives
        return ""
    return "" if root in ("", "/", ".") else root


def _relative(path: str, root: str) -> str:
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return path


def _b64(png: bytes | None) -> str | None:
    return to_base64(png) if png is not None else None


def _reconstruction(run_folder: str | Path | None) -> dict[str, Any] | None:
    """The reconstruction-tests section (issue 4's partial), when the run folder has one."""
    if run_folder is None:
        return None
    try:
        from audit.reconstruction.report import reconstruction_context
    except ImportError:  # pragma: no cover - optional part of the package
        return None
    return _optional_section("reconstruction section", reconstruction_context, run_folder)


def _optional_section(what: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)``, or None with a warning: a broken optional section must not cost the report."""
    try:
        return build(*args, **kwargs)
    except Exception as e:
        log.warning("%s left out: %s: %s", what, type(e).__name__, e)
        return None


def _blackbox(run_folder: str | Path | None) -> dict[str, Any] | None:
    """The queries-to-the-service section (issue 15's partial), when the run audited a hosted generator."""
    if run_folder is None:
        return None
    from audit.blackbox.report import blackbox_context

    return _optional_section("black-box section", blackbox_context, run_folder)


def _outputs(run_folder: str | Path | None) -> dict[str, Any] | None:
    """The collected-outputs section (issue 24's partial), when the run audited collected outputs."""
    if run_folder is None:
        return None
    from audit.outputs.report import outputs_context

    return _optional_section("collected-outputs section", outputs_context, run_folder)


def _training_metadata(target: dict[str, Any]) -> dict[str, Any] | None:
    """How the model was conditioned and what its files say about their training (issue 23's partial)."""
    from audit.targets.metadata import exhibit_context

    return _optional_section("training-metadata section", exhibit_context, target)


def _context(result: AuditResult, scores: ScoreTable, images: pd.DataFrame | None, rejected: list[dict[str, Any]],
             metadata: dict[str, Any], features: pd.DataFrame | None, pdf_note: str | None,
             run_folder: str | Path | None = None, records: dict[str, Any] | None = None) -> dict[str, Any]:
    plan = result.plan
    meta = dict(metadata)
    config_yaml = meta.pop("config_yaml", None)
    cfg = _config_values(config_yaml)
    pa = _per_artwork_attack(result)
    records = records if records is not None else report_records(result, scores, images, rejected, metadata)
    proc = records["procedure"]
    facts = {"basis": records.get("basis"), "procedure": proc}
    figures = {
        "roc_sc": _b64(roc_png(scores, "suspect_control", plan.control_role)),
        "roc_bench": _b64(roc_png(scores, "benchmark", plan.control_role))
        if any(a.auc_member_nonmember is not None for a in result.attacks) else None,
        "hist": [(a.attack, a.attack == result.primary_attack, to_base64(histogram_png(scores, a.attack)))
                 for a in result.attacks],
        "pvalues": _b64(pvalue_png([w.p_conformal for w in pa.artworks], pa.storey.lam, pa.storey.pi0, plan.alpha,
                                   pa.attack)) if pa is not None and pa.storey is not None else None,
        "gates": {g.name: _b64(gate_png(g)) for g in result.gates},
    }
    if images is not None and not images.empty:
        inventory = images.sort_values(["role", "path"]).to_dict(orient="records")
        role_counts = {r: int((images["role"] == r).sum()) for r in ROLES}
    else:
        inventory, role_counts = [], {}
    # Paths are shown relative to their common folder (printed once), so the inventory fits a page width.
    path_root = _common_folder([str(i.get("path", "")) for i in inventory])
    for i in inventory:
        i["rel_path"] = _relative(str(i.get("path", "")), path_root)
    target = meta.get("target") or {}
    target_cfg = cfg.get("target") or {}
    model = {
        "fingerprint": target.get("fingerprint") or meta.get("target_fingerprint")
        or (scores.df["target_fingerprint"].iloc[0] if len(scores.df) else ""),
        "source": target.get("source") or target_cfg.get("source"),
        "revision": target_cfg.get("revision"),
        "kind": target.get("kind"), "resolution": target.get("resolution"),
        "conditional": target.get("conditional"), "prediction_type": target.get("prediction_type"),
        "classes": target.get("classes") or {}, "files": target.get("files") or {},
        "lora": target.get("lora") or [], "lora_scale": target_cfg.get("lora_scale"),
    }
    feature_cols = [c for c in (features.columns if features is not None else []) if c not in ("image_id", "role")]
    feature_rows = []
    for c in feature_cols:
        desc = FEATURE_DESCRIPTIONS.get(c) or (FEATURE_DESCRIPTIONS["meta_format_*"] + f" ({c[12:]})"
                                               if c.startswith("meta_format_") else "")
        feature_rows.append((c, desc))
    seeds = {"run seed (noise draws)": meta.get("seed"), "analysis seed (resampling)": plan.seed}
    versions = meta.get("versions") or meta.get("package_versions") or {}
    other_meta = {k: v for k, v in meta.items() if k not in ("attacks", "target", "versions", "package_versions",
                                                             "scenario", "analysis_plan", "config_yaml",
                                                             "inventory_exhibit")}
    return dict(
        r=result, plan=plan, test_label=test_label(plan.test, plan.alternative),
        set_test_method=_set_test_method(plan),
        primary=pa, exploratory=[a for a in result.attacks if a.attack != result.primary_attack],
        img=_image_lookup(images), figures=figures,
        rejected=[{"path": d.get("path", ""), "role": d.get("role", ""), "reason": d.get("reason", ""),
                   "sha256": d.get("sha256") or ""} for d in rejected],
        metadata=meta, other_meta=other_meta, config_yaml=config_yaml, inventory=inventory, role_counts=role_counts,
        any_benchmark=any(a.auc_member_nonmember is not None for a in result.attacks),
        summary=plain_summary(result, facts), headline=plain_headline(result), limitations=limitations(result),
        attacks=_describe_attacks(meta, scores), records=records, proc=proc, basis=records.get("basis"),
        date=records.get("date_trend"), case=records.get("case"), exhibits=records.get("exhibits") or [],
        records_seal=meta.get("records_seal"), source_seal=records.get("source_seal"),
        procedure=procedure_sentences(proc), page_one=[x for x in (procedure_page_one(proc),
                                                                   uncommitted_page_one(proc["tool_uncommitted"])) if x],
        confirmatory=bool(result.verdict.confirmatory and proc["order_ok"]),
        studies=STUDIES, studies_short=STUDIES_SHORT, critiques=CRITIQUES, alternatives=alternative_explanations(_alt_facts(result, records, rejected)),
        decision_rates=result.to_dict().get("decision_rates"), closed=_closed_p(result),
        closed_named=_closed_named(result, result.primary_attack),
        stratum_counts=_stratum_counts(result),
        model_check={"n": int(scores.df["target_fingerprint"].nunique()) if len(scores.df) else 0,
                     "same": bool(len(scores.df) and scores.df["target_fingerprint"].nunique() == 1)},
        model=model, feature_rows=feature_rows, seeds=seeds, versions=versions,
        plan_record=meta.get("analysis_plan"), scenario=meta.get("scenario"), pdf_note=pdf_note,
        gate_status={g.name: g.status for g in result.gates},
        training_metadata=_training_metadata(meta.get("target") or {}),
        reconstruction=_reconstruction(run_folder), blackbox=_blackbox(run_folder), outputs=_outputs(run_folder), path_root=path_root,
        glossary=GLOSSARY, bibliography=BIBLIOGRAPHY, declaration=declaration(proc), expert=expert_from_config(cfg),
        provenance=report_provenance(meta), exhibit=meta.get("inventory_exhibit"),
        thumbnails=_thumbnails(result, images, features, cfg),
    )


#: the records a report is made from, quoted in its appendix by SHA-256 (config and run records are exhibits, not
#: pages of YAML); the report's own derived numbers go to REPORT_RECORDS, whose SHA-256 the report prints
EXHIBIT_FILES = ("config.yaml", "run.json", "plan.json", "committed_plan.json", "analysis.json", "scores.parquet",
                 "images.parquet", "features.parquet", "rejected.json", "evidence_inventory.csv", "case.yaml", "expert.yaml")
REPORT_RECORDS = "report_records.json"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def report_records(result: AuditResult, scores: ScoreTable, images: pd.DataFrame | None,
                   rejected: list[dict[str, Any]], metadata: dict[str, Any], folder: str | Path | None = None
                   ) -> dict[str, Any]:
    """What the report derives from the run's records: the procedure record, the case record, the basis of the
    comparison, the date diagnostic, and the exhibits (name, SHA-256, bytes) of ``folder``. Written next to the
    report as ``report_records.json`` so that every number the report prints is in a sealed record."""
    from audit.report.basis import basis_summary, date_diagnostic
    from audit.report.case import load_case
    from audit.report.procedure import procedure_record
    from audit.report.texts import _git_commit
    from audit.stats.analysis import collapse_scores

    meta = {k: v for k, v in metadata.items() if k != "config_yaml"}
    regenerated = bool(meta.get("regenerated_with"))
    proc = procedure_record(meta, result.plan_sha256)
    if not regenerated:  # the report is written by the run's own process: the tool tree is the run's
        mark = _git_commit()
        if mark and "uncommitted" in mark and not proc["tool_uncommitted"]:
            proc["tool_uncommitted"].append(mark)
    cfg = _config_values(metadata.get("config_yaml"))
    case = load_case(cfg, folder, regenerated=regenerated)
    from audit.report.expert import load_expert

    expert = load_expert(cfg, folder, regenerated=regenerated)  # writes the exhibit expert.yaml before hashing
    basis = basis_summary(images, case, result.plan.control_role)
    try:
        per_work, _ = collapse_scores(scores, result.primary_attack)
    except (KeyError, ValueError):
        per_work = None
    date = date_diagnostic(images, per_work, result.plan.control_role,
                           result.plan.strata[0] if result.plan.strata else None)
    exhibits = []
    source_seal = None
    if folder is not None:
        d = Path(folder)
        for name in EXHIBIT_FILES:
            f = d / name
            if f.is_file() and not f.is_symlink():
                exhibits.append({"name": name, "sha256": _sha256(f), "bytes": f.stat().st_size})
        seal = d / "checksums.json"
        if regenerated and seal.is_file():  # the seal of the data this report was regenerated from
            source_seal = _sha256(seal)
    return {"procedure": proc, "case": {k: case[k] for k in ("model", "selection", "stated", "origin", "exhibit")},
            "basis": basis, "date_trend": date, "exhibits": exhibits, "expert_record": expert, "source_seal": source_seal,
            "near_duplicates": sum("near-duplicate" in str(r.get("reason", "")).lower() for r in rejected)}


def _closed_p(result: AuditResult) -> dict[str, float | None]:
    """image_id → closed-testing adjusted p-value of the per-work attack (analysis.json), when recorded."""
    for ad in (result.to_dict().get("attacks") or []):
        if ad.get("attack") == result.primary_attack:
            closed = {w["image_id"]: w.get("p_closed") for w in ad.get("artworks") or [] if "p_closed" in w}
            return closed if any(v is not None for v in closed.values()) else {}
    return {}


def _alt_facts(result: AuditResult, records: dict[str, Any], rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts :func:`audit.report.texts.alternative_explanations` words."""
    def gate(name: str) -> dict[str, Any]:
        g = result.gate(name)
        return {"status": g.status, "summary": g.summary} if g is not None else {}

    pc = result.gate("positive_control")
    neg = None
    if pc is not None and pc.details.get("p_nonmembers") is not None:
        neg = (f"p = {format_p(pc.details['p_nonmembers'], result.plan.alpha)} for the {pc.details.get('n_nonmember')} "
               "known non-training works against the controls.")
    case = records.get("case") or {}
    basis = records.get("basis") or {}
    sel = case.get("selection") or {}
    return {"blind": gate("blind_baseline"), "positive": gate("positive_control"), "negative": neg,
            "strata": result.plan.strata[0] if result.plan.strata else None, "date": records.get("date_trend"),
            "alpha": result.plan.alpha, "by_date": (sel.get("controls") or {}).get("by_date"),
            "near_duplicates": records.get("near_duplicates", 0), "reconstruction": any(
                a.attack.startswith("recon_") for a in result.attacks),
            "calibrated": any("calibrated" in a.attack for a in result.attacks
                              if a.attack in (result.plan.features or (result.primary_attack,))),
            "selection": sel, "committed": records["procedure"].get("committed"), "cutoff": basis.get("cutoff"),
            "n_flagged": basis.get("n_flagged", 0), "controls_without_basis": basis.get("controls_without_basis", 0),
            "controls_date_free": _date_free_bases(basis), "adjust": getattr(result.plan, "adjust", None)}


def _date_free_bases(basis: dict[str, Any]) -> str | None:
    """The controls' bases when every control has one that does not rest on a date (unpublished, held out)."""
    from audit.report.basis import NOT_IN_TRAINING_BASES

    rows = [r for r in basis.get("rows") or [] if r["role"] == basis.get("control_role") and r["total"]]
    if not rows or not rows[0]["bases"] or rows[0]["n_without_basis"]:
        return None
    names = [b["value"] for b in rows[0]["bases"]]
    return ", ".join(names) if all(n in NOT_IN_TRAINING_BASES for n in names) else None


def _thumbnails(result: AuditResult, images: pd.DataFrame | None, features: pd.DataFrame | None,
                cfg: dict[str, Any]) -> dict[str, Any] | None:
    from audit.report.thumbnails import thumbnail_panel

    limit = (cfg.get("report") or {}).get("thumbnails", 24)
    return _optional_section("thumbnail panel", thumbnail_panel, result, images, features,
                             limit=int(limit if limit is not None else 0))


# ---------------------------------------------------------------------------------------------- writers
def _render(result: AuditResult, scores: ScoreTable, images: pd.DataFrame | None, rejected: list[dict[str, Any]],
            metadata: dict[str, Any], features: pd.DataFrame | None = None, pdf_note: str | None = None,
            run_folder: str | Path | None = None, records: dict[str, Any] | None = None, lang: str = "en") -> str:
    from audit.report import i18n
    from audit.report.languages import localized_context

    with i18n.use(lang):
        ctx = _context(result, scores, images, rejected, metadata, features, pdf_note, run_folder, records)
        ctx.update(localized_context(result, ctx, _config_values(metadata.get("config_yaml")), records,
                                     metadata, run_folder, lang))
        return _env(lang).get_template("report.html.j2").render(**ctx)


def render_html(
    result: AuditResult,
    scores: ScoreTable,
    images: pd.DataFrame | None,
    rejected: list[dict[str, Any]],
    metadata: dict[str, Any],
    out_path: str | Path,
    features: pd.DataFrame | None = None,
    pdf_note: str | None = None,
    run_folder: str | Path | None = None,
    lang: str = "en",
) -> Path:
    """Write the audit report as one self-contained HTML file at ``out_path`` and return its path.

    ``images``: the accepted-image table (image_id, path, role, caption, artist, created, width, height,
    format); ``rejected``: dicts with at least path, role, reason; ``metadata``: provenance (command,
    target, attacks, package versions, seed, ``config_yaml`` …), rendered as given; ``features``: the
    model-free feature table (only its column names are shown, in the methods section); ``run_folder``: the
    results folder whose ``reconstruction/`` output (if any) becomes the reconstruction-tests section.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    exhibit = write_inventory_csv(images, out.parent / INVENTORY_CSV)
    meta = dict(metadata, inventory_exhibit=exhibit) if exhibit else dict(metadata)
    records = report_records(result, scores, images, rejected, meta, out.parent)
    from audit.io import write_json

    write_json(out.parent / REPORT_RECORDS, records)
    meta["records_seal"] = {"name": REPORT_RECORDS, "sha256": _sha256(out.parent / REPORT_RECORDS)}
    html = _render(result, scores, images, rejected, meta, features, pdf_note, run_folder, records, lang=lang)
    sha = metadata.get("analysis_sha256")
    if isinstance(sha, str) and len(sha) == 64:  # binds the report to its analysis (checked by audit-verify)
        html = html.replace("<head>", f'<head>\n<meta name="audit-analysis-sha256" content="{sha}">', 1)
    out.write_text(html, encoding="utf-8")
    return out


INVENTORY_CSV = "evidence_inventory.csv"


def write_inventory_csv(images: pd.DataFrame | None, path: Path) -> dict[str, Any] | None:
    """The per-file hash inventory as a CSV exhibit (role, path, artist, created, width, height, format,
    sha256; sorted by role and path, so the same evidence always gives the same bytes). Returns its name,
    SHA-256 and row count, which the report quotes instead of printing pages of hashes."""
    import hashlib

    if images is None or images.empty:
        return None
    cols = [c for c in ("role", "path", "artist", "created", "published", "basis", "source", "width", "height",
                        "format", "image_id")
            if c in images.columns and (c not in ("published", "basis", "source") or images[c].fillna("").ne("").any())]
    df = images[cols].drop_duplicates().sort_values([c for c in ("role", "path") if c in cols])
    data = df.rename(columns={"image_id": "sha256"}).to_csv(index=False, lineterminator="\n").encode("utf-8")
    path.write_bytes(data)
    return {"name": path.name, "sha256": hashlib.sha256(data).hexdigest(), "rows": int(len(df))}


def render_pdf(html_path: str | Path, pdf_path: str | Path) -> Path:
    """Render an HTML report to PDF with WeasyPrint. Raises :class:`PdfUnavailable` with the reason."""
    for name in ("weasyprint", "weasyprint.progress", "fontTools"):
        logging.getLogger(name).setLevel(logging.ERROR)  # per-step INFO logs (some at import) flood Hydra's log
    # Importing WeasyPrint sets PIL's process-wide ImageFile.LOAD_TRUNCATED_IMAGES = True, after which a
    # truncated evidence file would decode silently instead of being rejected. Restore the flag afterwards.
    from PIL import ImageFile

    truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        from weasyprint import HTML
    except ImportError as e:
        raise PdfUnavailable(f"WeasyPrint is not installed ({e}); pip install weasyprint") from None
    except OSError as e:  # WeasyPrint is installed but cannot load pango
        raise PdfUnavailable(f"WeasyPrint cannot load its system libraries ({e}); on Debian/Ubuntu: "
                             f"apt-get install {PDF_LIBRARIES}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag
    out = Path(pdf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        HTML(filename=str(html_path), base_url=str(Path(html_path).parent)).write_pdf(str(out))
    except Exception as e:  # a rendering failure must never cost the HTML report
        raise PdfUnavailable(f"PDF rendering failed: {type(e).__name__}: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag
    return out


def write_reports(
    result: AuditResult,
    scores: ScoreTable,
    images: pd.DataFrame | None,
    rejected: list[dict[str, Any]],
    metadata: dict[str, Any],
    out_dir: str | Path,
    formats: list[str] | tuple[str, ...] = ("html", "pdf"),
    filename: str = "report.html",
    pdf_filename: str = "report.pdf",
    features: pd.DataFrame | None = None,
    run_folder: str | Path | None = None,
    language: str | None = None,
) -> dict[str, Path]:
    """Write the report in each of ``formats`` (``html``, ``pdf``) into ``out_dir``; returns {format: path}.

    The PDF is rendered from the HTML. The HTML is always written first (also when only ``pdf`` is asked
    for, as its source) and is never lost: if the PDF fails, the failure is logged, printed and noted
    inside the HTML report, and the HTML path is still returned.
    """
    unknown = sorted(set(formats) - {"html", "pdf"})
    if unknown:
        raise ValueError(f"unknown report formats {unknown}; choose from ['html', 'pdf']")
    out = Path(out_dir)
    from audit.report.i18n import check_language, localized_name
    from audit.report.languages import font_note

    if language is None:
        language = (_config_values(metadata.get("config_yaml")).get("report") or {}).get("language")
    written: dict[str, Path] = {}
    for i, lang in enumerate(check_language(language)):  # en+zh: report.html and report.zh.html, ...
        name, pdf_name = localized_name(filename, lang, i == 0), localized_name(pdf_filename, lang, i == 0)

        def key(kind: str, lang: str = lang, first: bool = i == 0) -> str:
            return kind if first else f"{kind}.{lang}"

        html_path = render_html(result, scores, images, rejected, metadata, out / name, features,
                                run_folder=run_folder if run_folder is not None else out, lang=lang)
        written[key("html")] = html_path
        if "pdf" in formats:
            font = font_note(lang)
            if font:  # the PDF is still written; the run and the HTML say why its Chinese would be boxes
                print(f"note: {font}")
                log.warning(font)
                raw = html_path.read_text(encoding="utf-8")
                html_path.write_text(raw.replace(_PDF_NOTE_MARK, f'<p class="pdfnote">{escape(font)}</p>' + _PDF_NOTE_MARK, 1),
                                     encoding="utf-8")
            try:
                written[key("pdf")] = render_pdf(html_path, out / pdf_name)
            except PdfUnavailable as e:
                msg = f"PDF report NOT written: {e}. The HTML report is complete: {html_path}"
                log.error(msg)
                print(msg)
                # Say so inside the HTML too (the template leaves a marker for it; no second rendering needed).
                note = (f'<p class="pdfnote"><b>PDF report not written:</b> {escape(str(e))}. '
                        "This HTML report is complete.</p>")
                raw = html_path.read_text(encoding="utf-8")
                html_path.write_text(raw.replace(_PDF_NOTE_MARK, note, 1), encoding="utf-8")
    return written


def _set_test_method(plan) -> str:
    """The Methods sentence of the plan's set-level test, from the test's own registry entry."""
    from audit.stats.settests import SET_TESTS

    spec = SET_TESTS.get(getattr(plan, "test", None))
    return spec.method(plan) if spec is not None else ""
