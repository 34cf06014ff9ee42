"""Fixed prose of the report: glossary, references, the expert's declaration, provenance of the report itself.

Nothing here states a number about an audit (numbers come from ``analysis.json`` through the template).
"""
from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["GLOSSARY", "BIBLIOGRAPHY", "DECLARATION", "expert_from_config", "report_provenance"]

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
]

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
