"""One executor per scale-out mode: what one process does for its part of an audit.

The pipeline (:func:`audit.pipeline.run_audit`) asks the executor the same five things whatever the mode, and never
asks which mode it is:

1. :meth:`ScaleRun.load_target` — the model with the throughput settings applied (:mod:`audit.parallel.speed`);
2. :meth:`ScaleRun.after_plan` — the plan declared, before any score;
3. :meth:`ScaleRun.score` — this process's scores; ``(None, stats)`` when another process writes the results;
4. :meth:`ScaleRun.describe_attacks` — the attacks as run.json records them;
5. :meth:`ScaleRun.annotate` — run.json's ``scale`` record;
6. :meth:`ScaleRun.reconstruct` — the reconstruction tests, when configured (a sharded run's shards compute their
   units into the store inside step 3, before their record is written; the process that writes the results
   assembles them, computing only the figures' images).

The executors (chosen by :meth:`ScaleRun.from_config` from ``runtime.shards`` / ``runtime.shard`` and the
environment, :func:`audit.parallel.shards.validate_scale_config`):

=================== ===================================================================================== =========
executor            what it does                                                                          writes
=================== ===================================================================================== =========
:class:`SingleRun`  one process scores every batch (through the score store when one is configured)       results
:class:`ShardJob`   a launcher job (``runtime.shard=i``): scores shard i's batches into the store and      record
                    writes its record to ``runtime.shard_dir``
:class:`DistributedRun` an ``accelerate launch`` / ``torchrun`` rank: scores its shard; rank 0 gathers every  results
                    rank's record over gloo, reads all scores from the store and goes on                  (rank 0)
:class:`MergeJob`   the merge-and-report job (``runtime.shard=merge``): checks every shard's record and   results
                    every score, assembles them; never loads the model (:class:`RecordedTarget`)
=================== ===================================================================================== =========

How batches are assigned to shards, and the shard record's format, are in :mod:`audit.parallel.shards`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Mapping

import pandas as pd
import torch

from audit.parallel.shards import (MERGE, RECORD_FORMAT, EvalProgress, _distributed_env, _write_json,
                                   assign_batches, read_records, record_name, shard_batches, validate_scale_config)
from audit.targets.recorded import RecordedTarget, _Info
from audit.store import provenance_summary, stored_params_hash
from audit.types import SCORE_COLUMNS, EvidenceSet, ScoreTable, params_hash

log = logging.getLogger(__name__)

__all__ = ["ScaleRun", "SingleRun", "ShardJob", "DistributedRun", "MergeJob", "EXECUTORS"]


class ScaleRun:
    """One process's part of a (possibly sharded) audit. Subclasses: one per mode (:data:`EXECUTORS`)."""

    #: the mode's name as run.json records it (``scale.mode``)
    mode: ClassVar[str] = "single"
    #: whether this is the merge-and-report job (the target is the shards' record, not a model)
    is_merge: ClassVar[bool] = False

    def __init__(self, n_shards: int = 1, index: int | None = None, shard_dir: Path | None = None) -> None:
        self.n_shards, self.index, self.shard_dir = n_shards, index, shard_dir
        self.speed: dict[str, Any] = {}
        self.records: list[dict[str, Any]] = []
        self._plan_record: dict[str, Any] = {}
        self._run_name = ""
        self._provenance: dict[str, Any] | None = None
        #: the run's ``reconstruction`` config when its tests are enabled (None: not configured)
        self.reconstruction: Any = None
        self.cfg: Any = None

    @property
    def rank0(self) -> bool:
        """Whether this process goes on to write the results folder (analysis, report, seal)."""
        return True

    # -- 0. the executor for this config
    @classmethod
    def from_config(cls, cfg: Any) -> "ScaleRun":
        """The executor of this process (sharding keys checked in one line before anything is built)."""
        mode, n, index = validate_scale_config(cfg)
        rt = cfg.runtime
        shard_dir = Path(str(rt.shard_dir)) if rt.get("shard_dir") else None
        run = EXECUTORS[mode].start(cfg, n_shards=n, index=index, shard_dir=shard_dir)
        rec = cfg.get("reconstruction")
        run.cfg, run.reconstruction = cfg, (rec if rec is not None and rec.get("enabled", False) else None)
        return run

    @classmethod
    def start(cls, cfg: Any, *, n_shards: int, index: int | None, shard_dir: Path | None) -> "ScaleRun":
        """Set up the mode (process group, records) before the model loads."""
        return cls(n_shards=n_shards, index=index, shard_dir=shard_dir)

    # -- 1. the target
    def load_target(self, cfg: Any) -> Any:
        """The model, with the throughput settings of :mod:`audit.parallel.speed` applied."""
        from hydra.utils import instantiate

        from audit.parallel.speed import apply_speed_settings

        target = instantiate(cfg.target, _convert_="all")
        self.speed = apply_speed_settings(target, cfg.runtime)
        return target

    # -- 2. after the plan is declared
    def after_plan(self, plan_record: dict[str, Any], out: Path) -> dict[str, Any]:
        self._plan_record, self._run_name = plan_record, Path(out).name
        return plan_record

    # -- 3. scoring
    def score(self, target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any, *,
              batch_size: int, seed: int, progress: bool) -> tuple[ScoreTable | None, Any]:
        raise NotImplementedError

    # -- 4. and 5. what goes into run.json
    def describe_attacks(self, attacks: Mapping[str, Any]) -> dict[str, Any]:
        return {name: a.describe() for name, a in attacks.items()}

    def annotate(self, metadata: dict[str, Any]) -> None:
        metadata["scale"] = {"mode": self.mode, "shards": 1, "speed": self.speed}

    # -- 6. reconstruction
    def reconstruct(self, target: Any, evidence: EvidenceSet, store: Any, out: Path, *, seed: int,
                    progress: bool) -> Any:
        """The configured reconstruction tests through the score store (:func:`audit.reconstruction.run_reconstruction`):
        in a single run every unit not stored is computed here; after a sharded scoring every unit is stored and
        only the figures' images are computed."""
        from audit.reconstruction import run_reconstruction

        return run_reconstruction(target, evidence, self.reconstruction, out, seed=seed, progress=progress,
                                  store=self.with_settings(store))

    # -- the score store's context
    def store_settings(self) -> str:
        """The non-default denoiser settings as part of the score store's context (see :class:`ScoreStore`)."""
        sp = self.speed or {}
        parts = []
        if (sp.get("attention") or {}).get("setting", "auto") != "auto":
            parts.append(f"attention={sp['attention']['setting']}")
        if sp.get("channels_last"):
            parts.append("channels_last")
        if sp.get("compile"):
            parts.append(f"compile={sp['compile']}")
        return ",".join(parts)

    def with_settings(self, store: Any) -> Any:
        """``store`` with this run's non-default denoiser settings in its context (scores of other settings are kept
        apart); the attack scores and the reconstruction statistics both go through it."""
        settings = self.store_settings()
        return replace(store, settings=settings) if store is not None and settings else store


class SingleRun(ScaleRun):
    """One process, every batch (``runtime.shards=1``, the default)."""

    mode = "single"

    def score(self, target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any, *,
              batch_size: int, seed: int, progress: bool) -> tuple[ScoreTable, Any]:
        from audit.store import score_with_store

        store = self.with_settings(store)
        if store is None:  # one plain pass (score_evidence's own progress bar)
            return score_with_store(target, evidence, attacks, None, batch_size=batch_size, seed=seed,
                                    progress=progress)
        per_image = sum(int(a.evaluations_per_image()) for a in attacks.values())
        bar = EvalProgress(target, len(evidence), per_image, "scoring", progress)
        try:
            return score_with_store(target, evidence, attacks, store, batch_size=batch_size, seed=seed,
                                    progress=progress, on_batch=bar)
        finally:
            bar.close()


class _Sharded(ScaleRun):
    """What the sharded modes share: scoring one shard's batches, assembling every shard's scores from the store,
    and run.json's record of the shards."""

    def _needs_store(self, store: Any) -> Any:
        if store is None:
            raise ValueError("this target does not use the score store (e.g. a black-box service), so its audit "
                             "cannot be sharded: run it with runtime.shards=1")
        return self.with_settings(store)

    def _score_shard(self, target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any,
                     batch_size: int, seed: int, progress: bool) -> tuple[dict[str, Any], Any]:
        """Score this shard's batches into the store; returns (the shard's record, store statistics)."""
        from audit.store import score_with_store

        ids = [r.image_id for r in evidence.records]
        per_image = sum(int(a.evaluations_per_image()) for a in attacks.values())
        mine = shard_batches(ids, batch_size, self.n_shards, self.index)
        n_mine = sum(min(batch_size, len(ids) - k * batch_size) for k in mine)
        bar = EvalProgress(target, n_mine, per_image, f"shard {self.index}/{self.n_shards}", progress)
        before, t0 = int(target.unet_evals), time.time()
        ref_before = _reference_evals(attacks)
        try:
            _, stats = score_with_store(target, evidence, attacks, store, batch_size=batch_size, seed=seed,
                                        progress=progress, batches=set(mine), on_batch=bar)
        finally:
            bar.close()
        scoring_evals = int(target.unet_evals) - before
        recon = self._reconstruct_shard(target, evidence, store, seed, progress)
        record = {
            "format": RECORD_FORMAT, "index": self.index, "n_shards": self.n_shards, "mode": self.mode,
            "batches": mine, "n_batches": len(range(0, len(ids), batch_size)), "batch_size": int(batch_size),
            "n_images": len(ids), "n_images_in_shard": n_mine,
            "image_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "unet_evaluations": scoring_evals,
            "reference_unet_evaluations": _reference_evals(attacks) - ref_before,
            "reconstruction": recon,
            "store": stats.to_dict(), "store_context": store.context, "store_folder": str(store.folder),
            "attack_hashes": {name: params_hash(a.params()) for name, a in attacks.items()},
            "attacks": {name: a.describe() for name, a in attacks.items()},
            "device": str(target.device), "target_info": target.info.to_dict(),
            "plan_sha256": self._plan_record["sha256"], "plan": self._plan_record,
            "speed": self.speed, "scoring_s": time.time() - t0, "host": socket.gethostname(), "pid": os.getpid(),
            "cuda_device": torch.cuda.get_device_name(target.device) if target.device.type == "cuda" else None,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return record, stats

    def _reconstruct_shard(self, target: Any, evidence: EvidenceSet, store: Any, seed: int,
                           progress: bool) -> dict[str, Any] | None:
        """This shard's reconstruction units into the store (None when reconstruction is not configured): generation
        pools by prompt group, inpainting / img2img by batch, dealt by unit number modulo the number of shards
        (:mod:`audit.reconstruction.store`). Their evaluations are the shard's ``reconstruction`` record."""
        if self.reconstruction is None:
            return None
        from audit.reconstruction import ReconstructionConfig, run_reconstruction

        assert self.index is not None
        part = run_reconstruction(target, evidence, self.reconstruction, None, seed=seed, progress=progress,
                                  store=store, shard=(self.index, self.n_shards))
        return {"config_sha256": _config_sha(ReconstructionConfig.from_any(self.reconstruction).to_dict()),
                "unet_evaluations": int(part.unet_evals),
                "base_unet_evaluations": int(part.record.get("base_unet_evaluations", 0)),
                "store": dict(part.store_stats)}

    def reconstruct(self, target: Any, evidence: EvidenceSet, store: Any, out: Path, *, seed: int,
                    progress: bool) -> Any:
        """Rank 0 of a distributed run: every rank computed its units before the records were gathered, so this
        assembles them (only figure images are computed); statistics computed under this run's plan after its
        declaration count as this run's, as the attack scores do (:meth:`_assemble`)."""
        from audit.reconstruction import run_reconstruction

        return run_reconstruction(target, evidence, self.reconstruction, out, seed=seed, progress=progress,
                                  store=self.with_settings(store), computed_for=self._computed_for())

    def _computed_for(self) -> tuple[str, str]:
        return str(self._plan_record.get("sha256", "")), str(self._plan_record.get("declared_utc", ""))

    def _check_reconstruction(self) -> None:
        """Every shard computed its reconstruction units under this run's reconstruction config (a merge or rank 0
        then finds every unit stored); refuses in one line otherwise."""
        from audit.reconstruction import ReconstructionConfig

        want = (_config_sha(ReconstructionConfig.from_any(self.reconstruction).to_dict())
                if self.reconstruction is not None else None)
        have = {r["index"]: (r.get("reconstruction") or {}).get("config_sha256") for r in self.records}
        wrong = sorted(i for i, h in have.items() if h != want)
        if wrong:
            said = "without reconstruction" if want is not None else "with reconstruction"
            raise ValueError(f"merge: shard(s) {wrong} of {self.n_shards} ran {said} or with another reconstruction "
                             f"config than this run's: rerun them with this run's reconstruction settings, then merge")

    def _assemble(self, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any, batch_size: int,
                  seed: int) -> ScoreTable:
        """Every score from the store, in the row order of a single-process run; refuses a gap in one line."""
        r0 = self.records[0]
        if set(attacks) != set(r0["attack_hashes"]):
            raise ValueError(f"merge: the shards scored attacks {sorted(r0['attack_hashes'])}, this merge job "
                             f"configures {sorted(attacks)}: run the merge with the shards' configuration")
        hashes: dict[str, str] = {name: r0["attack_hashes"][name] for name in attacks}  # the run's attack order
        ids = [r.image_id for r in evidence.records]
        if r0["n_images"] != len(ids) or r0["image_ids_sha256"] != hashlib.sha256("\n".join(ids).encode()).hexdigest():
            raise ValueError("merge: the accepted works differ from the shards' (manifest or files changed since)")
        have = store.load()
        done = {(i, a, h): (float(s), str(when), str(plan), str(run)) for i, a, h, s, when, plan, run in zip(
            have["image_id"], have["attack"], have["attack_params_hash"], have["score"], have["computed_at"],
            have["plan_sha256"], have["run"])}
        conditional = bool(r0["target_info"].get("conditional", False))  # the caption is part of the stored key
        owner = assign_batches(ids, batch_size, self.n_shards)
        plan_sha, since = str(self._plan_record.get("sha256", "")), str(self._plan_record.get("declared_utc", ""))
        rows, prov, gaps = [], [], set()
        for k, start in enumerate(range(0, len(ids), batch_size)):
            recs = evidence.records[start:start + batch_size]
            for name, h in hashes.items():
                for r in recs:
                    got = done.get((r.image_id, name, stored_params_hash(h, r.caption if conditional else None)))
                    if got is None:
                        gaps.add(owner[k])
                        got = (None, "", "", "")
                    score, when, plan, run = got
                    rows.append((r.image_id, r.role, name, h, score))
                    # computed for this run: by a shard under the declared plan, after it was declared
                    prov.append((name, plan == plan_sha and when >= since, when, plan, run))
        if gaps:
            raise ValueError(f"merge: shard(s) {sorted(gaps)} of {self.n_shards} have unfinished batches in the "
                             f"score store {store.folder}: rerun those shards alone (runtime.shard=<i>), then merge")
        self._provenance = provenance_summary(
            pd.DataFrame(prov, columns=["attack", "computed_here", "computed_at", "plan_sha256", "run"]),
            list(store.failures), run=self._run_name, plan_sha256=plan_sha)
        df = pd.DataFrame(rows, columns=["image_id", "role", "attack", "attack_params_hash", "score"])
        df["target_fingerprint"] = r0["store_context"]["target_fingerprint"]
        df["seed"] = int(seed)
        return ScoreTable(df[list(SCORE_COLUMNS)])

    def _merged_stats(self) -> Any:
        from audit.store import StoreStats

        s = StoreStats()
        for r in self.records:
            for k, v in r["store"].items():
                setattr(s, k, getattr(s, k) + int(v))
        s.provenance = self._provenance  # read from the store by _assemble
        return s

    def annotate(self, metadata: dict[str, Any]) -> None:
        """The sharding record in run.json; evaluations are the shards' sums."""
        keep = ("index", "batches", "n_images_in_shard", "unet_evaluations", "reference_unet_evaluations", "store",
                "scoring_s", "host", "pid", "device", "cuda_device", "finished_utc")
        metadata["unet_evaluations"] = sum(int(r["unet_evaluations"]) for r in self.records)
        metadata["reference_unet_evaluations"] = sum(int(r["reference_unet_evaluations"]) for r in self.records)
        recon = [r.get("reconstruction") for r in self.records]
        if any(recon):
            keep += ("reconstruction",)
            rec = metadata.setdefault("reconstruction", {})
            rec["shard_unet_evaluations"] = sum(int(x["unet_evaluations"]) for x in recon if x)
            rec["shard_base_unet_evaluations"] = sum(int(x["base_unet_evaluations"]) for x in recon if x)
        metadata["scale"] = {
            "mode": self.mode, "shards": self.n_shards,
            "assignment": "batches of the single-process run, sorted by SHA-256 of their image ids, dealt round-robin",
            "shard_dir": str(self.shard_dir) if self.shard_dir else None,
            "per_shard": [{k: r.get(k) for k in keep} for r in self.records],
            "speed": self.records[0].get("speed", self.speed),
        }


class ShardJob(_Sharded):
    """A launcher's job ``runtime.shard=i``: scores shard i into the store, writes its record; no analysis."""

    mode = "shard"

    @property
    def rank0(self) -> bool:
        return False

    def score(self, target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any, *,
              batch_size: int, seed: int, progress: bool) -> tuple[None, Any]:
        store = self._needs_store(store)
        record, stats = self._score_shard(target, evidence, attacks, store, batch_size, seed, progress)
        assert self.shard_dir is not None and self.index is not None
        self.record_path = self.shard_dir / record_name(self.index, self.n_shards)
        _write_json(self.record_path, record)
        log.info("shard %d of %d done: %s", self.index, self.n_shards, self.record_path)
        print(f"shard {self.index} of {self.n_shards} scored: {stats.computed} scores computed, "
              f"{stats.reused} reused; record: {self.record_path}")
        return None, stats


class DistributedRun(_Sharded):
    """One rank of ``accelerate launch`` / ``torchrun``: scores its shard; rank 0 gathers the records and goes on."""

    mode = "distributed"

    @classmethod
    def start(cls, cfg: Any, *, n_shards: int, index: int | None, shard_dir: Path | None) -> "DistributedRun":
        import torch.distributed as dist

        run = cls(n_shards=n_shards, index=index, shard_dir=shard_dir)
        env = _distributed_env()
        run.local_rank = env[2] if env else 0
        rt = cfg.runtime
        if not dist.is_initialized():  # gloo: object collectives work on CPU and GPU nodes alike
            hours = float(rt.get("dist_timeout_h") or 72)
            dist.init_process_group("gloo", timeout=timedelta(hours=hours))
        device = str(rt.get("device", "cpu"))
        if device in ("cuda", "auto") and torch.cuda.is_available():
            rt.device = f"cuda:{run.local_rank % max(torch.cuda.device_count(), 1)}"  # one GPU per process
        return run

    @property
    def rank0(self) -> bool:
        return self.index == 0

    def after_plan(self, plan_record: dict[str, Any], out: Path) -> dict[str, Any]:
        """Every rank has declared the plan before any rank scores."""
        import torch.distributed as dist

        dist.barrier()
        return super().after_plan(plan_record, out)

    def score(self, target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any, *,
              batch_size: int, seed: int, progress: bool) -> tuple[ScoreTable | None, Any]:
        import torch.distributed as dist

        store = self._needs_store(store)
        record, stats = self._score_shard(target, evidence, attacks, store, batch_size, seed, progress)
        gathered: list[Any] = [None] * self.n_shards
        dist.all_gather_object(gathered, record)
        if self.index != 0:
            print(f"rank {self.index} of {self.n_shards} scored: {stats.computed} scores computed, "
                  f"{stats.reused} reused; rank 0 writes the results")
            return None, stats
        self.records = sorted(gathered, key=lambda r: r["index"])
        self._check_reconstruction()
        return self._assemble(evidence, attacks, store, batch_size, seed), self._merged_stats()


class MergeJob(_Sharded):
    """The merge-and-report job (``runtime.shard=merge``): every shard's record and score, without the model."""

    mode = MERGE
    is_merge = True

    @classmethod
    def start(cls, cfg: Any, *, n_shards: int, index: int | None, shard_dir: Path | None) -> "MergeJob":
        run = cls(n_shards=n_shards, index=index, shard_dir=shard_dir)
        assert shard_dir is not None
        run.records = read_records(shard_dir, n_shards)
        run._shard_store: Any = None
        return run

    def load_target(self, cfg: Any) -> RecordedTarget:
        """The target as the shards recorded it (the model is not loaded)."""
        r = self.records[0]
        ctx = r["store_context"]
        return RecordedTarget(fingerprint=ctx["target_fingerprint"], device=torch.device(r["device"]),
                              dtype=getattr(torch, ctx["dtype"]), info=_Info(r["target_info"]),
                              unet_evals=sum(int(x["unet_evaluations"]) for x in self.records),
                              conditional=bool(r["target_info"].get("conditional", False)))

    def after_plan(self, plan_record: dict[str, Any], out: Path) -> dict[str, Any]:
        """The plan the shards declared before their scoring is the run's plan (the same SHA-256 is required)."""
        from audit import io

        shas = {r["plan_sha256"] for r in self.records}
        if shas != {plan_record["sha256"]}:
            raise ValueError(f"merge: the shards declared analysis plan(s) {sorted(shas)}, this merge job's "
                             f"plan is {plan_record['sha256']}: run the merge with the shards' configuration")
        first = min(self.records, key=lambda r: r["plan"]["declared_utc"])
        plan_record = {**first["plan"], "declared_by": (f"{self.n_shards} shard jobs, each before its scoring; "
                                                        f"earliest: shard {first['index']}")}
        io.write_json(Path(out) / io.PLAN, plan_record)
        return super().after_plan(plan_record, out)

    def score(self, target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any, *,
              batch_size: int, seed: int, progress: bool) -> tuple[ScoreTable, Any]:
        from audit.store import ScoreStore

        self._needs_store(store)
        ctx = self.records[0]["store_context"]  # the store context the shards wrote (same code/version not assumed)
        store = ScoreStore(Path(store.root), ctx["target_fingerprint"], int(ctx["seed"]), ctx["dtype"],
                           ctx["device_type"], version=ctx["package_version"], code=ctx["scoring_code"],
                           settings=ctx.get("denoiser_settings", ""))
        self._check_reconstruction()
        self._shard_store = store
        return self._assemble(evidence, attacks, store, batch_size, seed), self._merged_stats()

    def reconstruct(self, target: Any, evidence: EvidenceSet, store: Any, out: Path, *, seed: int,
                    progress: bool) -> Any:
        """The shards' reconstruction statistics from the store (in the shards' store context), assembled with the
        model loaded here only for the figures' images (the statistics are the shards'; a unit whose stored entry
        fails its integrity check is recomputed here, as in any run, and listed in run.json). The model must be
        the one the shards scored (same fingerprint)."""
        from audit.reconstruction import run_reconstruction

        model = ScaleRun.load_target(self, self.cfg)
        want = self.records[0]["store_context"]["target_fingerprint"]
        if model.fingerprint != want:
            raise ValueError(f"merge: the configured model (fingerprint {model.fingerprint}) is not the one the "
                             f"shards scored ({want}): run the merge with the shards' target")
        shard_store = replace(self._shard_store, plan_sha256=store.plan_sha256, run=store.run)
        return run_reconstruction(model, evidence, self.reconstruction, out, seed=seed, progress=progress,
                                  store=shard_store, computed_for=self._computed_for())


    def describe_attacks(self, attacks: Mapping[str, Any]) -> dict[str, Any]:
        return {name: self.records[0]["attacks"][name] for name in attacks}


#: the executor of each mode (``runtime.shards`` / ``runtime.shard`` / the launch environment)
EXECUTORS: dict[str, type[ScaleRun]] = {cls.mode: cls for cls in (SingleRun, ShardJob, DistributedRun, MergeJob)}


def _config_sha(values: Mapping[str, Any]) -> str:
    import json

    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _reference_evals(attacks: Mapping[str, Any]) -> int:
    """Evaluations made so far by the distinct reference models of calibrated attacks."""
    seen: dict[int, int] = {}
    for a in attacks.values():
        ref = getattr(a, "_reference_target", None)  # a calibrated attack's reference model
        if ref is not None:
            seen[id(ref)] = int(ref.unet_evals)
    return sum(seen.values())
