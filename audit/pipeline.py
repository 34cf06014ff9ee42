"""One audit, end to end: scenario → target → evidence → attacks → ScoreTable → analysis → report.

``run_audit(cfg, out_dir)`` is a plain function over a composed Hydra config; the command-line entry
point (:mod:`audit.cli`) is a thin shim around it, and tests call it directly.
"""
from __future__ import annotations

import logging
import os
import re
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
from audit.attacks import Attack, score_evidence
from audit.stats.analysis import resolve_strata
from audit.store import ScoreStore
from audit.types import EvidenceSet

log = logging.getLogger(__name__)


def build_attacks(cfg: DictConfig) -> dict[str, Attack]:
    attacks = {str(name): instantiate(spec, _convert_="all") for name, spec in (cfg.get("attack") or {}).items()}
    if not attacks:
        raise ValueError("no attack configured: choose at least one, e.g. attack=[loss]")
    return attacks


def read_entries_from_config(data_cfg: DictConfig) -> list[dict[str, Any]]:
    """The manifest's entries (roles and columns validated), before any model is loaded."""
    from audit.data import read_manifest, scan_folder

    if data_cfg.get("manifest"):
        return read_manifest(data_cfg.manifest)
    if data_cfg.get("folder"):
        return scan_folder(data_cfg.folder)
    raise ValueError("data: set data.manifest (CSV/JSONL) or data.folder (role sub-folders)")


def check_entries(entries: list[dict[str, Any]]) -> None:
    """Refuse, before the model loads, a manifest none of whose files exists (a wrong folder, a moved
    manifest). Single missing files are not errors: they are rejected with a reason and reported."""
    present = [e for e in entries if os.path.exists(str(e["path"]))]
    if not present:
        first = entries[0]["path"] if entries else "(none)"
        raise ValueError(f"none of the {len(entries)} files listed in the manifest exists (first: {first}); "
                         "relative paths are read from the manifest's folder")
    if len(present) < len(entries):
        log.warning("%d of %d manifest files do not exist; they will be rejected and reported",
                    len(entries) - len(present), len(entries))


def load_evidence_from_config(data_cfg: DictConfig, resolution: int, progress: bool,
                              entries: list[dict[str, Any]] | None = None) -> EvidenceSet:
    from audit.data import load_evidence

    if entries is None:
        entries = read_entries_from_config(data_cfg)
    return load_evidence(entries, resolution, max_pixels=int(data_cfg.get("max_pixels", 100_000_000)),
                         progress=progress, check_near_duplicates=True)


_DTYPES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16")


def validate_config(cfg: DictConfig) -> None:
    """Check the plain values of a run's config before anything is built or loaded (one-line ValueErrors):
    only the project's classes instantiable, no credential in the config, runtime values, seed, evidence limits
    and the report's formats and file names (:mod:`audit.safety`)."""
    from audit import safety

    safety.check_instantiable(cfg)
    safety.check_no_secrets(cfg)
    if cfg.get("report") is not None:
        safety.check_report_names(cfg.report)
    data = cfg.get("data")
    if data is not None:
        mp = data.get("max_pixels", 100_000_000)
        if isinstance(mp, bool) or not isinstance(mp, int) or mp < 1:
            raise ValueError(f"data.max_pixels must be a positive integer (width × height), got {mp!r}")
    rt = cfg.runtime
    bs = rt.get("batch_size")
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ValueError(f"runtime.batch_size must be a positive integer, got {bs!r}")
    dtype = str(rt.get("dtype", "float32"))
    if dtype not in _DTYPES:
        raise ValueError(f"runtime.dtype must be one of float32, float16, bfloat16, got {dtype!r}")
    device = str(rt.get("device", "cpu"))
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError(f"runtime.device must be auto, cpu, mps, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"runtime.device={device} but CUDA is not available on this machine")
    threads = rt.get("num_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"runtime.num_threads must be null or a positive integer, got {threads!r}")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")


def check_plan_names(cfg: DictConfig, plan: Any, attacks: dict[str, Attack]) -> None:
    """Before the model loads: the plan's primary statistic and feature set must be attacks this run can score
    (the configured ones, plus those the defaults add: the base-calibrated loss of a LoRA target, the black-box or
    collected-outputs defaults that replace the default list)."""
    from audit.defaults import BLACK_BOX_DEFAULTS, CALIBRATED_NAME, DEFAULT_ATTACKS

    names = set(attacks)
    tcfg = cfg.get("target")
    if tcfg is not None and (tcfg.get("lora") or tcfg.get("base") not in (None, "", "???")) and \
            cfg.get("calibrate_lora", True):
        names.add(CALIBRATED_NAME)
    if set(attacks) == set(DEFAULT_ATTACKS):
        names.update(BLACK_BOX_DEFAULTS)
        try:
            from audit.outputs.statistics import OUTPUT_DEFAULTS

            names.update(OUTPUT_DEFAULTS)
        except ImportError:  # pragma: no cover
            pass
    wanted = [("stats.primary_attack", plan.primary_attack)] if plan.primary_attack else []
    wanted += [("stats.features", f) for f in (plan.features or ())]
    for key, name in wanted:
        if name not in names:
            raise ValueError(f"{key} names {name!r}, which is not in this run's attack list {sorted(attacks)}: "
                             f"add it (e.g. 'attack=[{','.join([*attacks, name])}]') or choose one of them")


def check_plan_fits_evidence(plan: Any, entries: list[dict[str, Any]]) -> None:
    """Before the model loads: a stratified plan's column must be in the manifest."""
    strata = list(plan.strata or ())
    if strata and entries and not all(strata[0] in e for e in entries):
        raise ValueError(f"stats.strata names column {strata[0]!r}, which the manifest does not have")


_CLAIM = ".audit-run"


def claim_run_folder(out: Path) -> None:
    """Make ``out`` this run's alone: two audits with the same name started in the same second get the same
    Hydra folder; the second is refused in one line instead of both writing into it."""
    out.mkdir(parents=True, exist_ok=True)
    claim = out / _CLAIM
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(claim.read_text().strip() or 0)
                os.kill(pid, 0)  # the holder is alive (a concurrent run): refuse
                alive = pid != os.getpid()
            except (ValueError, ProcessLookupError, FileNotFoundError):
                alive = False
            except PermissionError:
                alive = True
            if alive:
                raise ValueError(f"results folder {out} is in use by another run (pid {pid}; two runs with the same "
                                 "name started in the same second?): rerun, or give this one another name=") from None
            claim.unlink(missing_ok=True)  # left by a run that ended or died: take it over
    else:
        raise ValueError(f"results folder {out} is in use by another run")
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


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
    validate_config(cfg)  # plain values first: nothing is built on a bad batch size, dtype or seed
    claim_run_folder(out)
    from audit.parallel import ScaleRun

    scale = ScaleRun.from_config(cfg)  # sharding (accelerate / launcher jobs / merge) and throughput keys checked
    rt = cfg.runtime
    if rt.get("num_threads"):
        torch.set_num_threads(int(rt.num_threads))
    progress = bool(rt.get("progress", True))
    timings: dict[str, float] = {}
    plan = instantiate(cfg.stats, _convert_="all")  # alpha, test, gates... checked before anything heavy

    scenario_record = None
    if cfg.get("scenario"):
        t0 = time.time()
        scenario = instantiate(cfg.scenario, _convert_="all")
        if not scenario.is_ready():
            log.info("building the demo scenario under %s (first run only)", scenario.root)
        scenario_record = scenario.prepare(progress=progress)
        timings["scenario_s"] = time.time() - t0

    entries = read_entries_from_config(cfg.data)  # columns and roles, before the model loads
    check_entries(entries)
    attacks = build_attacks(cfg)  # fail on a bad attack config before loading anything heavy
    check_plan_names(cfg, plan, attacks)
    check_plan_fits_evidence(plan, entries)
    commitment = None
    if cfg.get("plan_commitment"):  # a plan committed beforehand with audit-plan: refuse any difference
        from audit import commitment as commit

        commitment = commit.load_commitment(cfg.plan_commitment)
        commit.check_evidence(commitment, entries, cfg.data.get("manifest"))  # before the model loads
    t0 = time.time()
    target = scale.load_target(cfg)  # the merge job reads the shards' records instead of loading the model
    timings["load_target_s"] = time.time() - t0
    if commitment is not None:
        commit.check_target(commitment, target.fingerprint)

    t0 = time.time()
    evidence = load_evidence_from_config(cfg.data, target.info.resolution, progress, entries=entries)
    timings["load_evidence_s"] = time.time() - t0
    for rej in evidence.rejected:
        log.warning("rejected %s (%s): %s", rej.path, rej.role, rej.reason)
    if len(evidence) == 0:
        raise ValueError("no usable artworks: every manifest entry was rejected (see the reasons above)")
    # The analysis plan is completed from the accepted works (stats.auto_strata; base calibration of a LoRA
    # target) and recorded with its hash before any score exists.
    plan, attacks, decisions = complete_plan(cfg, plan, attacks, evidence, target)
    if commitment is not None:
        commit.check_plan(commitment, plan)
    # a black-box service (audit.blackbox): budget printed before anything is sent; a dry run stops here
    if hasattr(target, "begin_run") and not target.begin_run(evidence, attacks, seed=int(cfg.seed), out=out):
        return out
    plan_record = declare_plan(plan, out, decisions)
    if commitment is not None:
        plan_record["committed"] = commit.summary(commitment)
        io.write_json(out / io.PLAN, plan_record)  # still before any score: says which commitment was checked
    plan_record = scale.after_plan(plan_record, out)  # all shards declared it before scoring
    t0 = time.time()
    from audit.stats.blind import blind_features

    features = blind_features(evidence)  # model-free features for the blind-baseline gate
    timings["blind_features_s"] = time.time() - t0

    t0 = time.time()
    # a black-box target answers from its request log / response cache instead, so every run logs every answer
    store_root = cfg.get("score_store") if getattr(target, "uses_score_store", True) else None
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
    provenance = _score_provenance(scores, store_stats, store, plan_record, out.name)
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
    if hasattr(target, "run_summary"):  # a black-box service: requests sent, answered from the log, budget
        metadata["blackbox"] = target.run_summary()
    if hasattr(target, "finish_run"):  # collected outputs (audit.outputs): matches and exhibits, before the seal
        metadata["outputs"] = target.finish_run(out, scores)
    if cfg.get("reconstruction") and cfg.reconstruction.get("enabled", False):
        # reconstruction tests (issue 4): recon_* rows join the ScoreTable, figures + seeds go to <out>/reconstruction
        from audit.reconstruction import run_reconstruction
        from audit.types import ScoreTable

        t0 = time.time()
        recon = run_reconstruction(target, evidence, cfg.reconstruction, out / "reconstruction", seed=int(cfg.seed),
                                   progress=progress)
        scores = ScoreTable.concat([scores, recon.scores])
        metadata["reconstruction"] = recon.metadata()
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
    (out / _CLAIM).unlink(missing_ok=True)
    verify.seal(out)  # the SHA-256 manifest and the completion marker, written last
    return report


def _score_provenance(scores: Any, stats: Any, store: ScoreStore | None, plan_record: dict[str, Any],
                      run: str) -> dict[str, Any]:
    """run.json's ``score_provenance`` (shape: :func:`audit.store.provenance_summary`). A merge of shards reads
    the provenance from the store: scores computed after the shards declared the plan count as this run's."""
    import pandas as pd

    from audit.store import provenance_summary

    plan_sha = str(plan_record.get("sha256", ""))
    prov = getattr(stats, "provenance", None)
    if prov is not None and store is not None:
        return prov
    if prov is not None:  # no store: every score was computed now
        return {**prov, "run": run, "plan_sha256": plan_sha}
    have = store.load() if store is not None else None
    if have is None or have.empty:
        rows = pd.DataFrame({"attack": scores.df["attack"], "computed_here": True, "computed_at": "",
                             "plan_sha256": plan_sha, "run": run})
    else:
        rows = scores.df[["image_id", "attack", "attack_params_hash"]].merge(
            have, on=["image_id", "attack", "attack_params_hash"], how="left")
        since = str(plan_record.get("declared_utc", ""))
        rows["computed_here"] = (rows["plan_sha256"] == plan_sha) & (rows["computed_at"].astype(str) >= since)
    return provenance_summary(rows, list(getattr(store, "failures", []) or []), run=run, plan_sha256=plan_sha)


def complete_plan(cfg: DictConfig, plan: Any, attacks: dict[str, Attack], evidence: EvidenceSet, target: Any = None
                  ) -> tuple[Any, dict[str, Attack], str]:
    """The defaults that depend on what is audited, decided from the accepted works before scoring: strata
    (:func:`audit.stats.analysis.resolve_strata`, on the accepted works so rejected files do not count) and
    base calibration of a LoRA target (:func:`audit.defaults.add_lora_calibration`), the default attack list
    fitted to the target's family (:func:`audit.defaults.fit_default_attacks`) and the default primary statistic
    (:func:`audit.defaults.choose_default_primary`). Returns the plan, the attacks
    and a sentence saying what was decided."""
    from audit.defaults import add_lora_calibration, choose_default_primary, conditioning_decision, fit_default_attacks

    fit_decision = cond_decision = ""
    if target is not None:
        attacks, fit_decision = fit_default_attacks(attacks, target)
        cond_decision = conditioning_decision(target)  # resolution, prompt length, mask, guidance: as trained, why
    plan, strata_decision = resolve_strata(plan, [{"role": r.role, "artist": r.artist} for r in evidence.records])
    attacks, plan, lora_decision = add_lora_calibration(cfg, attacks, plan)
    n_suspect = sum(r.role == "suspect" for r in evidence.records)
    plan, primary_decision = choose_default_primary(cfg, plan, attacks, n_suspect)
    decisions = " ".join(s for s in (cond_decision, fit_decision, strata_decision, lora_decision, primary_decision)
                         if s)
    log.info("analysis plan: %s", decisions)
    return plan, attacks, decisions


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
                            features=run.features, run_folder=source or out)
    for kind, path in written.items():
        print(f"report ({kind}): {path}")
    return Path(written.get("html", out))
