"""Resumable, incremental scoring through the content-keyed score store (issue 11), on a tiny real DDPM."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from diffusers import UNet2DModel

from audit import io, verify
from audit.attacks import PIA, LossAttack
from audit.store import ScoreStore, score_with_store
from audit.targets import load_target
from tests.conftest import count_forward_calls, evidence_for

BS = 8


def _attacks(pia_t: int = 100):
    return {"loss": LossAttack(timesteps=[50, 200], n_noise=1), "pia": PIA(t=pia_t)}


def _target(ddpm):
    return load_target(str(ddpm.model_dir), local_files_only=True, device="cpu")


def _store(root: Path, target, seed: int = 0, fingerprint: str | None = None) -> ScoreStore:
    return ScoreStore(root, fingerprint or target.fingerprint, seed, "float32", "cpu")


@pytest.fixture(scope="module")
def evidence(memorized_ddpm):
    return evidence_for(memorized_ddpm.member_paths, memorized_ddpm.held_out_paths)  # 48 works


@pytest.fixture(scope="module")
def uninterrupted(memorized_ddpm, evidence):
    with count_forward_calls(UNet2DModel) as calls:
        table, _ = score_with_store(_target(memorized_ddpm), evidence, _attacks(), None, batch_size=BS, seed=0,
                                    progress=False)
    return table.df, calls["n"]


def test_killed_run_resumes_without_recomputing_finished_batches(memorized_ddpm, evidence, uninterrupted,
                                                                 tmp_path, monkeypatch):
    full_df, full_evals = uninterrupted
    n = len(evidence)
    assert n == 48 and full_evals > 0
    orig = LossAttack.score
    seen = {"batches": 0}

    def dies_in_third_batch(self, target, batch):
        seen["batches"] += 1
        if seen["batches"] == 3:
            raise KeyboardInterrupt("simulated kill during the third batch")
        return orig(self, target, batch)

    monkeypatch.setattr(LossAttack, "score", dies_in_third_batch)
    with pytest.raises(KeyboardInterrupt):
        score_with_store(_target(memorized_ddpm), evidence, _attacks(), _store(tmp_path, _target(memorized_ddpm)),
                         batch_size=BS, seed=0, progress=False)
    monkeypatch.setattr(LossAttack, "score", orig)
    assert len(list(tmp_path.rglob("batch-*.parquet"))) == 2  # two finished batches were persisted

    target = _target(memorized_ddpm)
    with count_forward_calls(UNet2DModel) as calls:
        table, stats = score_with_store(target, evidence, _attacks(), _store(tmp_path, target), batch_size=BS,
                                        seed=0, progress=False)
    per_image = full_evals // n
    assert calls["n"] == full_evals - 2 * BS * per_image  # nothing of the two finished batches recomputed
    assert stats.batches_reused == 2 and stats.reused == 2 * BS * 2
    pd.testing.assert_frame_equal(table.df, full_df)  # identical to an uninterrupted run, bit for bit

    # a third run computes nothing at all
    with count_forward_calls(UNet2DModel) as calls:
        again, stats = score_with_store(_target(memorized_ddpm), evidence, _attacks(), _store(tmp_path, target),
                                        batch_size=BS, seed=0, progress=False)
    assert calls["n"] == 0 and stats.computed == 0
    pd.testing.assert_frame_equal(again.df, full_df)


def test_new_works_scored_alone_and_other_keys_never_reused(memorized_ddpm, evidence, uninterrupted, tmp_path):
    full_df, full_evals = uninterrupted
    per_image = full_evals // len(evidence)
    first = evidence.select(["member", "nonmember"])
    first.records, first.pixels = first.records[:40], first.pixels[:40]
    target = _target(memorized_ddpm)
    score_with_store(target, first, _attacks(), _store(tmp_path, target), batch_size=BS, seed=0, progress=False)
    with count_forward_calls(UNet2DModel) as calls:  # 8 works added to the manifest
        table, _ = score_with_store(target, evidence, _attacks(), _store(tmp_path, target), batch_size=BS, seed=0,
                                    progress=False)
    assert calls["n"] == 8 * per_image
    pd.testing.assert_frame_equal(table.df, full_df)

    # another fingerprint, another seed: nothing reused
    for store in (_store(tmp_path, target, fingerprint="0" * 64), _store(tmp_path, target, seed=1)):
        with count_forward_calls(UNet2DModel) as calls:
            score_with_store(target, evidence, _attacks(), store, batch_size=BS, seed=store.seed, progress=False)
        assert calls["n"] == full_evals
    # other parameters of one attack: only that attack is recomputed
    pia_only = {"pia": PIA(t=50)}
    with count_forward_calls(UNet2DModel) as calls:
        score_with_store(target, evidence, pia_only, None, batch_size=BS, seed=0, progress=False)
    pia_evals = calls["n"]
    with count_forward_calls(UNet2DModel) as calls:
        table, _ = score_with_store(target, evidence, _attacks(pia_t=50), _store(tmp_path, target), batch_size=BS,
                                    seed=0, progress=False)
    assert calls["n"] == pia_evals
    assert not table.df[table.df.attack == "pia"]["score"].equals(full_df[full_df.attack == "pia"]["score"])


def test_scores_are_on_disk_before_the_analysis(memorized_ddpm, tmp_path, monkeypatch):
    """An analysis that crashes leaves the scores, no completion marker, and readers say it is unfinished."""
    from hydra import compose, initialize_config_dir

    import audit.stats
    from audit.cli import CONFIG_DIR
    from audit.data import write_manifest
    from audit.pipeline import run_audit

    rows = [{"path": str(p), "role": "suspect"} for p in memorized_ddpm.member_paths[:6]]
    rows += [{"path": str(p), "role": "control"} for p in memorized_ddpm.held_out_paths[:10]]
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="audit", overrides=[
            "experiment=own_model", f"target.source={memorized_ddpm.model_dir}", "target.local_files_only=true",
            f"data.manifest={manifest}", "attack=[loss]", "attack.loss.timesteps=[100]", "runtime.progress=false",
            f"score_store={tmp_path / 'store'}", "report.formats=[html]"])

    def crash(*a, **k):
        raise RuntimeError("analysis crashed")

    monkeypatch.setattr(audit.stats, "analyze", crash)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="analysis crashed"):
        run_audit(cfg, out)
    run = io.read_run(out)
    assert len(run.scores.df) == 16 and run.scores.df["score"].notna().all()
    assert json.loads((out / io.RUN).read_text())["n_images"] == 16
    assert not (out / io.COMPLETE).exists()
    v = verify.verify(out, recompute=False)
    assert not v.ok and "unfinished" in v.problems[0]


@pytest.mark.slow
def test_kill_9_mid_scoring_then_rerun_recomputes_nothing_finished(memorized_ddpm, tmp_path):
    """The issue's probe with a real SIGKILL of `audit-run` (python -m audit) during scoring."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from audit.data import write_manifest

    rows = [{"path": str(p), "role": "suspect"} for p in memorized_ddpm.member_paths]
    rows += [{"path": str(p), "role": "control"} for p in memorized_ddpm.held_out_paths]
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    n, bs, per_image = 48, 4, 16 * 2  # loss at 16 timesteps x 2 noise draws: slow enough to be killed mid-way

    def cmd(store: Path, results: Path) -> list[str]:
        return [sys.executable, "-m", "audit", "experiment=own_model", f"target.source={memorized_ddpm.model_dir}",
                "target.local_files_only=true", f"data.manifest={manifest}", "attack=[loss]",
                f"attack.loss.timesteps=[{','.join(str(t) for t in range(20, 340, 20))}]", "attack.loss.n_noise=2",
                f"runtime.batch_size={bs}", "runtime.progress=false", f"score_store={store}", "report.formats=[html]",
                "stats.n_permutations=200", "stats.n_bootstrap=50", "stats.n_placebo=50", "stats.gates=[placebo]",
                f"paths.results_dir={results}", "name=kill"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    store = tmp_path / "store"
    proc = subprocess.Popen(cmd(store, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(store.rglob("batch-*.parquet"))) < 3:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed mid-scoring"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(store.rglob("batch-*.parquet")))
    assert 3 <= done < n // bs
    assert not list((tmp_path / "killed").rglob("COMPLETE"))  # the killed folder is visibly unfinished

    rerun = subprocess.run(cmd(store, tmp_path / "rerun"), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    (folder,) = [p.parent for p in (tmp_path / "rerun").rglob("COMPLETE")]
    meta = json.loads((folder / io.RUN).read_text())
    assert meta["unet_evaluations"] == (n - done * bs) * per_image  # zero finished evaluations recomputed
    assert meta["score_store"]["reused"] == done * bs and meta["score_store"]["batches_reused"] == done

    clean = subprocess.run(cmd(tmp_path / "store2", tmp_path / "clean"), env=env, capture_output=True, text=True,
                           timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    (clean_folder,) = [p.parent for p in (tmp_path / "clean").rglob("COMPLETE")]
    assert json.loads((clean_folder / io.RUN).read_text())["unet_evaluations"] == n * per_image
    pd.testing.assert_frame_equal(pd.read_parquet(folder / io.SCORES), pd.read_parquet(clean_folder / io.SCORES))
    # hashes only: recomputing the analysis here would compare two code versions if the tree changed meanwhile
    assert verify.verify(folder, recompute=False).ok


def test_store_context_includes_the_scoring_code(tmp_path):
    """Scores computed by other scoring code (same version string) are never reused."""
    from audit.store import code_fingerprint

    a = ScoreStore(tmp_path, "f" * 64, 0, "float32", "cpu")
    b = ScoreStore(tmp_path, "f" * 64, 0, "float32", "cpu", code="0" * 16)
    assert a.code == code_fingerprint() and a.folder != b.folder
    assert ScoreStore(tmp_path, "f" * 64, 0, "float32", "cpu").folder == a.folder


def test_a_changed_caption_is_scored_again_for_a_text_conditional_target(tiny_sd, memorized_ddpm, tmp_path):
    """The caption conditions every score of a text-to-image model, so it is part of the stored key: a work whose
    caption changed in the manifest is scored anew (the stored score of its old caption is not reused), the others
    are reused; an unconditional model's keys are the attacks' own hashes, as in older stores."""
    from dataclasses import replace

    from diffusers import UNet2DConditionModel

    from audit.data import load_evidence
    from audit.store import stored_params_hash

    target = load_target(str(tiny_sd[0]), local_files_only=True, device="cpu")
    entries = [{"path": str(p), "role": "suspect" if i < 2 else "control", "caption": "a painting"}
               for i, p in enumerate(memorized_ddpm.member_paths[:4])]
    first = load_evidence(entries, target.info.resolution, progress=False)
    attacks = {"loss": LossAttack(timesteps=[100], n_noise=1)}
    store = _store(tmp_path, target)
    before, _ = score_with_store(target, first, attacks, store, batch_size=4, seed=0, progress=False)
    changed = replace(first, records=[replace(first.records[0], caption="a portrait of a cat"), *first.records[1:]])
    with count_forward_calls(UNet2DConditionModel) as calls:
        after, stats = score_with_store(target, changed, attacks, store, batch_size=4, seed=0, progress=False)
    assert (stats.computed, stats.reused) == (1, 3) and calls["n"] == 1  # one work, one timestep
    fresh, _ = score_with_store(target, changed, attacks, None, batch_size=4, seed=0, progress=False)
    pd.testing.assert_frame_equal(after.df, fresh.df)  # what the new caption gives, not the old caption's score
    assert after.df["score"].iloc[0] != before.df["score"].iloc[0]
    assert set(after.df["attack_params_hash"]) == set(before.df["attack_params_hash"])  # the table keeps the attack's
    assert stored_params_hash("abc", None) == "abc"  # unconditional targets: keys as before
