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
