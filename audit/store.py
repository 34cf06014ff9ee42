"""A content-keyed score store: scores persisted batch by batch, so a killed run resumes without recomputing.

Every score is keyed by what it depends on: the image's SHA-256, the attack's name and parameter hash, the
target fingerprint (weights + config), the seed, the weights' dtype, the device type, the package
version and a hash of the scoring code's source (so a code change within one version string is never masked).
Scores of one *context* (all of these but the image and attack) live in one folder::

    <store root>/<context hash>/context.json            what the context is (for people)
    <store root>/<context hash>/batch-<hash>.parquet    one file per finished batch

A batch file is written to a temporary name and renamed, so it is either complete or absent (a ``kill -9``
mid-write leaves only a ``.tmp`` file, which is ignored). Another model, dtype, seed or parameter set has
another key and never reuses these scores. The store holds only data (parquet); nothing in it is executed.

:func:`score_with_store` keeps the batch boundaries of an uninterrupted run (``range(0, n, batch_size)``
over the evidence order), so a resumed run computes every remaining batch exactly as the uninterrupted run
would have, and its scores are identical.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import pandas as pd

from audit.types import SCORE_COLUMNS, EvidenceSet, ScoreTable, params_hash

log = logging.getLogger(__name__)

_KEY = ["image_id", "attack", "attack_params_hash"]


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("diffusion-membership-audit")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


#: Source that decides what a score is; any change to it (same version string or not) keys a new context.
_SCORING_CODE = ("attacks", "targets", "diffusion", "types.py", "data/images.py", "store.py")


def code_fingerprint() -> str:
    """SHA-256 (16 hex) of the scoring code's source files: a score computed by other code is never reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for part in _SCORING_CODE:
        p = root / part
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            if f.is_file():
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class ScoreStore:
    """Persisted scores for one (target fingerprint, seed, dtype, device type, package version) context."""

    root: Path
    fingerprint: str
    seed: int
    dtype: str
    device_type: str
    version: str = field(default_factory=_package_version)
    code: str = field(default_factory=code_fingerprint)
    #: non-default denoiser settings that change scores in the last digits (audit.parallel.speed: attention,
    #: channels_last, compile), e.g. "attention=eager"; empty = the defaults (and the context of earlier stores)
    settings: str = ""

    @property
    def context(self) -> dict[str, Any]:
        ctx = {"target_fingerprint": self.fingerprint, "seed": int(self.seed), "dtype": self.dtype,
               "device_type": self.device_type, "package_version": self.version, "scoring_code": self.code}
        if self.settings:
            ctx["denoiser_settings"] = self.settings
        return ctx

    @property
    def folder(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.context, sort_keys=True).encode()).hexdigest()[:32]
        return Path(self.root) / digest

    @staticmethod
    def empty() -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "score" else "object") for c in _KEY + ["score"]})

    def load(self) -> pd.DataFrame:
        """Every finished score of this context: columns image_id, attack, attack_params_hash, score."""
        files = sorted(self.folder.glob("batch-*.parquet")) if self.folder.is_dir() else []
        if not files:
            return self.empty()
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return df.drop_duplicates(subset=_KEY, keep="first")[_KEY + ["score"]]

    def save(self, df: pd.DataFrame) -> Path:
        """Persist one finished batch atomically (temporary file + rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ctx = self.folder / "context.json"
        if not ctx.is_file():
            ctx.write_text(json.dumps(self.context, indent=2))
        part = df[_KEY + ["score"]].reset_index(drop=True)
        digest = hashlib.sha256(pd.util.hash_pandas_object(part[_KEY], index=False).values.tobytes()).hexdigest()[:24]
        path = self.folder / f"batch-{digest}.parquet"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        part.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path


@dataclass
class StoreStats:
    reused: int = 0  # (image, attack) scores taken from the store
    computed: int = 0  # (image, attack) scores computed now
    batches_reused: int = 0
    batches_computed: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def score_with_store(target: Any, evidence: EvidenceSet, attacks: Mapping[str, Any], store: ScoreStore | None, *,
                     batch_size: int, seed: int, progress: bool = True, batches: Collection[int] | None = None,
                     on_batch: Callable[[int, bool], None] | None = None) -> tuple[ScoreTable, StoreStats]:
    """Score ``evidence`` with ``attacks`` batch by batch, reusing and persisting scores in ``store``.

    A batch whose (image, attack) scores are all stored is skipped; otherwise only the missing attacks of
    the batch's missing images are computed (one :func:`~audit.attacks.score_evidence` call) and persisted
    before the next batch starts. Without a store this is one plain scoring pass.
    ``batches``: indices of the batches (``range(0, n, batch_size)``) to score and return, e.g. one shard of a
    sharded run (:mod:`audit.parallel`); None = all. ``on_batch(n_images, computed)`` after each batch.
    """
    from audit.attacks import score_evidence

    if batch_size < 1:
        raise ValueError(f"runtime.batch_size must be a positive integer, got {batch_size}")
    stats = StoreStats()
    if store is None and batches is None:
        table = score_evidence(target, evidence, attacks, batch_size=batch_size, seed=seed, progress=progress)
        stats.computed = len(table.df)
        return ScoreTable(table.df[list(SCORE_COLUMNS)]), stats
    for attack in attacks.values():  # fail at once on a misconfigured attack, before any batch
        attack.check_target(target)
    hashes = {name: params_hash(a.params()) for name, a in attacks.items()}
    have = store.load() if store is not None else ScoreStore.empty()
    done = {(r.image_id, r.attack, r.attack_params_hash): float(r.score) for r in have.itertuples(index=False)}
    n = len(evidence)
    starts = [s for k, s in enumerate(range(0, n, batch_size)) if batches is None or k in batches]
    for start in starts:
        stop = min(start + batch_size, n)
        recs = evidence.records[start:stop]
        missing = {name for name in attacks for r in recs if (r.image_id, name, hashes[name]) not in done}
        if not missing:
            stats.batches_reused += 1
            if on_batch is not None:
                on_batch(stop - start, False)
            continue
        todo = [i for i, r in enumerate(recs, start) if any((r.image_id, m, hashes[m]) not in done for m in missing)]
        sub = EvidenceSet([evidence.records[i] for i in todo], evidence.pixels[todo])
        part = score_evidence(target, sub, {m: attacks[m] for m in attacks if m in missing},
                              batch_size=len(todo), seed=seed, progress=False).df
        part = part[[(i, a, h) not in done for i, a, h in zip(part["image_id"], part["attack"],
                                                                part["attack_params_hash"])]]
        if store is not None:
            store.save(part)
        stats.batches_computed += 1
        for r in part.itertuples(index=False):
            done[(r.image_id, r.attack, r.attack_params_hash)] = float(r.score)
        if on_batch is not None:
            on_batch(stop - start, True)
        elif progress:
            log.info("scored batch %d-%d of %d (persisted)", start, stop, n)
    # rows in the order of a plain scoring pass: batch by batch, attack by attack within a batch
    rows = []
    for start in starts:
        recs = evidence.records[start:start + batch_size]
        for name in attacks:
            rows += [(r.image_id, r.role, name, hashes[name], done[(r.image_id, name, hashes[name])]) for r in recs]
    df = pd.DataFrame(rows, columns=["image_id", "role", "attack", "attack_params_hash", "score"])
    df["target_fingerprint"] = target.fingerprint
    df["seed"] = int(seed)
    stats.computed = stats_computed(have, df)
    stats.reused = len(df) - stats.computed
    return ScoreTable(df[list(SCORE_COLUMNS)]), stats


def stats_computed(before: pd.DataFrame, table: pd.DataFrame) -> int:
    """Rows of ``table`` that were not in the store before this run."""
    old = set(zip(before["image_id"], before["attack"], before["attack_params_hash"]))
    return sum((k not in old) for k in zip(table["image_id"], table["attack"], table["attack_params_hash"]))
