"""Hostile and careless inputs (issue 25): a poisoned score store, a file swapped between hashing and decoding,
crafted results folders, hangs, same-second runs, secrets, crafted configs. Each test failed before the fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from audit import io, verify
from audit.attacks import LossAttack
from audit.store import ScoreStore, provenance_summary, score_with_store, store_key
from audit.targets import load_target
from tests.conftest import count_forward_calls, evidence_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _store_key(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIT_STORE_KEY_FILE", str(tmp_path / "keys" / "store.key"))


def _target(ddpm):
    return load_target(str(ddpm.model_dir), local_files_only=True, device="cpu")


# ------------------------------------------------------------------------ 1. a poisoned store decides nothing
def test_poisoned_store_entries_are_recomputed_not_reused(memorized_ddpm, tmp_path):
    from diffusers import UNet2DModel

    evidence = evidence_for(memorized_ddpm.member_paths[:8], memorized_ddpm.held_out_paths[:8])
    attacks = {"loss": LossAttack(timesteps=[100], n_noise=1)}
    target = _target(memorized_ddpm)
    store = ScoreStore(tmp_path / "store", target.fingerprint, 0, "float32", "cpu", plan_sha256="a" * 64, run="r1")
    clean, stats = score_with_store(target, evidence, attacks, store, batch_size=8, seed=0, progress=False)
    assert stats.computed == 16 and stats.provenance["attacks"]["loss"]["computed"] == 16
    # lower the suspects' stored scores by 1.0 in a valid parquet batch (the probe that flipped the verdict)
    for f in (tmp_path / "store").rglob("batch-*.parquet"):
        df = pd.read_parquet(f)
        df["score"] = df["score"] - 1.0
        df.to_parquet(f, index=False)
    store2 = ScoreStore(tmp_path / "store", target.fingerprint, 0, "float32", "cpu", plan_sha256="b" * 64, run="r2")
    with count_forward_calls(UNet2DModel) as calls:
        again, stats = score_with_store(target, evidence, attacks, store2, batch_size=8, seed=0, progress=False)
    assert calls["n"] > 0 and stats.reused == 0 and stats.integrity_failed == 16
    pd.testing.assert_frame_equal(again.df, clean.df)  # the honest scores, recomputed
    assert stats.provenance["integrity_failed"] == 16 and "digest" in stats.provenance["integrity_failures"][0]["reason"]
    # a third run reuses the recomputed (authenticated) entries and says where they came from
    store3 = ScoreStore(tmp_path / "store", target.fingerprint, 0, "float32", "cpu", plan_sha256="c" * 64, run="r3")
    _, stats = score_with_store(target, evidence, attacks, store3, batch_size=8, seed=0, progress=False)
    loss = stats.provenance["attacks"]["loss"]
    assert stats.reused == 16 and loss["reused"] == 16 and loss["computed"] == 0
    assert loss["reused_from_runs"] == ["r2"] and loss["reused_plan_sha256"] == ["b" * 64]
    assert loss["reused_under_other_plan"] == 16 and loss["reused_computed_at"]["earliest"] is not None
    # another key (another machine's store copied in): nothing reused either
    other = ScoreStore(tmp_path / "store", target.fingerprint, 0, "float32", "cpu", key=b"k" * 32)
    assert other.load().empty and len(other.failures) == 16


def test_provenance_summary_shape():
    rows = pd.DataFrame({"attack": ["loss"] * 3, "computed_here": [True, False, False],
                         "computed_at": ["2026-12-02T10:00:00.000001+00:00", "2026-12-01T09:00:00.000000+00:00",
                                         "2026-12-01T11:00:00.000000+00:00"],
                         "plan_sha256": ["p", "p", "q"], "run": ["now", "old1", "old2"]})
    s = provenance_summary(rows, run="now", plan_sha256="p")
    a = s["attacks"]["loss"]
    assert (a["computed"], a["reused"], a["reused_under_other_plan"]) == (1, 2, 1)
    assert a["reused_computed_at"] == {"earliest": "2026-12-01T09:00:00.000000+00:00",
                                       "latest": "2026-12-01T11:00:00.000000+00:00"}
    assert a["reused_from_runs"] == ["old1", "old2"] and s["integrity_failed"] == 0


def test_store_key_lives_outside_the_store_and_is_private(tmp_path):
    key = store_key(tmp_path / "k" / "store.key")
    assert len(key) == 32 and store_key(tmp_path / "k" / "store.key") == key
    assert oct((tmp_path / "k" / "store.key").stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------------------ 2. the bytes scored are the bytes hashed
def test_file_swapped_between_hashing_and_decoding_is_rejected(artworks, tmp_path, monkeypatch):
    import shutil

    import audit.data.manifest as manifest_mod
    from audit.data import load_evidence
    from audit.data.images import sha256_file as real_sha

    members, held_out = artworks
    files = []
    for i, src in enumerate(members[:3]):
        dst = tmp_path / f"w{i}.png"
        shutil.copyfile(src, dst)
        files.append(dst)
    entries = [{"path": str(p), "role": "suspect"} for p in files]
    original = real_sha(files[1])
    calls = {"n": 0}

    def hash_then_swap(path):
        h = real_sha(path)
        calls["n"] += 1
        if calls["n"] == len(files):  # after the last file was hashed, before any decoding: swap file 1
            shutil.copyfile(held_out[0], files[1])
        return h

    monkeypatch.setattr(manifest_mod, "sha256_file", hash_then_swap)
    ev = load_evidence(entries, 16, progress=False)
    assert original not in [r.image_id for r in ev.records]  # never scored under its old hash
    (rej,) = [r for r in ev.rejected if r.path == str(files[1])]
    assert "changed between hashing and decoding" in rej.reason


# ------------------------------------------------------------------------ 6. no hang on a FIFO or a device
def _finishes(fn, seconds: float = 30.0):
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung"
    return box["v"]


def test_fifo_and_dev_zero_in_a_manifest_are_rejected_without_hanging(artworks, tmp_path):
    from audit.data import load_evidence

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    entries = [{"path": str(artworks[0][0]), "role": "suspect"}, {"path": str(fifo), "role": "suspect"},
               {"path": "/dev/zero", "role": "control"}, {"path": str(artworks[1][0]), "role": "control"}]
    ev = _finishes(lambda: load_evidence(entries, 16, progress=False))
    assert len(ev.records) == 2
    reasons = {r.path: r.reason for r in ev.rejected}
    assert "not a regular file" in reasons[str(fifo)] and "not a regular file" in reasons["/dev/zero"]
