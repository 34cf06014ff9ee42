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

**Authenticated entries.** Every stored row carries ``entry_hmac``: an HMAC-SHA256 (key: :func:`store_key`, a
secret kept *outside* the store, by default ``~/.config/diffusion-membership-audit/score_store.key``, or the
file named by ``$AUDIT_STORE_KEY_FILE``) over its inputs — the image SHA-256, attack name and parameter hash,
the whole context (target fingerprint, seed, dtype, device type, package version, scoring-code hash, denoiser
settings) — *and* its score (the exact float64), and its provenance: ``computed_at`` (UTC ISO time),
``plan_sha256`` (the analysis plan the run declared before scoring, ``plan.json``'s ``sha256``) and ``run`` (the
results folder's name). :meth:`ScoreStore.load` checks every row; a row that fails (edited score, copied from
another context, written with another key, no digest) is not reused: it is recomputed and listed in
``ScoreStore.failures`` (the run records it in ``run.json`` and logs a warning). Someone who can write the
store but not read the key cannot plant a score that a run reuses.

:func:`score_with_store` keeps the batch boundaries of an uninterrupted run (``range(0, n, batch_size)``
over the evidence order), so a resumed run computes every remaining batch exactly as the uninterrupted run
would have, and its scores are identical.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import pandas as pd

from audit.types import SCORE_COLUMNS, EvidenceSet, ScoreTable, params_hash

log = logging.getLogger(__name__)

_KEY = ["image_id", "attack", "attack_params_hash"]
#: provenance of a stored score (who computed it, when, under which declared plan); authenticated with the score
_PROVENANCE = ["computed_at", "plan_sha256", "run"]
_DIGEST = "entry_hmac"
_STORED = _KEY + ["score"] + _PROVENANCE + [_DIGEST]
KEY_ENV = "AUDIT_STORE_KEY_FILE"


def store_key_path() -> Path:
    """Where the store's HMAC key lives: ``$AUDIT_STORE_KEY_FILE``, else in the user's config folder (never in
    the store itself, so write access to the store alone does not let anyone forge an entry). Shards of one
    sweep on several machines must see the same key file (a shared home folder, or the variable)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "diffusion-membership-audit" / "score_store.key"


def store_key(path: Path | None = None) -> bytes:
    """The HMAC key of the score store (32 random bytes, hex, mode 0600), created on first use."""
    p = Path(path) if path is not None else store_key_path()
    try:
        text = p.read_text().strip()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile
            return store_key(p)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        return store_key(p)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"score store key {p} is not a hex key (delete it to make a new one; every stored score "
                         "is then recomputed once)") from None
    if len(key) < 16:
        raise ValueError(f"score store key {p} is shorter than 16 bytes")
    return key


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class StoreFailure:
    """A stored row that was not reused (its digest does not hold): what it was and why."""

    image_id: str
    attack: str
    attack_params_hash: str
    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("diffusion-membership-audit")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


#: Source that decides what a score is; any change to it (same version string or not) keys a new context.
_SCORING_CODE = ("attacks", "targets", "diffusion", "types.py", "data/images.py", "store.py")


#: Source that decides what a reconstruction statistic is (audit.reconstruction.store): the scoring code and the
#: reconstruction modules that compute statistics (not its figures or report fragment).
RECONSTRUCTION_CODE = _SCORING_CODE + tuple(f"reconstruction/{m}.py" for m in (
    "config", "embedding", "extract", "inpaint", "metrics", "runner", "sampling", "store"))


def code_fingerprint(parts: tuple[str, ...] = _SCORING_CODE) -> str:
    """SHA-256 (16 hex) of the scoring code's source files: a score computed by other code is never reused.
    ``parts``: files and folders under ``audit/`` (default: the attacks' scoring code)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for part in parts:
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
    #: provenance written with each new batch: the declared plan's SHA-256 and the run (results folder name)
    plan_sha256: str = ""
    run: str = ""
    #: HMAC key (:func:`store_key`); None = read or create the key file on first use
    key: bytes | None = field(default=None, repr=False)
    #: rows that failed their check at the last :meth:`load` (they are not returned, so they are recomputed)
    failures: list[StoreFailure] = field(default_factory=list, repr=False)

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
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "score" else "object")
                             for c in _KEY + ["score"] + _PROVENANCE})

    def _key(self) -> bytes:
        if self.key is None:
            self.key = store_key()
        return self.key

    def entry_digest(self, image_id: str, attack: str, params: str, score: float, computed_at: str,
                     plan_sha256: str, run: str) -> str:
        """HMAC-SHA256 over one entry's inputs (image, attack, parameters, the whole context), its score (exact
        float64 bits) and its provenance."""
        blob = json.dumps({"context": self.context, "image_id": str(image_id), "attack": str(attack),
                           "attack_params_hash": str(params), "score": float(score).hex(),
                           "computed_at": str(computed_at), "plan_sha256": str(plan_sha256), "run": str(run)},
                          sort_keys=True).encode()
        return hmac.new(self._key(), blob, hashlib.sha256).hexdigest()

    def load(self) -> pd.DataFrame:
        """Every finished score of this context whose digest holds: columns image_id, attack, attack_params_hash,
        score, computed_at, plan_sha256, run. Rows that fail are left out and listed in :attr:`failures`."""
        self.failures = []
        files = sorted(self.folder.glob("batch-*.parquet")) if self.folder.is_dir() else []
        good = []
        for f in files:
            if f.is_symlink() or not f.is_file():
                self.failures.append(StoreFailure("", "", "", f.name, "not a regular file (a symbolic link?)"))
                continue
            try:
                df = pd.read_parquet(f)
            except Exception as e:  # a damaged or foreign file: nothing in it is reused
                self.failures.append(StoreFailure("", "", "", f.name, f"unreadable ({type(e).__name__})"))
                continue
            missing = [c for c in _STORED if c not in df.columns]
            if missing:
                for r in df.to_dict(orient="records"):
                    self.failures.append(StoreFailure(str(r.get("image_id", "")), str(r.get("attack", "")),
                                                      str(r.get("attack_params_hash", "")), f.name,
                                                      f"no {', '.join(missing)} (not an authenticated entry)"))
                continue
            ok = []
            for r in df[_STORED].itertuples(index=False):
                try:
                    want = self.entry_digest(r.image_id, r.attack, r.attack_params_hash, r.score, r.computed_at,
                                             r.plan_sha256, r.run)
                    valid = hmac.compare_digest(want, str(r.entry_hmac))
                except (TypeError, ValueError, OverflowError):
                    valid = False
                ok.append(valid)
                if not valid:
                    self.failures.append(StoreFailure(str(r.image_id), str(r.attack), str(r.attack_params_hash), f.name,
                                                      "digest does not match (score or provenance edited, copied from "
                                                      "another context, or written with another key)"))
            good.append(df[ok])
        if self.failures:
            log.warning("score store %s: %d stored entr%s failed the integrity check and will be recomputed "
                        "(first: %s in %s: %s)", self.folder, len(self.failures),
                        "y" if len(self.failures) == 1 else "ies", self.failures[0].image_id[:12] or "-",
                        self.failures[0].file, self.failures[0].reason)
        if not good:
            return self.empty()
        df = pd.concat(good, ignore_index=True)
        if df.empty:
            return self.empty()
        return df.drop_duplicates(subset=_KEY, keep="first")[_KEY + ["score"] + _PROVENANCE].reset_index(drop=True)

    def save(self, df: pd.DataFrame, computed_at: str | None = None) -> Path:
        """Persist one finished batch atomically (temporary file + rename), each row with its provenance and
        digest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ctx = self.folder / "context.json"
        if not ctx.is_file():
            ctx.write_text(json.dumps(self.context, indent=2))
        part = df[_KEY + ["score"]].reset_index(drop=True).copy()
        part["score"] = part["score"].astype("float64")
        when = computed_at or utc_now()
        part["computed_at"] = when
        part["plan_sha256"] = str(self.plan_sha256)
        part["run"] = str(self.run)
        part[_DIGEST] = [self.entry_digest(r.image_id, r.attack, r.attack_params_hash, r.score, when,
                                           self.plan_sha256, self.run) for r in part.itertuples(index=False)]
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
    integrity_failed: int = 0  # stored entries whose digest did not hold (recomputed, never reused)
    #: the stored entries that failed (:class:`StoreFailure`), and :func:`provenance_summary` of the returned
    #: rows; not in :meth:`to_dict` (whose values are counts that shards add up)
    failures: list[StoreFailure] = field(default_factory=list, repr=False)
    provenance: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in ("reused", "computed", "batches_reused", "batches_computed",
                                                    "integrity_failed")}


def provenance_summary(rows: pd.DataFrame, integrity_failures: list[StoreFailure] | None = None,
                       run: str = "", plan_sha256: str = "") -> dict[str, Any]:
    """Where a run's scores come from, per attack: ``run.json``'s ``score_provenance``.

    ``rows``: one row per score of the run with columns ``attack``, ``computed_here`` (bool: computed by this
    run, as opposed to reused from the store), ``computed_at`` (UTC ISO time the score was computed),
    ``plan_sha256`` (the analysis plan declared by the run that computed it) and ``run`` (that run's results
    folder name). Returns::

        {"run": <this run's folder name>, "plan_sha256": <this run's declared plan>,
         "attacks": {<attack>: {
             "computed": int,                # scores computed by this run
             "reused": int,                  # scores taken from the store
             "computed_at": {"earliest": iso | None, "latest": iso | None},         # of the computed ones
             "reused_computed_at": {"earliest": iso | None, "latest": iso | None},  # of the reused ones
             "reused_from_runs": [run folder names, sorted],
             "reused_plan_sha256": [plan hashes under which the reused scores were computed, sorted],
             "reused_under_other_plan": int,  # reused scores computed under a plan other than this run's
         }},
         "integrity_failed": int,            # stored entries that failed their digest and were recomputed
         "integrity_failures": [{"image_id", "attack", "attack_params_hash", "file", "reason"}, ... (first 20)]}

    Times compare as strings (ISO 8601, UTC). A reused score whose ``computed_at`` is earlier than the plan's
    ``declared_utc`` in ``plan.json`` was computed before this run's plan was declared.
    """
    attacks: dict[str, Any] = {}
    for name in dict.fromkeys(rows["attack"]) if len(rows) else []:
        sub = rows[rows["attack"] == name]
        here, old = sub[sub["computed_here"].astype(bool)], sub[~sub["computed_here"].astype(bool)]

        def span(df: pd.DataFrame) -> dict[str, str | None]:
            t = [str(x) for x in df["computed_at"] if isinstance(x, str) and x]
            return {"earliest": min(t) if t else None, "latest": max(t) if t else None}

        attacks[str(name)] = {
            "computed": int(len(here)), "reused": int(len(old)),
            "computed_at": span(here), "reused_computed_at": span(old),
            "reused_from_runs": sorted({str(x) for x in old["run"]}),
            "reused_plan_sha256": sorted({str(x) for x in old["plan_sha256"]}),
            "reused_under_other_plan": int((old["plan_sha256"].astype(str) != str(plan_sha256)).sum()),
        }
    fails = list(integrity_failures or [])
    return {"run": run, "plan_sha256": plan_sha256, "attacks": attacks, "integrity_failed": len(fails),
            "integrity_failures": [f.to_dict() for f in fails[:20]]}


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
        when = utc_now()
        stats.provenance = provenance_summary(pd.DataFrame({"attack": table.df["attack"], "computed_here": True,
                                                            "computed_at": when, "plan_sha256": "", "run": ""}))
        return ScoreTable(table.df[list(SCORE_COLUMNS)]), stats
    for attack in attacks.values():  # fail at once on a misconfigured attack, before any batch
        attack.check_target(target)
    hashes = {name: params_hash(a.params()) for name, a in attacks.items()}
    conditional = bool(target.conditional)

    def key(r: Any, name: str) -> tuple[str, str, str]:  # what a score is stored and found under
        return r.image_id, name, stored_params_hash(hashes[name], r.caption if conditional else None)

    have = store.load() if store is not None else ScoreStore.empty()
    if store is not None:
        stats.failures = list(store.failures)
        stats.integrity_failed = len(store.failures)
    # (image, attack, stored params) → (score, computed_at, plan_sha256, run, computed by this call)
    done = {(r.image_id, r.attack, r.attack_params_hash): (float(r.score), r.computed_at, r.plan_sha256, r.run, False)
            for r in have.itertuples(index=False)}
    run_name, plan_sha = (store.run, store.plan_sha256) if store is not None else ("", "")
    n = len(evidence)
    starts = [s for k, s in enumerate(range(0, n, batch_size)) if batches is None or k in batches]
    for start in starts:
        stop = min(start + batch_size, n)
        recs = evidence.records[start:stop]
        missing = {name for name in attacks for r in recs if key(r, name) not in done}
        if not missing:
            stats.batches_reused += 1
            if on_batch is not None:
                on_batch(stop - start, False)
            continue
        todo = [i for i, r in enumerate(recs, start) if any(key(r, m) not in done for m in missing)]
        sub = EvidenceSet([evidence.records[i] for i in todo], evidence.pixels[todo])
        part = score_evidence(target, sub, {m: attacks[m] for m in attacks if m in missing},
                              batch_size=len(todo), seed=seed, progress=False).df
        by_id = {r.image_id: r for r in sub.records}
        keys = [key(by_id[i], a) for i, a in zip(part["image_id"], part["attack"])]
        new = [k not in done for k in keys]
        part = part[new].assign(attack_params_hash=[k[2] for k, keep in zip(keys, new) if keep])
        when = utc_now()
        if store is not None:
            store.save(part, computed_at=when)
        stats.batches_computed += 1
        for r in part.itertuples(index=False):
            done[(r.image_id, r.attack, r.attack_params_hash)] = (float(r.score), when, plan_sha, run_name, True)
        if on_batch is not None:
            on_batch(stop - start, True)
        elif progress:
            log.info("scored batch %d-%d of %d (persisted)", start, stop, n)
    # rows in the order of a plain scoring pass: batch by batch, attack by attack within a batch; the table carries
    # the attacks' own parameter hashes (the caption is part of the stored key only)
    rows, prov = [], []
    for start in starts:
        recs = evidence.records[start:start + batch_size]
        for name in attacks:
            for r in recs:
                score, when, plan, run, here = done[key(r, name)]
                rows.append((r.image_id, r.role, name, hashes[name], score))
                prov.append((name, here, when, plan, run))
    df = pd.DataFrame(rows, columns=["image_id", "role", "attack", "attack_params_hash", "score"])
    df["target_fingerprint"] = target.fingerprint
    df["seed"] = int(seed)
    stats.computed = sum(bool(p[1]) for p in prov)
    stats.reused = len(df) - stats.computed
    stats.provenance = provenance_summary(
        pd.DataFrame(prov, columns=["attack", "computed_here", "computed_at", "plan_sha256", "run"]),
        stats.failures, run=run_name, plan_sha256=plan_sha)
    return ScoreTable(df[list(SCORE_COLUMNS)]), stats


def stored_params_hash(params_hash: str, caption: str | None) -> str:
    """The parameter hash a score is stored under. For a text-conditional target the caption is an input of every
    score (the prompt the denoiser is conditioned on), so it is part of the key: a work whose caption changed in the
    manifest is scored again, never answered with the score of its old caption. ``caption=None`` (an unconditional
    target): the attack's own hash, as in stores written before captions were keyed."""
    if caption is None:
        return params_hash
    return hashlib.sha256(f"{params_hash}\0caption\0{caption}".encode()).hexdigest()[:len(params_hash) or 16]
