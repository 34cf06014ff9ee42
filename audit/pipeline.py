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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audit import io, verify
from audit.prepare import (  # noqa: F401  (re-exported: the phases before scoring live in audit.prepare)
    Prepared,
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

    The phases, each a function below whose files are on disk before the next starts: the config's plain values
    (:func:`audit.prepare.check_config`) → the scale-out executor (:mod:`audit.parallel.executors`) →
    preparation (:func:`audit.prepare.prepare`, shared with ``audit-plan``: plan, manifest, model, evidence, the
    completed plan) → the plan declared (:func:`declare_run_plan`, ``plan.json``) → scoring through the score
    store (:func:`score_phase`) → the run's record (:func:`run_record`) → reconstruction tests
    (:func:`reconstruction_phase`) → scores, images, features and metadata written → analysis and report
    (:func:`analyze_and_report`) → the SHA-256 manifest and completion marker last (:func:`audit.verify.seal`).
    """
    t_start = time.time()
    out = Path(out_dir)
    check_config(cfg)  # plain values first: nothing is built on a bad batch size, dtype or seed
    claim_run_folder(out)
    from audit.parallel import ScaleRun

    scale = ScaleRun.from_config(cfg)  # how the sharding keys fit together; this process's executor
    if cfg.runtime.get("num_threads"):
        torch.set_num_threads(int(cfg.runtime.num_threads))
    progress = bool(cfg.runtime.get("progress", True))
    prep = prepare(cfg, load_target=scale.load_target, progress=progress)
    # a black-box service (audit.blackbox): budget printed before anything is sent; a dry run stops here
    if not prep.target.begin_run(prep.evidence, prep.attacks, seed=int(cfg.seed), out=out):
        return out
    plan_record = declare_run_plan(prep, scale, out)
    scored = score_phase(cfg, prep, scale, plan_record, out, progress)
    if scored is None:  # one shard of a sharded run: its scores are in the store, the merge writes the results
        return out
    metadata = run_record(cfg, prep, scale, scored, plan_record, t_start, out)
    scores = reconstruction_phase(cfg, prep, scale, scored, metadata, out, progress)
    metadata["timings"] = dict(prep.timings)
    run = io.RunData(scores=scores, images=prep.evidence.image_table(),
                     rejected=[r.to_dict() for r in prep.evidence.rejected], metadata=metadata,
                     config_yaml=OmegaConf.to_yaml(cfg, resolve=True), features=scored.features)
    # The data are on disk before the analysis runs: whatever the analysis does, the scores are kept.
    io.write_run(out, run)
    report = analyze_and_report(run, prep.plan, cfg.report, out, timings=prep.timings, t_start=t_start)
    release_run_folder(out)
    verify.seal(out)  # the SHA-256 manifest and the completion marker, written last
    return report


@dataclass
class Scored:
    """What the scoring phase leaves: the scores (every process that goes on), where they were kept, and the
    model-free features of the works (for the blind-baseline gate and the difficulty adjustment)."""

    scores: Any  # ScoreTable
    stats: Any  # audit.store.StoreStats
    store: ScoreStore | None
    provenance: dict[str, Any]
    features: Any


def declare_run_plan(prep: Prepared, scale: Any, out: Path) -> dict[str, Any]:
    """``plan.json`` with the completed plan's SHA-256 (and the commitment it was checked against) before any
    score; a sharded run's processes all declare it before any scores (:meth:`ScaleRun.after_plan`)."""
    plan_record = declare_plan(prep.plan, out, prep.decisions)
    if prep.commitment is not None:
        from audit import commitment as commit

        plan_record["committed"] = commit.summary(prep.commitment)
        io.write_json(out / io.PLAN, plan_record)  # still before any score: says which commitment was checked
    return scale.after_plan(plan_record, out)


def score_phase(cfg: DictConfig, prep: Prepared, scale: Any, plan_record: dict[str, Any], out: Path,
                progress: bool) -> Scored | None:
    """The works' model-free features, then every attack score through the score store (the executor decides
    which batches this process computes). None for a process that leaves the results to another."""
    from audit.stats.blind import blind_features

    target, timings = prep.target, prep.timings
    t0 = time.time()
    features = blind_features(prep.evidence)
    timings["blind_features_s"] = time.time() - t0
    t0 = time.time()
    # a black-box target answers from its request log / response cache instead, so every run logs every answer
    store_root = cfg.get("score_store") if target.uses_score_store else None
    store = None
    if store_root:
        store = ScoreStore(Path(str(store_root)), target.fingerprint, int(cfg.seed),
                           str(target.dtype).replace("torch.", ""), torch.device(target.device).type,
                           plan_sha256=str(plan_record.get("sha256", "")), run=out.name)
    scores, stats = scale.score(target, prep.evidence, prep.attacks, store, batch_size=int(cfg.runtime.batch_size),
                                seed=int(cfg.seed), progress=progress)
    timings["scoring_s"] = time.time() - t0
    if scores is None:
        return None
    provenance = _score_provenance(stats, store, plan_record, out.name)
    if provenance["integrity_failed"]:
        first = provenance["integrity_failures"][0]
        log.warning("score store: %d stored score(s) failed their integrity check and were recomputed, not reused "
                    "(first: image %s, attack %s, %s: %s); listed in run.json score_provenance",
                    provenance["integrity_failed"], first["image_id"][:12] or "-", first["attack"] or "-",
                    first["file"], first["reason"])
    return Scored(scores=scores, stats=stats, store=store, provenance=provenance, features=features)


def run_record(cfg: DictConfig, prep: Prepared, scale: Any, scored: Scored, plan_record: dict[str, Any],
               t_start: float, out: Path) -> dict[str, Any]:
    """``run.json``: the command, versions, runtime, target, attacks, evaluations, the score store and each score's
    provenance, the scale-out record and what the target reports of its run (a service's requests and budget;
    collected outputs' matches and exhibits)."""
    target, evidence, attacks, store = prep.target, prep.evidence, prep.attacks, scored.store
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
                    "batch_size": int(cfg.runtime.batch_size), "torch_threads": torch.get_num_threads()},
        "target": target.info.to_dict(),
        "attacks": described,
        "unet_evaluations": target.unet_evals,
        "reference_unet_evaluations": sum(reference_evals.values()),
        # what the attacks would cost run one by one; the difference is saved by sharing within batches
        "unet_evaluations_unshared": len(evidence) * sum(a.evaluations_per_image() for a in attacks.values()),
        # scores taken from the score store (a resumed or extended run) were not recomputed
        "score_store": {"folder": str(store.folder) if store else None, **scored.stats.to_dict()},
        # per attack: computed now vs reused, when and under which plan and run each was computed (audit.store)
        "score_provenance": scored.provenance,
        "n_images": len(evidence),
        "n_rejected": len(evidence.rejected),
        "scenario": prep.scenario_record,
        "analysis_plan": plan_record,
    }
    scale.annotate(metadata)  # shards, their evaluations and the throughput settings
    if (summary := target.run_summary()) is not None:  # a black-box service: requests sent, from the log, budget
        metadata["blackbox"] = summary
    if (finished := target.finish_run(out, scored.scores)) is not None:  # collected outputs: matches, exhibits
        metadata["outputs"] = finished
    return metadata


def reconstruction_phase(cfg: DictConfig, prep: Prepared, scale: Any, scored: Scored, metadata: dict[str, Any],
                         out: Path, progress: bool) -> Any:
    """The reconstruction tests when configured (issue 4): their ``recon_*`` rows join the scores, figures and
    seeds go to ``<out>/reconstruction``; through the score store like the attack scores
    (:mod:`audit.reconstruction.store`), so a resumed or extended run computes only the works not stored; in a
    sharded run the shards computed every unit (:meth:`audit.parallel.executors.ScaleRun.reconstruct`)."""
    if not (cfg.get("reconstruction") and cfg.reconstruction.get("enabled", False)):
        return scored.scores
    from audit.types import ScoreTable

    t0 = time.time()
    recon = scale.reconstruct(prep.target, prep.evidence, scored.store, out / "reconstruction", seed=int(cfg.seed),
                              progress=progress)
    # a sharded run's shards computed the statistics (scale.annotate recorded their evaluations); here the figures
    metadata["reconstruction"] = {**recon.metadata(), **{k: v for k, v in metadata.get("reconstruction", {}).items()
                                                         if k.startswith("shard_")}}
    # recon_* rows in score_provenance like the attacks' (computed here or reused, when, under which plan)
    prov, rprov = metadata["score_provenance"], recon.provenance
    prov["attacks"] = {**prov.get("attacks", {}), **rprov.get("attacks", {})}
    prov["integrity_failed"] = int(prov.get("integrity_failed", 0)) + int(rprov.get("integrity_failed", 0))
    prov["integrity_failures"] = (list(prov.get("integrity_failures", [])) +
                                  list(rprov.get("integrity_failures", [])))[:20]
    prep.timings["reconstruction_s"] = time.time() - t0
    return ScoreTable.concat([scored.scores, recon.scores])


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
    io.write_json(out / io.ANALYSIS, {**result.to_dict(), verify.PRODUCED_BY: verify.statistics_code()})
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
