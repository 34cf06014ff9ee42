"""Fixed prose of the report: glossary, references, the expert's declaration, provenance of the report itself.

Nothing here states a number about an audit (numbers come from ``analysis.json`` through the template).
"""
from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["GLOSSARY", "BIBLIOGRAPHY", "DECLARATION", "STUDIES", "STUDIES_SHORT", "CRITIQUES", "declaration", "expert_from_config",
           "report_provenance", "procedure_sentences", "alternative_explanations"]

GLOSSARY: list[tuple[str, str]] = [
    ("Suspect work", "An artwork claimed to have been in the model's training data."),
    ("Control work", "An artwork of the same kind known not to have been in the training data (made after the "
                     "model's data cutoff, never published, or held out). Controls show how the model treats works "
                     "it did not see."),
    ("Known member / nonmember", "Works whose training status is known; used to measure how well the method works "
                                "on this model (positive and negative controls)."),
    ("Membership score", "A number computed from the model for each work; higher means the model treats the work "
                         "more like its training data (e.g. it reconstructs it with less error)."),
    ("Null hypothesis (H0)", "No suspect work was in the training data, so the suspects' scores behave like the "
                             "controls' scores."),
    ("p-value", "How often a difference at least as large as the one observed would arise by chance if H0 were "
                "true. A small p-value makes H0 hard to maintain; it is not the probability that H0 is true."),
    ("Significance level α", "The threshold fixed before the analysis: H0 is rejected when p ≤ α. It is the largest "
                             "accepted chance of a false accusation when H0 is true."),
    ("Conformal p-value", "A per-work p-value: the share of control works scoring at least as high as the work "
                          "(plus one, over the number of controls plus one). It cannot be smaller than "
                          "1/(number of controls + 1)."),
    ("Holm correction", "An adjustment of per-work p-values for testing many works at once, so that the chance of "
                        "naming any work wrongly stays below α."),
    ("Benjamini–Hochberg", "A milder adjustment that controls the expected share of wrongly named works; used for "
                           "screening, not for claims about a single work."),
    ("At least k of n", "A lower confidence bound on how many suspect works were in the training data, from closed "
                        "testing; it holds for any group of works a reader picks."),
    ("AUC", "The probability that a randomly chosen suspect work scores higher than a randomly chosen control work "
            "(0.5 = no difference; 1 = every suspect above every control)."),
    ("TPR at a fixed FPR", "The share of known training works detected when the threshold is set so that only the "
                           "given share of non-training works is (wrongly) detected."),
    ("Mann–Whitney U test", "A rank test of whether one set of scores tends to be higher than another; it uses only "
                            "the order of the scores."),
    ("Van Elteren test", "The Mann–Whitney test done within strata (e.g. per artist) and combined, so that each "
                         "suspect is compared only with controls of its own artist."),
    ("Cross-fitting", "Training a combination of several scores on part of the works and evaluating it on the rest, "
                      "in turn, so that the combination is never judged on the works it was fitted to."),
    ("Validity gate", "A check of an assumption the verdict depends on, run on this audit's data; when one fails "
                      "the verdict is withheld."),
    ("Blind baseline", "The comparison repeated on model-free properties of the pictures (colour, texture, size, "
                       "file format, caption length). If these alone tell suspects from controls, the controls are "
                       "not a fair comparison."),
    ("Clopper–Pearson interval", "An exact confidence interval for a proportion (e.g. a false-positive rate)."),
    ("SHA-256", "A fingerprint of a file's bytes: any change to the file changes it."),
    ("Exchangeable", "Two groups of works are exchangeable for the model when swapping their labels would not change "
                     "what to expect of their scores. Every test in this report assumes that a suspect work that was "
                     "not trained on is exchangeable with the control works; that is a property of how the works "
                     "were chosen, which the statistics cannot prove."),
    ("Permutation test", "A test that compares the observed result with the results of many random reshufflings of "
                         "which works are called suspects and which controls; the p-value is the share of "
                         "reshufflings (counting the observed one) at least as extreme as the observed result."),
    ("Stratum (strata)", "A group of works compared only among themselves, here usually one artist: each suspect is "
                         "compared with the controls of its own stratum, so differences between artists cannot "
                         "produce a result."),
    ("Power", "The probability that the test detects training when training did happen, for a given number of works "
              "and a given strength of the effect; a test with low power says little when it does not detect."),
    ("Confidence bound", "A number that the true value exceeds (a lower bound) with the stated confidence, e.g. "
                         "\"with 95% confidence at least k works were in the training data\": procedures that give "
                         "such bounds are wrong in at most 5% of the audits they are applied to."),
    ("False-positive rate of the decision", "How often the whole procedure — test and validity gates together — "
                                            "would conclude that suspect works were trained on when none was."),
]

BIBLIOGRAPHY: list[str] = [
    "Mann, H. B. & Whitney, D. R. (1947). On a test of whether one of two random variables is stochastically larger "
    "than the other. Annals of Mathematical Statistics 18(1), 50–60.",
    "van Elteren, P. H. (1960). On the combination of independent two-sample tests of Wilcoxon. Bulletin of the "
    "International Statistical Institute 37, 351–361.",
    "Holm, S. (1979). A simple sequentially rejective multiple test procedure. Scandinavian Journal of Statistics "
    "6(2), 65–70.",
    "Benjamini, Y. & Hochberg, Y. (1995). Controlling the false discovery rate: a practical and powerful approach to "
    "multiple testing. Journal of the Royal Statistical Society B 57(1), 289–300.",
    "Storey, J. D. (2002). A direct approach to false discovery rates. Journal of the Royal Statistical Society B "
    "64(3), 479–498.",
    "Simes, R. J. (1986). An improved Bonferroni procedure for multiple tests of significance. Biometrika 73(3), "
    "751–754.",
    "Goeman, J. J. & Solari, A. (2011). Multiple testing for exploratory research. Statistical Science 26(4), "
    "584–597.",
    "Goeman, J. J., Meijer, R. J., Krebs, T. J. P. & Solari, A. (2019). Simultaneous control of all false discovery "
    "proportions in large-scale multiple hypothesis testing. Biometrika 106(4), 841–856.",
    "Vovk, V., Gammerman, A. & Shafer, G. (2005). Algorithmic Learning in a Random World. Springer.",
    "Bates, S., Candès, E., Lei, L., Romano, Y. & Sesia, M. (2023). Testing for outliers with conformal p-values. "
    "Annals of Statistics 51(1), 149–178.",
    "Clopper, C. J. & Pearson, E. S. (1934). The use of confidence or fiducial limits illustrated in the case of the "
    "binomial. Biometrika 26(4), 404–413.",
    "Hanley, J. A. & McNeil, B. J. (1982). The meaning and use of the area under a receiver operating characteristic "
    "(ROC) curve. Radiology 143(1), 29–36.",
    "Newcombe, R. G. (2006). Confidence intervals for an effect size measure based on the Mann–Whitney statistic. "
    "Part 2: asymptotic methods and evaluation. Statistics in Medicine 25(4), 559–573.",
    "Noether, G. E. (1987). Sample size determination for some common nonparametric tests. Journal of the American "
    "Statistical Association 82(398), 645–647.",
    "Chernozhukov, V. et al. (2018). Double/debiased machine learning for treatment and structural parameters. "
    "The Econometrics Journal 21(1), C1–C68 (cross-fitting).",
    "Maini, P., Jia, H., Papernot, N. & Dziedzic, A. (2024). LLM Dataset Inference: Did you train on my dataset? "
    "NeurIPS 2024.",
    "Carlini, N. et al. (2023). Extracting training data from diffusion models. USENIX Security 2023.",
    "Dubiński, J., Kowalczuk, A., Pawlak, S., Rokita, P., Trzciński, T. & Morawiecki, P. (2024). Towards more "
    "realistic membership inference attacks on large diffusion models. WACV 2024.",
    "Das, D., Zhang, J. & Tramèr, F. (2024). Blind baselines beat membership inference attacks for foundation "
    "models. arXiv:2406.16201.",
    "Zhang, J., Das, D., Kamath, G. & Tramèr, F. (2025). Membership inference attacks cannot prove that a model was "
    "trained on your data. IEEE SaTML 2025.",
    "Dubiński, J., Kowalczuk, A., Boenisch, F. & Dziedzic, A. (2025). CDI: Copyrighted data identification in "
    "diffusion models. CVPR 2025.",
]

#: What the project's own committed studies measured when controls are mis-chosen (quoted, with their source, in
#: the summary and the alternative-explanations section; the figures are those of the named files).
STUDIES: list[dict[str, str]] = [
    {"finding": "controls by another artist than the suspects (none of the suspects trained on): the test alone "
                "rejected in 20 of 20 draws (100%, 95% CI 83–100%); the blind-baseline gate withheld the verdict "
                "in all 20",
     "source": "results/validity/validity.md (blind-baseline table; scripts/validity_demo.py)"},
    {"finding": "ordinary differences between artists (artist means spread by 0.5 SD, suspects of a new artist, none "
                "trained on): the test alone rejected in 48 of 200 draws (24%, 95% CI 18–31%); the placebo gate's "
                "leave-one-artist-out part failed, withholding the verdict, in 83 of 200",
     "source": "results/stats_review/review.md §3 (scripts/stats_review.py)"},
    {"finding": "one model-free feature shifted 0.7 SD and driving the score: the test alone rejected in 79 of 100 "
                "draws; the blind baseline fired in 97 of 100",
     "source": "results/stats_review/review.md §4"},
    {"finding": "matched controls of the same artist (none of the suspects trained on): the test rejected in 2 of 20 "
                "draws (10%, 95% CI 1–32%, at α = 0.05)",
     "source": "results/validity/validity.md"},
]

#: The same, in one sentence for the plain-language page.
STUDIES_SHORT = ("Mis-chosen comparison works make this kind of test convict falsely: in the project's own studies, "
                 "controls by another artist gave the test alone a false conviction in 20 of 20 draws (the blind "
                 "baseline withheld the verdict in all 20; results/validity/validity.md), and ordinary differences "
                 "between artists in 48 of 200 (results/stats_review/review.md)")

#: The published critiques an opposing expert will cite, and what they say.
CRITIQUES = ("Published critiques show that membership scores on large models often separate members from "
             "non-members because the two sets differ (in date, source or distribution), not because of training "
             "(Das, Zhang & Tramèr 2024: blind baselines that never query the model match or beat the attacks; "
             "Dubiński et al. 2024), and that a membership test cannot prove training without a valid, randomised "
             "or otherwise justified choice of the comparison works (Zhang, Das, Kamath & Tramèr 2025). This "
             "report therefore states how the works were chosen, checks what the records allow, and gives the "
             "measured false-conviction rates of mis-chosen controls.")

DECLARATION: list[str] = [
    "I understand that my duty in giving this evidence is to the court, and that this duty overrides any obligation "
    "to the party instructing me.",
    "The analysis plan shown in this report was fixed before the scores were computed, as its recorded SHA-256 "
    "shows, and I have not selected among analyses after seeing their results.",
    "I have set out every validity check the method ran, including those that failed or could not be run, and the "
    "limitations that apply.",
    "The facts stated in this report are within my own knowledge or are identified as coming from the files whose "
    "SHA-256 fingerprints are listed; the opinions are my true and complete professional opinions.",
    "I have drawn attention to every matter known to me that might adversely affect the validity of my opinion.",
]


def expert_from_config(cfg: dict[str, Any]) -> dict[str, str | None]:
    """``report.expert`` of the run's resolved configuration (plain values only)."""
    rep = cfg.get("report") if isinstance(cfg, dict) else None
    exp = rep.get("expert") if isinstance(rep, dict) else None
    exp = exp if isinstance(exp, dict) else {}
    return {k: (str(exp[k]) if exp.get(k) not in (None, "") else None)
            for k in ("name", "qualifications", "instructing_party")}


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def report_provenance(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for the appendix: when and with which tool build this report was made, and the run's own record."""
    try:
        from importlib.metadata import version

        tool = version("diffusion-membership-audit")
    except Exception:  # pragma: no cover - not installed as a distribution
        tool = "unknown"
    rows = [("report made (UTC)", datetime.now(timezone.utc).isoformat(timespec="seconds")),
            ("tool version (report)", tool),
            ("tool git commit (report)", _git_commit() or "unknown (not a git checkout)")]
    for key, label in (("git_commit", "tool git commit (run)"), ("manifest_sha256", "manifest SHA-256")):
        if metadata.get(key):
            rows.append((label, str(metadata[key])))
    return rows


# ------------------------------------------------------------------------------ the procedure record (issue 21)
def _runs(proc: dict[str, Any]) -> str:
    runs = proc.get("source_runs") or []
    if not runs:
        return ""
    shown = ", ".join(f"`{r}`" for r in runs[:4]) + (" and others (all named in `report_records.json`)"
                                                     if len(runs) > 4 else "")
    return f" by the run{'s' if len(runs) > 1 else ''} {shown}"


def _span(proc: dict[str, Any]) -> str:
    a, b = proc.get("reused_earliest"), proc.get("reused_latest")
    if a and b and a != b:
        return f" between {a} and {b}"
    return f" at {a}" if a else ""


def procedure_sentences(proc: dict[str, Any]) -> list[str]:
    """What the records say about the order of the analysis plan and the scores (section 2 of the report)."""
    plan_when = (f"committed with audit-plan at {proc['committed_utc']} (commitment SHA-256 "
                 f"{proc.get('commitment_sha256')})" if proc.get("committed") else
                 f"declared inside this run at {proc.get('declared_utc')}; it was not committed beforehand with "
                 "audit-plan")
    st = proc["status"]
    n_r, n_c = proc.get("n_reused", 0), proc.get("n_computed", 0)
    out = [f"The analysis plan was {plan_when}."]
    if st == "computed_in_run":
        out.append(f"Every one of the {n_c:,} scores was computed by this run after that, so the plan preceded "
                   "every score, as the run's records show"
                   + ("." if proc.get("committed") else "; a third party can check that order only from this "
                      "run's own records."))
    elif st == "reused_after_plan":
        out.append(f"{n_r:,} scores were taken from the score store, computed{_runs(proc)}{_span(proc)}, after the "
                   f"plan was {'committed' if proc.get('committed') else 'declared'}; {n_c:,} were computed by this "
                   "run. The plan preceded every score.")
    elif st == "scores_predate_plan":
        out.append(f"{n_r:,} of the {n_r + n_c:,} scores were not computed by this run: they were taken from the "
                   f"score store, computed{_runs(proc)}{_span(proc)}, before this plan was "
                   f"{'committed' if proc.get('committed') else 'declared'}. The records therefore do not show that "
                   "the plan was fixed before the scores existed, and this report does not call its verdict "
                   "confirmatory.")
    elif st == "reused_time_unknown":
        out.append(f"{n_r:,} of the {n_r + n_c:,} scores were not computed by this run but taken from the score "
                   "store, and the records do not say when they were computed. They may predate the plan, so this "
                   "report does not call its verdict confirmatory.")
    else:
        out.append("The records do not say whether the scores were computed by this run or taken from earlier runs, "
                   "so they do not show that the plan preceded the scores; this report does not call its verdict "
                   "confirmatory.")
    if proc.get("other_plans"):
        out.append(f"Some reused scores were computed under another plan (SHA-256 {', '.join(proc['other_plans'])}).")
    return out


def procedure_page_one(proc: dict[str, Any]) -> str | None:
    """The page-1 sentence when the order of plan and scores is not established (None when it is)."""
    if proc.get("order_ok"):
        return None
    n_r = proc.get("n_reused", 0)
    if proc["status"] == "scores_predate_plan":
        why = (f"{n_r:,} of its scores were computed by an earlier run{_span(proc)}, before this analysis plan was "
               f"{'committed' if proc.get('committed') else 'declared'}")
    elif proc["status"] == "reused_time_unknown":
        why = f"{n_r:,} of its scores were reused from earlier runs at times the records do not give"
    else:
        why = "its records do not say where its scores came from"
    return (f"Procedure: {why}, so nothing in the records shows that the plan came first. The verdict is "
            "therefore exploratory, not confirmatory; to make it confirmatory, commit the plan with audit-plan and "
            "compute the scores afresh (score_store=null, or a new store).")


def uncommitted_page_one(marks: list[str]) -> str | None:
    """The page-1 label when the tool ran from a working tree with uncommitted changes."""
    if not marks:
        return None
    return ("The tool that produced this report ran from a source tree with uncommitted changes (" + "; ".join(marks)
            + "): the code behind these numbers is not fully identified by its commit.")


def declaration(proc: dict[str, Any]) -> list[str]:
    """The declaration, with its statement about the order of plan and scores following the records."""
    if proc.get("order_ok") and proc.get("committed"):
        order = ("The analysis plan shown in this report was committed with audit-plan before any score used in it "
                 "was computed, as the procedure record in this report shows, and I have not selected among analyses after "
                 "seeing their results.")
    elif proc.get("order_ok"):
        order = ("The analysis plan shown in this report was declared inside the run before any of its scores was "
                 "computed, as the run's own records show (it was not committed beforehand), and I have not selected "
                 "among analyses after seeing their results.")
    else:
        order = ("The records do not show that the analysis plan preceded the scores (see the procedure record). Before I fixed this "
                 "plan I had / had not (strike one) seen results of the earlier runs that computed the reused "
                 "scores, and I have not selected among analyses after seeing their results.")
    return [DECLARATION[0], order, *DECLARATION[2:]]


# ------------------------------------------------------------------------------ alternative explanations (issue 21)
def _status_text(status: str | None) -> str:
    return {"pass": "passed", "fail": "FAILED", "not_run": "not run", "info": "information"}.get(status or "",
                                                                                                 "not run")


def _first_sentence(text: str) -> str:
    """The gate's finding up to its first full stop (the rest is in the gate's own section)."""
    for i, ch in enumerate(text):
        if ch == "." and (i + 1 == len(text) or text[i + 1] == " ") and not text[max(0, i - 2):i].isdigit():
            return text[:i + 1]
    return text


def alternative_explanations(f: dict[str, Any]) -> list[dict[str, str]]:
    """Each alternative explanation of a difference between suspects and controls, what this audit did about it
    and what it found (``examined`` / ``partly`` / ``not examined``). ``f``: facts prepared by the report."""
    rows: list[dict[str, str]] = []
    blind = f.get("blind") or {}
    strat = f.get("strata")
    rows.append({
        "explanation": "Style, subject or period: the suspects differ from the controls in what they show or how they "
                       "are made, and the model scores one kind of picture higher without having trained on either.",
        "done": (f"Blind baseline on model-free features ({_status_text(blind.get('status'))}): "
                 f"{_first_sentence(blind.get('summary', 'not run.'))}"
                 + (f" Each suspect is compared only with controls of its own {strat}." if strat else
                    " The comparison is not stratified.")),
        "status": "examined" if blind.get("status") in ("pass", "fail") else "not examined"})
    d = f.get("date")
    if d:
        done = (f"Among the controls, the score {'changes' if d['p_value'] <= f['alpha'] else 'does not change detectably'} "
                f"with the {d['date_kind']} date (Spearman ρ = {d['rho']:.2f}, p = {d['p_value']:.2g}); the trend "
                f"fitted to the controls predicts a gap of {d['predicted_gap']:.3g} in mean score at the suspects' "
                f"dates, against an observed gap of {d['observed_gap']:.3g}."
                + (" The suspects are dated outside the controls' range, so the trend is carried where it was never "
                   "observed." if d["extrapolated"] > 0.5 else ""))
        status = "examined"
    else:
        done = "The works are not dated on both sides (manifest columns published / created), so it was not checked."
        status = "not examined"
    rows.append({"explanation": "Date: the controls were made or published later than the suspects (as when they are "
                                "chosen after the model's data cutoff), and the score moves with the date.",
                 "done": done + (" The case file states that the controls were chosen by date." if f.get("by_date")
                                 else ""), "status": status})
    rows.append({
        "explanation": "Image difficulty: some pictures are easier for any model to reconstruct (flat, simple, little "
                       "detail) and score as member-like without training.",
        "done": ("The blind baseline's score-aligned test asks whether the picture features alone predict higher scores "
                 "for the suspects."
                 + (" The primary statistic is calibrated against a reference model, which removes how hard each work "
                    "is for any model of this family." if f.get("calibrated") else
                    " No reference model calibrates the scores.")
                 + (f" The analysis plan adjusts the scores for image difficulty (stats.adjust = {f['adjust']})."
                    if f.get("adjust") not in (None, "none") else "")
                 + (" Known non-training works were compared with the controls (negative control): "
                    f"{f['negative']}" if f.get("negative") else "")),
        "status": "examined" if blind.get("status") in ("pass", "fail") else "partly"})
    n_near = f.get("near_duplicates", 0)
    rows.append({
        "explanation": "Copies and derivatives: the model was trained on other copies of the suspect works (resized, "
                       "cropped, re-encoded, on other sites) or on derivative works, not on these files.",
        "done": (f"Near-duplicate search within the evidence: {n_near} listing(s) rejected as re-encoded or resized "
                 "copies of another listed work. Copies outside the evidence (on the web) were not searched; a "
                 "detected difference cannot tell these files from such copies.")
                + (" The reconstruction tests compare the model's own outputs with each work (see that section)."
                   if f.get("reconstruction") else ""),
        "status": "partly"})
    sel = f.get("selection") or {}
    chosen = [f"{role} chosen by {s.get('by')}" + (f" on {s.get('when')}" if s.get("when") else "")
              + (f" ({s.get('criteria')})" if s.get("criteria") else "")
              for role, s in (("suspects", sel.get("suspects") or {}), ("controls", sel.get("controls") or {}))
              if s.get("by") or s.get("criteria")]
    blind_sel = sel.get("blind_to_scores")
    rows.append({
        "explanation": "How the suspects were selected: works picked because they resemble the model's outputs, or "
                       "after seeing scores, are not a fair sample, and the test's error rate no longer holds.",
        "done": ("Stated in the case file: " + "; ".join(chosen) + "." if chosen else
                 "The case file does not say who chose the works, when or how.")
                + {True: " The works were chosen without seeing any membership score.",
                   False: " The works were chosen after membership scores were seen: the verdict's error rate does "
                          "not hold.", None: " Whether the choice was blind to the scores is not stated."}[blind_sel]
                + (" The plan (and the works' SHA-256) were committed before scoring." if f.get("committed") else ""),
        "status": "examined" if chosen and blind_sel is not None else "not examined"})
    cut = f.get("cutoff")
    status = "examined" if cut else "not examined"
    if cut:
        done = (f"Cutoff check against the case file's data cutoff ({cut}): {f.get('n_flagged', 0)} control(s) may have "
                "been published before it (named in the basis section).")
    elif f.get("controls_date_free"):
        done = (f"Every control's stated basis ({f['controls_date_free']}) does not rest on a date, so no cutoff check "
                "applies; that basis is the chooser's statement, which the records cannot check.")
        status = "partly"
    else:
        done = "No data cutoff is stated, so the controls' dates could not be checked against it."
    if f.get("controls_without_basis"):
        done += f" {f['controls_without_basis']} control(s) have no stated basis."
    rows.append({
        "explanation": "Contaminated controls: some controls were in the training data after all (published before "
                       "the cutoff, or copies of them scraped). This hides membership rather than creating it, but it "
                       "makes the per-work p-values and the power wrong.",
        "done": done, "status": status})
    pc = f.get("positive") or {}
    rows.append({
        "explanation": "The method does not work on this model (the scores carry no membership signal), so any "
                       "difference is noise or confounding.",
        "done": (f"Positive control on known training works ({_status_text(pc.get('status'))}): "
                 f"{_first_sentence(pc.get('summary', 'no known members were given.'))}"),
        "status": "examined" if pc.get("status") in ("pass", "fail") else "not examined"})
    return rows
