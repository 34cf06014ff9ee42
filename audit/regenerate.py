"""Regenerate the analysis and the report (HTML + PDF) from a results folder alone (no model, no GPU).

    audit-report results/runs/<date>/<time>_demo [stats.alpha=0.01 ...] [--out DIR] [--formats html,pdf]

A results folder may come from someone else, so it is read as data, never as code: the analysis plan is
rebuilt from the plain values in plan.json (the plan declared before scoring) plus ``stats.<field>=<value>``
overrides, and nothing named in the folder (config.yaml's ``_target_`` entries included) is instantiated.

The folder is verified first (audit.verify: completion marker, every SHA-256, every table row). A folder that
fails is refused; ``--allow-altered`` goes on anyway and labels the report as made from data that failed
verification, saying what failed, and the new seal keeps that record. The score, image and feature files
are never rewritten: in place, only analysis.json, the report, regenerated.json and the seal are written;
with ``--out`` the data files are copied byte for byte. Overrides change the analysis plan; its hash then
differs from the one recorded before scoring and the report labels its verdict exploratory.

The folder must hold regular files only: a symbolic link (to a file, a folder, a device) is refused by name,
also with ``--allow-altered``, so nothing is read from or written to outside the folder. The overrides and the
plan are checked against the folder's scores and images before anything in it is touched: a typo fails in one
line and leaves the sealed folder as it was.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from audit import io, verify
from audit.errors import UserError
from audit.safety import RECORD_NAMES

#: Written by the analysis / report step; everything else in a folder is data and is never rewritten.
_OUTPUTS = {io.ANALYSIS, io.CHECKSUMS, io.COMPLETE, io.REGENERATED}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class RegenerationRefused(UserError):
    """A user-facing refusal (one line)."""


def _check_plan_fits(plan, run: io.RunData) -> None:
    """The plan's attacks and strata exist in the folder's data (before anything is written)."""
    attacks = set(run.scores.df["attack"].unique()) if not run.scores.df.empty else set()
    named = ([plan.primary_attack] if plan.primary_attack else []) + list(plan.features or ())
    missing = [a for a in named if a not in attacks]
    if missing:
        raise RegenerationRefused(f"the plan names attack(s) {missing}, which the folder's scores do not have "
                                  f"(have {sorted(attacks)})")
    for col in plan.strata or ():
        if run.images is None or col not in run.images.columns:
            raise RegenerationRefused(f"stats.strata names column {col!r}, which the folder's image table does not have")


def _overrides(items: list[str]) -> tuple[dict, list[str] | None]:
    """``stats.<field>=<value>`` → plan values; ``report.formats=[...]`` → formats. Values are parsed as YAML
    scalars / lists (safe loader); anything else is refused."""
    plan, formats = {}, None
    report_language = None
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RegenerationRefused(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise RegenerationRefused(f"override {item!r}: cannot parse the value ({e.problem})") from None
        if key.startswith("stats.") and key.count(".") == 1:
            plan[key.split(".", 1)[1]] = value
        elif key == "report.language":  # en | zh | en+zh (issue 22)
            from audit.report.i18n import check_language

            check_language(value)
            report_language = value
        elif key == "report.formats":
            formats = [str(f) for f in (value if isinstance(value, list) else [value])]
        else:
            raise RegenerationRefused(f"override {key!r}: only stats.<field>=..., report.formats=[...] and report.language=... can be "
                                      "changed when regenerating a report")
    return plan, formats, report_language


def _report_settings(config_yaml: str) -> dict:
    """The run's report settings as plain, checked values (formats and file names, nothing else)."""
    try:
        cfg = yaml.safe_load(config_yaml) if config_yaml else {}
    except yaml.YAMLError:
        cfg = {}
    rep = cfg.get("report") if isinstance(cfg, dict) else None
    rep = rep if isinstance(rep, dict) else {}
    out = {"formats": ["html", "pdf"], "filename": "report.html", "pdf_filename": "report.pdf", "language": "en"}
    if rep.get("language") in ("en", "zh", "en+zh"):
        out["language"] = rep["language"]
    if isinstance(rep.get("formats"), list) and all(f in ("html", "pdf") for f in rep["formats"]):
        out["formats"] = list(rep["formats"])
    for key, suffix in (("filename", ".html"), ("pdf_filename", ".pdf")):
        name = rep.get(key)
        # a plain file name in the output folder: never a path (a crafted folder could aim elsewhere)
        if isinstance(name, str) and _NAME.fullmatch(name) and name.endswith(suffix) and name not in _OUTPUTS \
                and name not in RECORD_NAMES and ".." not in name:
            out[key] = name
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="audit-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a results folder written by audit-run")
    ap.add_argument("overrides", nargs="*", help="analysis-plan overrides, e.g. stats.alpha=0.01")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of into the results folder")
    ap.add_argument("--formats", default=None, help="comma-separated report formats (default: the run's, else html,pdf)")
    ap.add_argument("--allow-altered", action="store_true",
                    help="regenerate even if the folder fails verification; the report then says so")
    args = ap.parse_args(argv)
    t0 = time.time()
    src: Path = args.results
    if not src.is_dir() or src.is_symlink():
        raise RegenerationRefused(f"{src} is not a results folder")
    verify.check_regular(src)  # a symbolic link is never followed, not even with --allow-altered
    if not (src / io.SCORES).is_file():
        raise RegenerationRefused(f"{src} is not an audit results folder (no {io.SCORES})")
    plan_values, formats, report_language = _overrides(args.overrides)  # a typo fails here, before anything is read or written
    check = verify.verify(src, recompute=False)  # the analysis is recomputed below anyway
    problems = list(check.problems)
    if problems and not args.allow_altered:
        raise RegenerationRefused(f"{src} failed verification, report not regenerated (--allow-altered to go on "
                                  f"and label the report): " + "; ".join(problems))
    declared = io.read_json(src / io.PLAN, {})
    run = io.read_run(src)
    base = declared.get("plan")
    if not isinstance(base, dict):  # older folders: the plan used by their analysis, else the defaults
        base = (io.read_json(src / io.ANALYSIS, {}) or {}).get("plan") or {"seed": int(run.metadata.get("seed", 0))}
    plan = io.plan_from_values({**base, **plan_values}, where="analysis plan")
    _check_plan_fits(plan, run)

    settings = _report_settings(run.config_yaml)
    if args.formats:
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    settings["formats"] = formats or settings["formats"]
    bad = [f for f in settings["formats"] if f not in ("html", "pdf")]
    if bad or not settings["formats"]:
        raise RegenerationRefused(f"report formats must be html and/or pdf, got {settings['formats']}")
    settings["enabled"] = True
    if report_language is not None:
        settings["language"] = report_language

    out: Path = args.out or src
    in_place = out.resolve() == src.resolve()
    if not in_place and out.exists():
        verify.check_regular(out)  # nothing written through a link out of the output folder either
    if not in_place:
        out.mkdir(parents=True, exist_ok=True)
        for rel in verify._sealable(src):  # the data, byte for byte (never re-serialised)
            if rel in _OUTPUTS or rel in (settings["filename"], settings["pdf_filename"]):
                continue
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, out / rel)
        for stale in (io.COMPLETE, io.CHECKSUMS):
            (out / stale).unlink(missing_ok=True)
    else:
        (src / io.COMPLETE).unlink(missing_ok=True)  # unfinished until the new seal is written
    command = " ".join(["audit-report", str(src), *args.overrides])
    run.metadata = {**run.metadata, "regenerated_with": command}
    if problems:
        run.metadata["altered_data"] = problems
        print("WARNING: regenerating from a folder that failed verification: " + "; ".join(problems))
    from audit.pipeline import analyze_and_report
    from audit.report.i18n import LANGUAGES, localized_name

    for lang in LANGUAGES:  # a report in another language from the earlier analysis must not stay beside the new one
        for name in (settings["filename"], settings["pdf_filename"]):
            stale = out / localized_name(name, lang, first=False)
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
    result = analyze_and_report(run, plan, settings, out, source=src)
    io.write_json(out / io.REGENERATED, {
        "command": command, "regenerated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": os.fspath(src), "source_checksums_sha256": check.checksums_sha256,
        "verification_problems": problems, "plan": plan.to_dict(), "plan_sha256": plan.sha256()})
    verify.seal(out, altered=problems, note=f"regenerated by {command}")
    print(f"regenerated in {time.time() - t0:.1f} s")
    return result


def console(argv: list[str] | None = None) -> None:
    """``audit-report <folder> [stats.<field>=...] [--out DIR] [--formats html,pdf] [--allow-altered]``."""
    try:
        main(argv)
    except (RegenerationRefused, ValueError, FileNotFoundError) as e:  # user errors: one line, exit 2
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"audit-report: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    console()
