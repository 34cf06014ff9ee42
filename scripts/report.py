"""Regenerate the analysis and the report (HTML + PDF) from a results folder alone (no model, no GPU).

    python scripts/report.py results/runs/<date>/<time>_demo [stats.alpha=0.01 ...] [--out DIR] [--formats html,pdf]

Reads scores.parquet, images.parquet, features.parquet (model-free features, if present), rejected.json,
run.json and config.yaml; writes analysis.json, report.html and report.pdf. Overrides change the
analysis plan (config group `stats`); the plan's hash then differs from the one recorded before scoring
and the report labels its verdict exploratory.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/report.py` from a checkout

from audit import io  # noqa: E402
from audit.pipeline import analyze_and_report  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a results folder written by audit-run")
    ap.add_argument("overrides", nargs="*", help="dotlist overrides of the run's config, e.g. stats.alpha=0.01")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of into the results folder")
    ap.add_argument("--formats", default=None, help="comma-separated report formats (default: the run's, else html,pdf)")
    args = ap.parse_args(argv)
    t0 = time.time()
    run = io.read_run(args.results)
    cfg = OmegaConf.create(run.config_yaml or "{}")
    if args.overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.overrides))
    if "stats" not in cfg:
        cfg.stats = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/stats/default.yaml")
        cfg.stats.seed = int(run.metadata.get("seed", 0))
    run.metadata = {**run.metadata, "regenerated_with": " ".join(["scripts/report.py", str(args.results), *args.overrides])}
    report_cfg = cfg.get("report") or OmegaConf.create({"enabled": True, "filename": "report.html"})
    report_cfg = OmegaConf.merge(report_cfg, {"enabled": True})
    if args.formats:
        report_cfg.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    elif "formats" not in report_cfg:
        report_cfg.formats = ["html", "pdf"]
    out = analyze_and_report(run, cfg.stats, report_cfg, args.out or args.results, source=args.results)
    print(f"regenerated in {time.time() - t0:.1f} s")
    return out


if __name__ == "__main__":
    main()
