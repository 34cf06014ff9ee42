"""Reconstruction statistics through the score store: a killed run resumes, an extended run computes only new works.

The ``recon_*`` statistics are persisted in the same content-keyed, HMAC-authenticated :class:`audit.store.ScoreStore`
as the attack scores, keyed like them: the work's SHA-256 (``image_id``), the statistic's name and a parameter hash,
and the store's context (target fingerprint, run seed, dtype, device type, package version, code, denoiser
settings). Two differences:

- **Code.** The context's code fingerprint also covers the reconstruction modules that compute statistics
  (:data:`audit.store.RECONSTRUCTION_CODE`), so reconstruction rows live in a context folder of their own; a change
  to that code never reuses a statistic and never touches the attack scores.
- **Parameter hash.** The store key's ``attack_params_hash`` is :func:`store_hash` of the ScoreTable's hash (the
  statistic's config section, unchanged in ``scores.parquet``) with what else decides the value: the generation
  seeds policy (``sha256("<run seed>|generate|<prompt>|<i>")``, extraction: ``…|extract|…``), the generation batch
  size (it is part of the generation record that fixes the images' last bits), the embedding model's weights,
  the extraction base's fingerprint and — for a text-conditional target — the work's own conditioning text (its
  prompt or caption: the same image audited under another caption is another key).

**Units** (what is computed together and persisted as one batch file, before the next starts):

- *inpainting, img2img*: the batches ``range(0, n, batch_size)`` over the evidence order, as for attacks. A batch
  whose works are all stored is skipped; otherwise its missing works are computed (together) and persisted. All
  noise is per work (:class:`audit.attacks.base.NoiseSource`), so a resumed run — whose batches are either stored
  whole or absent — computes every remaining batch exactly as an uninterrupted run.
- *generate-and-match, extraction*: the generation pool is shared by every work of a prompt group (unconditional:
  one pool for all works). The unit is the **group**: its pool is generated only when some work of the group (or
  the group's own record, below) is missing; then the missing works are matched against it and persisted with the
  group's pool-level values in one batch file. A resumed run that finds every work's statistics skips generating
  the pool. The pool is deterministic from its record (seeds, steps, batch size), and each work's distances are
  computed against the pool independently of the other works, so a statistic does not depend on which works were
  matched with it.

Besides the statistics (the ScoreTable rows) every unit stores, as further authenticated rows of the same key (names
``recon_<section>/…``, never joined to the ScoreTable), what ``reconstruction.json`` records per work and per pool:
nearest generations and their distances, clique sizes, hidden fractions, img2img distances per variation, the
extraction's nearest sample / medoid and clusters (pool rows have ``image_id`` ``pool:<sha256 of the prompt>``). A
resumed run's ``reconstruction.json`` is therefore the uninterrupted run's, value for value; a work is complete only
when all of its rows are stored and intact, so a tampered entry (digest fails, :attr:`ScoreStore.failures`) makes
its unit recompute that work, never reuse it.

**Figures.** The evidence grid shows the most member-like works over *all* works (scores reused or not). Images of a
figure work whose statistics were reused are regenerated for the figure: generations from the recorded seeds (only
the record's batches that hold the nearest generations, each batch exactly as the audit generated it, so the PNGs are
byte-identical), inpainting and img2img from the same per-work noise (the shown errors and distances are the stored
ones). Their denoiser evaluations are counted apart (``figure_unet_evaluations`` in ``reconstruction.json`` and
run.json); with figures off a fully stored rerun evaluates the denoiser zero times.

**Sharding.** ``run_reconstruction(..., store=…, shard=(index, n))`` computes and persists only the units whose
number (batch index for inpainting / img2img, group index for generate-and-match / extraction) is ``index`` modulo
``n`` and returns no rows; the shards write disjoint units into one store, and a run without ``shard`` afterwards
(the merge) finds every unit stored and computes none (only figure images). An unconditional pool is one unit, so
it is never split between shards. In an audit the executors do this (:meth:`audit.parallel.executors.ScaleRun.reconstruct`):
each shard after its attack scores and before its record, the merge job or rank 0 afterwards.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from audit.store import RECONSTRUCTION_CODE, ScoreStore, StoreFailure, code_fingerprint, provenance_summary, utc_now
from audit.types import params_hash

log = logging.getLogger(__name__)

__all__ = ["ReconStore", "store_hash", "pool_id", "folder_fingerprint", "GENERATE_SEEDS", "EXTRACT_SEEDS"]

#: how generation / extraction seeds are derived (audit.reconstruction.sampling.generation_seeds, extract.extraction_seeds)
GENERATE_SEEDS = "sha256('<run seed>|generate|<prompt or <unconditional>>|<i>')[:8] little-endian & (2^63-1)"
EXTRACT_SEEDS = "sha256('<run seed>|extract|<prompt or <unconditional>>|<i>')[:8] little-endian & (2^63-1)"


def store_hash(table_hash: str, extra: dict[str, Any] | None = None, text: str | None = None) -> str:
    """The store key's parameter hash of a statistic: its ScoreTable hash, ``extra`` (seeds policy, batch size,
    models…) and, for a text-conditional target, the work's conditioning ``text``."""
    return params_hash({"statistic_params_hash": table_hash, **(extra or {}),
                        **({"text": text} if text is not None else {})})


def pool_id(prompt: str | None) -> str:
    """The ``image_id`` of a generation pool's own rows."""
    key = prompt if prompt is not None else "<unconditional>"
    return "pool:" + hashlib.sha256(key.encode()).hexdigest()


def folder_fingerprint(path: str) -> str:
    """SHA-256 (16 hex) of a model folder's files (names and bytes): an embedding model's weights."""
    from pathlib import Path

    h = hashlib.sha256()
    root = Path(path).expanduser()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


class ReconStore:
    """The reconstruction's view of the score store (None: an in-memory one, nothing persisted or reused).

    Values are keyed ``(image_id, name, hash)``; :meth:`has` says whether all of some keys are known,
    :meth:`add` records a finished unit's values (and persists them as one batch file), :meth:`get` reads one.
    """

    def __init__(self, store: ScoreStore | None, shard: tuple[int, int] | None = None,
                 computed_for: tuple[str, str] | None = None) -> None:
        if shard is not None and (store is None or not 0 <= int(shard[0]) < int(shard[1])):
            raise ValueError(f"reconstruction shard {shard}: needs a score store and 0 <= index < number of shards")
        #: (index, number of shards): compute only the units whose number ≡ index (mod number); None = all
        #: ``computed_for=(plan SHA-256, declared UTC)``: stored values computed under that plan after it was
        #: declared count as this run's (a sharded run's shards computed them), as the merged attack scores do
        self.shard = (int(shard[0]), int(shard[1])) if shard is not None else None
        self.store: ScoreStore | None = None
        self.values: dict[tuple[str, str, str], tuple[float, str, str, str, bool]] = {}
        self.failures: list[StoreFailure] = []
        self.units_computed = 0
        self.units_reused = 0
        if store is not None:
            self.store = replace(store, code=f"{store.code}+reconstruction:{code_fingerprint(RECONSTRUCTION_CODE)}",
                                 failures=[])
            for r in self.store.load().itertuples(index=False):
                ours = computed_for is not None and (str(r.plan_sha256) == computed_for[0]
                                                     and str(r.computed_at) >= computed_for[1])
                self.values[(str(r.image_id), str(r.attack), str(r.attack_params_hash))] = (
                    float(r.score), str(r.computed_at), str(r.plan_sha256), str(r.run), ours)
            self.failures = list(self.store.failures)

    @property
    def folder(self) -> str | None:
        return str(self.store.folder) if self.store is not None else None

    def mine(self, unit: int) -> bool:
        """Whether this process computes unit number ``unit`` of a section (always, unless sharded)."""
        return self.shard is None or int(unit) % self.shard[1] == self.shard[0]

    def has(self, keys: Iterable[tuple[str, str, str]]) -> bool:
        return all(k in self.values for k in keys)

    def get(self, image_id: str, name: str, h: str) -> float:
        return self.values[(image_id, name, h)][0]

    def add(self, rows: Sequence[tuple[str, str, str, float]]) -> None:
        """One finished unit: ``(image_id, name, hash, value)`` rows not yet known, persisted together."""
        new = [(str(i), str(n), str(h), float(v)) for i, n, h, v in rows if (i, n, h) not in self.values]
        self.units_computed += 1
        if not new:
            return
        when = utc_now()
        if self.store is not None:
            self.store.save(pd.DataFrame(new, columns=["image_id", "attack", "attack_params_hash", "score"]),
                            computed_at=when)
        plan, run = (self.store.plan_sha256, self.store.run) if self.store is not None else ("", "")
        for i, n, h, v in new:
            self.values[(i, n, h)] = (v, when, plan, run, True)

    def provenance(self, keys: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
        """:func:`audit.store.provenance_summary` of the statistics ``keys`` (the ScoreTable rows)."""
        rows = []
        for k in keys:
            _, when, plan, run, here = self.values[k]
            rows.append((k[1], here, when, plan, run))
        df = pd.DataFrame(rows, columns=["attack", "computed_here", "computed_at", "plan_sha256", "run"])
        run = self.store.run if self.store is not None else ""
        plan = self.store.plan_sha256 if self.store is not None else ""
        return provenance_summary(df, self.failures, run=run, plan_sha256=plan)

    def counts(self, keys: Sequence[tuple[str, str, str]]) -> dict[str, int]:
        here = sum(bool(self.values[k][4]) for k in keys)
        return {"computed": int(here), "reused": int(len(keys) - here), "units_computed": int(self.units_computed),
                "units_reused": int(self.units_reused), "integrity_failed": len(self.failures)}


def nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
