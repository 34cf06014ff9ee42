"""Preparation: config → validated plan, evidence and target — the phases before any score (issue 26).

:func:`prepare` is shared by ``audit-run`` (:func:`audit.pipeline.run_audit`) and ``audit-plan``
(:func:`audit.cli.commit_plan`), so the plan a commitment fixes is the plan the run scores with, decided by the
same code. In order, each failing in one line before the next starts: the config (:func:`check_config`: allowlisted
``_target_`` only, no credential, every plain value against its one declaration in :mod:`audit.schema` — runtime,
seed, data, report, the plan's values —, a CUDA device, the expert file) → the scenario (the demo builds its model
once) → the manifest (columns, roles, files) and the attack list, the plan's names checked against both → a
committed plan's evidence → the model → the evidence decoded and validated → the plan completed from the accepted
works (strata, LoRA calibration, default attacks and primary statistic) → a committed plan's plan and model.

This module imports only lower layers (data, stats, defaults, commitment's checks, safety, schema), never the
pipeline or the command line.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from audit.attacks import Attack
from audit.stats.analysis import resolve_strata
from audit.types import EvidenceSet

log = logging.getLogger(__name__)

#: largest side works are scored at (SDXL / Flux are trained at 1024; 4096 leaves room, 100000 is a broken config)
MAX_RESOLUTION = 4096


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


def validate_config(cfg: DictConfig) -> None:
    """Check a run's config before anything is built or loaded (one-line errors): only the project's classes
    instantiable and no credential in the config (:mod:`audit.safety`), then every plain value against its one
    declaration (:func:`audit.schema.check`: runtime, seed, data limits, report names and language, the plan's
    and the reconstruction's values), then what needs this machine or a file: a CUDA device, the expert file."""
    from audit import safety, schema

    safety.check_instantiable(cfg)
    safety.check_no_secrets(cfg)
    schema.check(cfg)
    device = str(cfg.runtime.get("device", "cpu")) if cfg.get("runtime") is not None else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"runtime.device={device} but CUDA is not available on this machine")
    if cfg.get("expert") is not None:  # the expert file is read and checked now, not after scoring (issue 22)
        from omegaconf import OmegaConf

        from audit.report.expert import load_expert

        load_expert({"expert": OmegaConf.to_container(cfg.expert, resolve=True),
                     "report": OmegaConf.to_container(cfg.report, resolve=True) if cfg.get("report") else {}})


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


def release_run_folder(out: Path) -> None:
    """The run is about to seal its folder: the claim goes (it is not part of the results)."""
    (Path(out) / _CLAIM).unlink(missing_ok=True)


def complete_plan(cfg: DictConfig, plan: Any, attacks: dict[str, Attack], evidence: EvidenceSet, target: Any = None
                  ) -> tuple[Any, dict[str, Attack], str]:
    """The defaults that depend on what is audited, decided from the accepted works before scoring: strata
    (:func:`audit.stats.analysis.resolve_strata`, on the accepted works so rejected files do not count) and
    base calibration of a LoRA target (:func:`audit.defaults.add_lora_calibration`), the default attack list
    fitted to the target's family (:func:`audit.defaults.fit_default_attacks`) and the default primary statistic
    (:func:`audit.defaults.choose_default_primary`). Returns the plan, the attacks
    and a sentence saying what was decided."""
    from audit.defaults import (add_lora_calibration, adjustment_decision, choose_default_primary, conditioning_decision,
                                fit_default_attacks)

    fit_decision = cond_decision = ""
    if target is not None:
        attacks, fit_decision = fit_default_attacks(attacks, target)
        cond_decision = conditioning_decision(target)  # resolution, prompt length, mask, guidance: as trained, why
    plan, strata_decision = resolve_strata(plan, [{"role": r.role, "artist": r.artist} for r in evidence.records])
    attacks, plan, lora_decision = add_lora_calibration(cfg, attacks, plan)
    n_suspect = sum(r.role == "suspect" for r in evidence.records)
    plan, primary_decision = choose_default_primary(cfg, plan, attacks, n_suspect)
    adjust_decision = adjustment_decision(cfg, plan)
    decisions = " ".join(s for s in (cond_decision, fit_decision, strata_decision, lora_decision, primary_decision,
                                     adjust_decision) if s)
    log.info("analysis plan: %s", decisions)
    return plan, attacks, decisions


def check_config(cfg: DictConfig) -> None:
    """The config's plain values (:func:`validate_config`), before anything is built, loaded or written."""
    validate_config(cfg)


@dataclass
class Prepared:
    """What the phases before scoring produce."""

    plan: Any  # the completed AnalysisPlan
    attacks: dict[str, Attack]
    decisions: str  # what the defaults decided and why (plan.json)
    entries: list[dict[str, Any]]
    target: Any
    evidence: EvidenceSet
    commitment: dict[str, Any] | None = None  # the committed plan checked (plan_commitment=...)
    scenario_record: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def prepare(cfg: DictConfig, *, load_target: Callable[[DictConfig], Any] | None = None,
            progress: bool = True) -> Prepared:
    """Config → validated plan, evidence and target (no score computed). ``load_target``: how the model is
    loaded (a scale-out run's :meth:`audit.parallel.ScaleRun.load_target`; default: the config's target).
    Call :func:`check_config` first."""
    from audit import commitment as commit

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
        commitment = commit.load_commitment(cfg.plan_commitment)
        commit.check_evidence(commitment, entries, cfg.data.get("manifest"))  # before the model loads
    t0 = time.time()
    target = load_target(cfg) if load_target is not None else instantiate(cfg.target, _convert_="all")
    timings["load_target_s"] = time.time() - t0
    if commitment is not None:
        commit.check_target(commitment, target.fingerprint)

    res = target.info.resolution
    if isinstance(res, int) and not 8 <= res <= MAX_RESOLUTION:  # e.g. a config with sample_size=100000
        raise ValueError(f"the model scores works at {res} px, outside 8..{MAX_RESOLUTION}: check its config "
                         "(sample_size) or set target.resolution")
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
    return Prepared(plan=plan, attacks=attacks, decisions=decisions, entries=entries, target=target,
                    evidence=evidence, commitment=commitment, scenario_record=scenario_record, timings=timings)
