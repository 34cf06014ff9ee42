"""One audit split into shards: several processes of a node (``accelerate launch``) or jobs of a cluster
(Hydra's submitit launcher), merged into one results folder, one analysis and one report.

How a run is split. The unit of work is a *batch of the single-process run* — ``range(0, n, batch_size)`` over
the evidence order — so every shard computes exactly the batches an unsharded run computes, with the same
per-image noise, and the merged scores are bit-identical to a single-process run (batch boundaries matter
at float32 rounding level, see README). Batches are assigned by content: each batch's key is the SHA-256 of
its images' SHA-256 ids; batches sorted by key are dealt round-robin to the shards. The assignment depends
only on the accepted works, their order and the batch size, so every process and every rerun agrees on it.

Where the scores meet. Every shard scores its batches through the content-keyed score store
(:mod:`audit.store`): each finished batch is one parquet file in the store's context folder, so merging is
reading the store. A shard that dies leaves its finished batches there; rerunning that shard alone computes
only what it had not finished. Each shard also writes a small record (evaluations, timings, the store
context, the attacks' parameter hashes, the declared plan) that the merge collects into ``run.json``.

Modes (decided by :meth:`ScaleRun.from_config` from ``runtime.shards`` / ``runtime.shard`` and the
environment):

* ``single`` — one process, no sharding (``runtime.shards=1``, the default);
* ``distributed`` — ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1): rank r scores shard r; the
  ranks' records are gathered over a gloo process group; rank 0 then reads every shard's scores from the
  store and writes the one results folder, analysis and report; the other ranks write nothing else;
* ``shard`` — a job of a launcher (``runtime.shard=i``): scores shard i and writes its record to
  ``runtime.shard_dir``; no analysis;
* ``merge`` — the merge-and-report job (``runtime.shard=merge``): checks that every shard's record is present
  and every score is in the store (otherwise it names the shards to rerun, in one line), then assembles,
  analyses, reports and seals — without loading the model (the target's fingerprint, dtype and description
  come from the shard records).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from audit.types import SCORE_COLUMNS, EvidenceSet, ScoreTable, params_hash

log = logging.getLogger(__name__)

RECORD_FORMAT = "audit-shard/1"
MERGE = "merge"


# ---------------------------------------------------------------------------------------------- assignment
def batch_keys(image_ids: list[str], batch_size: int) -> list[str]:
    """SHA-256 of each batch's image ids (batches = ``range(0, n, batch_size)`` over ``image_ids``)."""
    keys = []
    for start in range(0, len(image_ids), batch_size):
        blob = "\n".join(image_ids[start:start + batch_size]).encode()
        keys.append(hashlib.sha256(blob).hexdigest())
    return keys


def assign_batches(image_ids: list[str], batch_size: int, n_shards: int) -> list[int]:
    """The shard (0 … n_shards-1) of every batch: batches sorted by content key, dealt round-robin.

    Balanced to within one batch, deterministic, and the same in every process that sees the same works."""
    if n_shards < 1:
        raise ValueError(f"runtime.shards must be a positive integer, got {n_shards!r}")
    keys = batch_keys(image_ids, batch_size)
    shard = [0] * len(keys)
    for rank, k in enumerate(sorted(range(len(keys)), key=lambda i: keys[i])):
        shard[k] = rank % n_shards
    return shard


def shard_batches(image_ids: list[str], batch_size: int, n_shards: int, index: int) -> list[int]:
    return [k for k, s in enumerate(assign_batches(image_ids, batch_size, n_shards)) if s == index]


# ---------------------------------------------------------------------------------------------- config
def _distributed_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by accelerate / torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def validate_scale_config(cfg: Any) -> tuple[str, int, int | None]:
    """Check the sharding keys (one-line ValueErrors). Returns (mode, number of shards, this shard's index)."""
    from audit.parallel.speed import validate_speed_config

    rt = cfg.runtime
    validate_speed_config(rt)
    n = rt.get("shards", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"runtime.shards must be a positive integer, got {n!r}")
    shard = rt.get("shard")
    env = _distributed_env()
    if env is not None:
        rank, world, _ = env
        if shard is not None:
            raise ValueError(f"runtime.shard={shard!r} cannot be combined with a {world}-process launch "
                             "(accelerate / torchrun sets each process's shard)")
        if n not in (1, world):
            raise ValueError(f"runtime.shards={n} but {world} processes were launched: leave runtime.shards at 1 "
                             f"or set it to {world}")
        mode, n, index = "distributed", world, rank
    elif shard is None:
        if n > 1:
            raise ValueError(f"runtime.shards={n} needs a launcher: accelerate launch (one process per shard), "
                             "audit-run -m launcher=local|slurm, or runtime.shard=<i>|merge for one job")
        mode, index = "single", None
    elif str(shard) == MERGE:
        mode, index = MERGE, None
    elif isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < n:
        raise ValueError(f"runtime.shard must be null, 'merge' or an integer 0..{n - 1} (runtime.shards={n}), "
                         f"got {shard!r}")
    else:
        mode, index = "shard", shard
    if mode != "single":
        if not cfg.get("score_store"):
            raise ValueError("a sharded run needs a score store that every shard can reach: set score_store=<folder> "
                             "(a shared file system on a cluster)")
        rec = cfg.get("reconstruction")
        if rec is not None and rec.get("enabled", False):
            raise ValueError("reconstruction tests are not sharded: run them with runtime.shards=1 "
                             "(or reconstruction=none for the sharded scoring run)")
        if mode in ("shard", MERGE) and not rt.get("shard_dir"):
            raise ValueError(f"runtime.shard={shard} needs runtime.shard_dir (the folder where the shards' records "
                             "meet; the launcher sets it)")
    return mode, n, index


# ---------------------------------------------------------------------------------------------- records
@dataclass
class RecordedTarget:
    """What the merge needs of the target, read from the shard records instead of loading the model."""

    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    info: Any
    unet_evals: int = 0
    conditional: bool = False


class _Info:
    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)
        self.resolution = int(values["resolution"])
        self.conditional = bool(values.get("conditional", False))
        self.fingerprint = str(values.get("fingerprint", ""))

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)


def record_name(index: int, n: int) -> str:
    return f"shard-{index:03d}-of-{n:03d}.json"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- progress
class EvalProgress:
    """A progress bar in denoiser evaluations: evaluations / s and an ETA for this process's whole part."""

    def __init__(self, target: Any, total_images: int, evals_per_image: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        self.target, self.per_image = target, max(int(evals_per_image), 1)
        self.last = int(getattr(target, "unet_evals", 0))
        self.bar = tqdm(total=total_images * self.per_image, desc=desc, unit="eval", unit_scale=True,
                        disable=not enabled, smoothing=0.1, dynamic_ncols=True)

    def __call__(self, n_images: int, computed: bool) -> None:
        now = int(getattr(self.target, "unet_evals", 0))
        if computed:
            self.bar.update(now - self.last)
            # a batch can cost fewer evaluations than declared (shared outputs); keep the total honest
            self.bar.total = max(self.bar.total - (n_images * self.per_image - (now - self.last)), self.bar.n)
        else:  # reused from the store: nothing to compute
            self.bar.total = max(self.bar.total - n_images * self.per_image, self.bar.n)
        self.bar.refresh()
        self.last = now

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class ScaleRun:
    """One process's part of a (possibly sharded) audit; the pipeline calls it at five points."""

    mode: str = "single"
    n_shards: int = 1
    index: int | None = None
    shard_dir: Path | None = None
    local_rank: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[str, Any] = field(default_factory=dict)
    record_path: Path | None = None
    _t0: float = field(default_factory=time.time)

    # -- 1. before anything is built
    @classmethod
    def from_config(cls, cfg: Any) -> "ScaleRun":
        mode, n, index = validate_scale_config(cfg)
        rt = cfg.runtime
        run = cls(mode=mode, n_shards=n, index=index,
                  shard_dir=Path(str(rt.shard_dir)) if rt.get("shard_dir") else None)
        if mode == "distributed":
            rank, world, local = _distributed_env()
            run.local_rank = local
            import torch.distributed as dist

            if not dist.is_initialized():  # gloo: object collectives work on CPU and GPU nodes alike
                hours = float(rt.get("dist_timeout_h", 72) or 72)
                dist.init_process_group("gloo", timeout=timedelta(hours=hours))
            device = str(rt.get("device", "cpu"))
            if device in ("cuda", "auto") and torch.cuda.is_available():
                rt.device = f"cuda:{local % max(torch.cuda.device_count(), 1)}"  # one GPU per process
        if mode == MERGE:
            run.records = run._read_records()
        return run

    @property
    def is_merge(self) -> bool:
        return self.mode == MERGE

    @property
    def rank0(self) -> bool:
        return self.mode in ("single", MERGE) or (self.mode == "distributed" and self.index == 0)

    def _read_records(self) -> list[dict[str, Any]]:
        assert self.shard_dir is not None
        recs, missing = [], []
        for i in range(self.n_shards):
            p = self.shard_dir / record_name(i, self.n_shards)
            if not p.is_file():
                missing.append(i)
                continue
            recs.append(json.loads(p.read_text()))
        if missing:
            raise ValueError(f"merge: no record of shard(s) {missing} of {self.n_shards} in {self.shard_dir}: "
                             "run them first (runtime.shard=<i>), then the merge again")
        first = recs[0]
        for r in recs[1:]:
            for key in ("store_context", "attack_hashes", "batch_size", "n_images", "plan_sha256", "image_ids_sha256"):
                if r.get(key) != first.get(key):
                    raise ValueError(f"merge: shard {r['index']} differs from shard {first['index']} in {key}: "
                                     "the shards were not run with the same configuration")
        return recs

    # -- 2. the target (the merge does not load the model)
    def load_target(self, cfg: Any) -> Any:
        """The model (with the throughput settings of :mod:`audit.parallel.speed` applied), or for the merge job
        the target as the shards recorded it."""
        if self.is_merge:
            return self.recorded_target()
        from hydra.utils import instantiate

        from audit.parallel.speed import apply_speed_settings

        target = instantiate(cfg.target, _convert_="all")
        self.speed = apply_speed_settings(target, cfg.runtime)
        return target

    def recorded_target(self) -> RecordedTarget:
        r = self.records[0]
        ctx = r["store_context"]
        return RecordedTarget(fingerprint=ctx["target_fingerprint"], device=torch.device(r["device"]),
                              dtype=getattr(torch, ctx["dtype"]), info=_Info(r["target_info"]),
                              unet_evals=sum(int(x["unet_evaluations"]) for x in self.records),
                              conditional=bool(r["target_info"].get("conditional", False)))

    # -- 3. after the plan is declared
    def after_plan(self, plan_record: dict[str, Any], out: Path) -> dict[str, Any]:
        """Distributed: every rank has declared the plan before any rank scores. Merge: the plan the shards
        declared before their scoring is the run's plan (the same SHA-256 is required)."""
        if self.mode == "distributed":
            import torch.distributed as dist

            dist.barrier()
        if self.is_merge:
            shas = {r["plan_sha256"] for r in self.records}
            if shas != {plan_record["sha256"]}:
                raise ValueError(f"merge: the shards declared analysis plan(s) {sorted(shas)}, this merge job's "
                                 f"plan is {plan_record['sha256']}: run the merge with the shards' configuration")
            first = min(self.records, key=lambda r: r["plan"]["declared_utc"])
            plan_record = {**first["plan"], "declared_by": (f"{self.n_shards} shard jobs, each before its scoring; "
                                                            f"earliest: shard {first['index']}")}
            from audit import io

            io.write_json(Path(out) / io.PLAN, plan_record)
        self._plan_record = plan_record
        return plan_record

    # -- 4. scoring
    def score(self, target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: Any, *,
              batch_size: int, seed: int, progress: bool) -> tuple[ScoreTable | None, Any]:
        """Score this process's part. Returns the full ScoreTable where this process goes on to the analysis
        (single, merge, distributed rank 0), else ``(None, stats)`` (a shard job, a distributed rank > 0)."""
        from audit.store import StoreStats, score_with_store

        ids = [r.image_id for r in evidence.records]
        if store is not None and self.store_settings():  # scores of other denoiser settings are kept apart
            from dataclasses import replace

            store = replace(store, settings=self.store_settings())
        if self.mode != "single" and store is None:
            raise ValueError("this target does not use the score store (e.g. a black-box service), so its audit "
                             "cannot be sharded: run it with runtime.shards=1")
        if self.is_merge:
            return self._assemble(evidence, attacks, store, batch_size, seed), self._merged_stats()
        per_image = sum(int(a.evaluations_per_image()) for a in attacks.values())
        if self.mode == "single" and store is None:  # one plain pass (score_evidence's own progress bar)
            return score_with_store(target, evidence, attacks, None, batch_size=batch_size, seed=seed,
                                    progress=progress)
        if self.mode == "single":
            bar = EvalProgress(target, len(evidence), per_image, "scoring", progress)
            try:
                table, stats = score_with_store(target, evidence, attacks, store, batch_size=batch_size, seed=seed,
                                                progress=progress, on_batch=bar)
            finally:
                bar.close()
            return table, stats
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
        record = {
            "format": RECORD_FORMAT, "index": self.index, "n_shards": self.n_shards, "mode": self.mode,
            "batches": mine, "n_batches": len(range(0, len(ids), batch_size)), "batch_size": int(batch_size),
            "n_images": len(ids), "n_images_in_shard": n_mine,
            "image_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "unet_evaluations": int(target.unet_evals) - before,
            "reference_unet_evaluations": _reference_evals(attacks) - ref_before,
            "store": stats.to_dict(), "store_context": store.context, "store_folder": str(store.folder),
            "attack_hashes": {name: params_hash(a.params()) for name, a in attacks.items()},
            "attacks": {name: a.describe() for name, a in attacks.items()},
            "device": str(target.device), "target_info": target.info.to_dict(),
            "plan_sha256": self._plan_record["sha256"], "plan": self._plan_record,
            "speed": self.speed, "scoring_s": time.time() - t0, "host": socket.gethostname(), "pid": os.getpid(),
            "cuda_device": torch.cuda.get_device_name(target.device) if target.device.type == "cuda" else None,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.mode == "shard":
            self.record_path = self.shard_dir / record_name(self.index, self.n_shards)
            _write_json(self.record_path, record)
            log.info("shard %d of %d done: %s", self.index, self.n_shards, self.record_path)
            print(f"shard {self.index} of {self.n_shards} scored: {stats.computed} scores computed, "
                  f"{stats.reused} reused; record: {self.record_path}")
            return None, stats
        import torch.distributed as dist  # distributed: gather every rank's record on rank 0

        gathered: list[Any] = [None] * self.n_shards
        dist.all_gather_object(gathered, record)
        if self.index != 0:
            print(f"rank {self.index} of {self.n_shards} scored: {stats.computed} scores computed, "
                  f"{stats.reused} reused; rank 0 writes the results")
            return None, stats
        self.records = sorted(gathered, key=lambda r: r["index"])
        return self._assemble(evidence, attacks, store, batch_size, seed), self._merged_stats()

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
        if self.is_merge:  # the store context the shards wrote (same code and version are not assumed)
            from audit.store import ScoreStore

            ctx = r0["store_context"]
            store = ScoreStore(Path(store.root), ctx["target_fingerprint"], int(ctx["seed"]), ctx["dtype"],
                               ctx["device_type"], version=ctx["package_version"], code=ctx["scoring_code"],
                               settings=ctx.get("denoiser_settings", ""))
        have = store.load()
        done = {(a, b, c): float(s) for a, b, c, s in zip(have["image_id"], have["attack"],
                                                          have["attack_params_hash"], have["score"])}
        owner = assign_batches(ids, batch_size, self.n_shards)
        rows, gaps = [], set()
        for k, start in enumerate(range(0, len(ids), batch_size)):
            recs = evidence.records[start:start + batch_size]
            for name, h in hashes.items():
                for r in recs:
                    s = done.get((r.image_id, name, h))
                    if s is None:
                        gaps.add(owner[k])
                    rows.append((r.image_id, r.role, name, h, s))
        if gaps:
            raise ValueError(f"merge: shard(s) {sorted(gaps)} of {self.n_shards} have unfinished batches in the "
                             f"score store {store.folder}: rerun those shards alone (runtime.shard=<i>), then merge")
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
        return s

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

    # -- 5. what goes into run.json
    def describe_attacks(self, attacks: Mapping[str, Any]) -> dict[str, Any]:
        if self.is_merge:
            return {name: self.records[0]["attacks"][name] for name in attacks}
        return {name: a.describe() for name, a in attacks.items()}

    def annotate(self, metadata: dict[str, Any]) -> None:
        """Add the sharding record to run.json; in a merged run, evaluations are the shards' sums."""
        if self.mode == "single":
            metadata["scale"] = {"mode": "single", "shards": 1, "speed": self.speed}
            return
        keep = ("index", "batches", "n_images_in_shard", "unet_evaluations", "reference_unet_evaluations", "store",
                "scoring_s", "host", "pid", "device", "cuda_device", "finished_utc")
        metadata["unet_evaluations"] = sum(int(r["unet_evaluations"]) for r in self.records)
        metadata["reference_unet_evaluations"] = sum(int(r["reference_unet_evaluations"]) for r in self.records)
        metadata["scale"] = {
            "mode": self.mode, "shards": self.n_shards,
            "assignment": "batches of the single-process run, sorted by SHA-256 of their image ids, dealt round-robin",
            "shard_dir": str(self.shard_dir) if self.shard_dir else None,
            "per_shard": [{k: r.get(k) for k in keep} for r in self.records],
            "speed": self.records[0].get("speed", self.speed),
        }


def _reference_evals(attacks: Mapping[str, Any]) -> int:
    """Evaluations made so far by the distinct reference models of calibrated attacks."""
    seen: dict[int, int] = {}
    for a in attacks.values():
        ref = getattr(a, "_reference_target", None)
        if ref is not None:
            seen[id(ref)] = int(getattr(ref, "unet_evals", 0))
    return sum(seen.values())
