"""One audit, end to end: scenario → target → evidence → attacks → ScoreTable → analysis → report.

``run_audit(cfg, out_dir)`` is a plain function over a composed Hydra config; the command-line entry
point (:mod:`audit.cli`) is a thin shim around it, and tests call it directly. Its phases: preparation
(:func:`audit.prepare.prepare`, shared with ``audit-plan``: config → validated plan, evidence, target) → the plan
declared → scoring through the score store → the run's records written → analysis and report → the seal.
"""
from __future__ import annotations

import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audit import io, verify
from audit.prepare import (  # noqa: F401  (re-exported: the phases before scoring live in audit.prepare)
    build_attacks,
    check_config,
    check_entries,
    check_plan_fits_evidence,
    check_plan_names,
    claim_run_folder,
    complete_plan,
    load_evidence_from_config,
    prepare,
    read_entries_from_config,
    release_run_folder,
    validate_config,
)
from audit.store import ScoreStore

log = logging.getLogger(__name__)


def run_audit(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Run the audit described by ``cfg`` and write every artefact to ``out_dir``. Returns the report path
    (or the results folder when the report is disabled).

    Order (each step's files are on disk before the next starts): config, plan values and manifest validated
    (and a committed plan's evidence checked) → model loaded → evidence decoded and validated → plan completed
    from the accepted works and declared (``plan.json``) → scores persisted batch by batch in the score store → scores,
    images, features, metadata written → analysis → report → SHA-256 manifest and completion marker last.
    """
    t_start = time.time()
    out = Path(out_dir)
    check_config(cfg)  # plain values first: nothing is built on a bad batch size, dtype or seed
    claim_run_folder(out)
    from audit.parallel import ScaleRun

    scale = ScaleRun.from_config(cfg)  # sharding (accelerate / launcher jobs / merge) and throughput keys checked
    rt = cfg.runtime
    if rt.get("num_threads"):
        torch.set_num_threads(int(rt.num_threads))
    progress = bool(rt.get("progress", True))
    # config → validated plan, evidence and target (the same phase audit-plan runs)
    prep = prepare(cfg, load_target=scale.load_target, progress=progress)
    plan, attacks, decisions, target, evidence = prep.plan, prep.attacks, prep.decisions, prep.target, prep.evidence
    commitment, scenario_record, timings = prep.commitment, prep.scenario_record, prep.timings
    # a black-box service (audit.blackbox): budget printed before anything is sent; a dry run stops here
    if not target.begin_run(evidence, attacks, seed=int(cfg.seed), out=out):
        return out
    plan_record = declare_plan(plan, out, decisions)
    if commitment is not None:
        from audit import commitment as commit

        plan_record["committed"] = commit.summary(commitment)
        io.write_json(out / io.PLAN, plan_record)  # still before any score: says which commitment was checked
    plan_record = scale.after_plan(plan_record, out)  # all shards declared it before scoring
    t0 = time.time()
    from audit.stats.blind import blind_features

    features = blind_features(evidence)  # model-free features for the blind-baseline gate
    timings["blind_features_s"] = time.time() - t0

    t0 = time.time()
    # a black-box target answers from its request log / response cache instead, so every run logs every answer
    store_root = cfg.get("score_store") if target.uses_score_store else None
    store = None
    if store_root:
        store = ScoreStore(Path(str(store_root)), target.fingerprint, int(cfg.seed),
                           str(target.dtype).replace("torch.", ""), torch.device(target.device).type,
                           plan_sha256=str(plan_record.get("sha256", "")), run=out.name)
    scores, store_stats = scale.score(target, evidence, attacks, store, batch_size=int(rt.batch_size),
                                      seed=int(cfg.seed), progress=progress)
    timings["scoring_s"] = time.time() - t0
    if scores is None:  # one shard of a sharded run: its scores are in the store, the merge writes the results
        return out
    provenance = _score_provenance(store_stats, store, plan_record, out.name)
    if provenance["integrity_failed"]:
        first = provenance["integrity_failures"][0]
        log.warning("score store: %d stored score(s) failed their integrity check and were recomputed, not reused "
                    "(first: image %s, attack %s, %s: %s); listed in run.json score_provenance",
                    provenance["integrity_failed"], first["image_id"][:12] or "-", first["attack"] or "-",
                    first["file"], first["reason"])

    described = scale.describe_attacks(attacks)
    # reference models (calibrated attacks) count their own evaluations; one entry per distinct model
    reference_evals = {d["reference"]["fingerprint"]: d["reference"]["unet_evals"]
                       for d in described.values() if "reference" in d}
    metadata: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "started_utc": datetime.fromtimestamp(t_start, timezone.utc).isoformat(timespec="seconds"),
        "seed": int(cfg.seed),
        "versions": io.package_versions(),
        "runtime": {"device": str(target.device), "dtype": str(target.dtype).replace("torch.", ""),
                    "batch_size": int(rt.batch_size), "torch_threads": torch.get_num_threads()},
        "target": target.info.to_dict(),
        "attacks": described,
        "unet_evaluations": target.unet_evals,
        "reference_unet_evaluations": sum(reference_evals.values()),
        # what the attacks would cost run one by one; the difference is saved by sharing within batches
        "unet_evaluations_unshared": len(evidence) * sum(a.evaluations_per_image() for a in attacks.values()),
        # scores taken from the score store (a resumed or extended run) were not recomputed
        "score_store": {"folder": str(store.folder) if store else None, **store_stats.to_dict()},
        # per attack: computed now vs reused, when and under which plan and run each was computed (audit.store)
        "score_provenance": provenance,
        "n_images": len(evidence),
        "n_rejected": len(evidence.rejected),
        "scenario": scenario_record,
        "analysis_plan": plan_record,
    }
    scale.annotate(metadata)  # shards, their evaluations and the throughput settings
    if (summary := target.run_summary()) is not None:  # a black-box service: requests sent, from the log, budget
        metadata["blackbox"] = summary
    if (finished := target.finish_run(out, scores)) is not None:  # collected outputs: matches, exhibits (pre-seal)
        metadata["outputs"] = finished
    if cfg.get("reconstruction") and cfg.reconstruction.get("enabled", False):
        # reconstruction tests (issue 4): recon_* rows join the ScoreTable, figures + seeds go to <out>/reconstruction
        from audit.reconstruction import run_reconstruction
        from audit.types import ScoreTable

        t0 = time.time()
        # through the score store like the attack scores (audit.reconstruction.store): a resumed or extended run
        # computes only the works whose statistics are not stored; other denoiser settings are kept apart
        recon = run_reconstruction(target, evidence, cfg.reconstruction, out / "reconstruction", seed=int(cfg.seed),
                                   progress=progress, store=scale.with_settings(store))
        scores = ScoreTable.concat([scores, recon.scores])
        metadata["reconstruction"] = recon.metadata()
        # recon_* rows in score_provenance like the attacks' (computed here or reused, when, under which plan)
        prov, rprov = metadata["score_provenance"], recon.provenance
        prov["attacks"] = {**prov.get("attacks", {}), **rprov.get("attacks", {})}
        prov["integrity_failed"] = int(prov.get("integrity_failed", 0)) + int(rprov.get("integrity_failed", 0))
        prov["integrity_failures"] = (list(prov.get("integrity_failures", [])) +
                                      list(rprov.get("integrity_failures", [])))[:20]
        timings["reconstruction_s"] = time.time() - t0
    metadata["timings"] = dict(timings)
    run = io.RunData(
        scores=scores,
        images=evidence.image_table(),
        rejected=[r.to_dict() for r in evidence.rejected],
        metadata=metadata,
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        features=features,
    )
    # The data are on disk before the analysis runs: whatever the analysis does, the scores are kept.
    io.write_run(out, run)
    report = analyze_and_report(run, plan, cfg.report, out, timings=timings, t_start=t_start)
    release_run_folder(out)
    verify.seal(out)  # the SHA-256 manifest and the completion marker, written last
    return report


def _score_provenance(stats: Any, store: ScoreStore | None, plan_record: dict[str, Any], run: str) -> dict[str, Any]:
    """run.json's ``score_provenance`` (shape: :func:`audit.store.provenance_summary`), as the executor's scoring
    recorded it (a merge of shards reads it from the store: scores computed after the shards declared the plan
    count as this run's). Without a store every score was computed now, by this run under its plan."""
    if store is not None:
        return stats.provenance
    return {**stats.provenance, "run": run, "plan_sha256": str(plan_record.get("sha256", ""))}

def declare_plan(stats_cfg: Any, out: Path, decisions: str | None = None) -> dict[str, Any]:
    """Write the analysis plan with its SHA-256 to ``plan.json`` (before scoring). ``stats_cfg``: an
    :class:`~audit.stats.AnalysisPlan`, or the run's own ``stats`` config (never one read from a results folder).
    ``decisions``: what the defaults decided and why (strata: :func:`audit.stats.analysis.resolve_strata`; base
    calibration of a LoRA target: :func:`audit.defaults.add_lora_calibration`)."""
    plan = instantiate(stats_cfg, _convert_="all") if isinstance(stats_cfg, DictConfig) else stats_cfg
    record = {"sha256": plan.sha256(), "declared_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "plan": plan.to_dict()}
    if decisions:
        record["decisions"] = decisions
    io.write_json(Path(out) / io.PLAN, record)
    return record


def analyze_and_report(run: io.RunData, plan: Any, report_cfg: Any, out: Path,
                       timings: dict[str, float] | None = None, t_start: float | None = None,
                       source: Path | None = None) -> Path:
    """Analyse a ScoreTable and write analysis.json + the report (HTML, and PDF when configured).

    ``plan``: an :class:`~audit.stats.AnalysisPlan` (a run's own config is instantiated by the caller; a
    results folder's plan is rebuilt from plain values by :func:`audit.io.plan_from_values`). Writes only
    analysis.json, run.json's timings and the report: the score, image and feature files are never rewritten.
    Used by runs and by scripts/report.py (``source``: the results folder read, when writing elsewhere).
    Returns the HTML report's path (the folder without a report)."""
    from audit.report import write_reports
    from audit.stats import AnalysisPlan, analyze

    if not isinstance(plan, AnalysisPlan):
        raise TypeError(f"analyze_and_report needs an AnalysisPlan, got {type(plan).__name__}")
    t0 = time.time()
    recorded = (run.metadata.get("analysis_plan") or {}).get("sha256")
    result = analyze(run.scores, run.images, plan, features=run.features, recorded_plan_sha256=recorded)
    timings = dict(timings or {})
    timings["analysis_s"] = time.time() - t0
    if t_start is not None:
        timings["total_s"] = time.time() - t_start
    run.metadata = {**run.metadata, "timings": {**run.metadata.get("timings", {}), **timings}}
    if source is None:  # a run: its metadata gains the timings (regeneration records itself elsewhere)
        io.write_json(out / io.RUN, run.metadata)
    io.write_json(out / io.ANALYSIS, result.to_dict())
    print(f"verdict: {result.verdict.sentence}")
    if report_cfg is None or not report_cfg.get("enabled", True):
        print(f"results: {out}")
        return out
    # the report names the analysis it states (audit-verify checks it against the folder's analysis.json)
    metadata = {**run.metadata, "config_yaml": run.config_yaml, "analysis_sha256": verify.sha256_file(out / io.ANALYSIS)}
    written = write_reports(result, run.scores, run.images, run.rejected, metadata, out,
                            formats=list(report_cfg.get("formats", ["html", "pdf"])),
                            filename=report_cfg.get("filename", "report.html"),
                            pdf_filename=report_cfg.get("pdf_filename", "report.pdf"),
                            features=run.features, run_folder=source or out,
                            language=report_cfg.get("language"))
    for kind, path in written.items():
        print(f"report ({kind}): {path}")
    return Path(written.get("html", out))
