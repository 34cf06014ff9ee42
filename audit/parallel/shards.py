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

Modes (decided by :func:`validate_scale_config` from ``runtime.shards`` / ``runtime.shard`` and the environment;
each has its own executor in :mod:`audit.parallel.executors`):

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
from pathlib import Path
from typing import Any


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
    """The scale-out mode and whether its keys fit together (one-line errors). Returns (mode, number of shards,
    this shard's index). The keys' types and ranges are declared in :mod:`audit.schema` (checked first)."""
    from audit.schema import check_section

    rt = cfg.runtime
    check_section("runtime", rt)
    n = rt.get("shards", 1)
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
    else:
        mode, index = "shard", shard
    if mode != "single":
        if not cfg.get("score_store"):
            raise ValueError("a sharded run needs a score store that every shard can reach: set score_store=<folder> "
                             "(a shared file system on a cluster)")
        if mode in ("shard", MERGE) and not rt.get("shard_dir"):
            raise ValueError(f"runtime.shard={shard} needs runtime.shard_dir (the folder where the shards' records "
                             "meet; the launcher sets it)")
    return mode, n, index


# ---------------------------------------------------------------------------------------------- records
def record_name(index: int, n: int) -> str:
    return f"shard-{index:03d}-of-{n:03d}.json"


def read_records(shard_dir: Path, n_shards: int) -> list[dict[str, Any]]:
    """Every shard's record from ``shard_dir``; refuses a missing one, or shards run with other settings, in one
    line (the merge job's first step)."""
    recs, missing = [], []
    for i in range(n_shards):
        p = shard_dir / record_name(i, n_shards)
        if not p.is_file():
            missing.append(i)
            continue
        recs.append(json.loads(p.read_text()))
    if missing:
        raise ValueError(f"merge: no record of shard(s) {missing} of {n_shards} in {shard_dir}: "
                         "run them first (runtime.shard=<i>), then the merge again")
    first = recs[0]
    for r in recs[1:]:
        for key in ("store_context", "attack_hashes", "batch_size", "n_images", "plan_sha256", "image_ids_sha256"):
            if r.get(key) != first.get(key):
                raise ValueError(f"merge: shard {r['index']} differs from shard {first['index']} in {key}: "
                                 "the shards were not run with the same configuration")
    return recs


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
        self.last = int(target.unet_evals)
        self.bar = tqdm(total=total_images * self.per_image, desc=desc, unit="eval", unit_scale=True,
                        disable=not enabled, smoothing=0.1, dynamic_ncols=True)

    def __call__(self, n_images: int, computed: bool) -> None:
        now = int(self.target.unet_evals)
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
