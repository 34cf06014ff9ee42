"""Regenerate the analysis and the HTML report from a results folder alone (no model, no GPU).

    python scripts/report.py results/runs/<date>/<time>_demo [stats.alpha=0.01 ...]

Overrides change the analysis plan (config group `stats`); the report then labels itself as regenerated.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from audit import io
from audit.pipeline import analyze_and_report


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a results folder written by audit-run")
    ap.add_argument("overrides", nargs="*", help="dotlist overrides of the run's config, e.g. stats.alpha=0.01")
    ap.add_argument("--out", type=Path, default=None, help="write here instead of into the results folder")
    args = ap.parse_args(argv)
    run = io.read_run(args.results)
    cfg = OmegaConf.create(run.config_yaml or "{}")
    if args.overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.overrides))
    if "stats" not in cfg:
        cfg.stats = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/stats/default.yaml")
        cfg.stats.seed = int(run.metadata.get("seed", 0))
    run.metadata = {**run.metadata, "regenerated_with": " ".join(["scripts/report.py", str(args.results), *args.overrides])}
    report_cfg = cfg.get("report") or OmegaConf.create({"enabled": True, "filename": "report.html"})
    return analyze_and_report(run, cfg.stats, report_cfg, args.out or args.results)


if __name__ == "__main__":
    main()
