"""Reconstruction statistics through the score store (issue 26, item 3): a rerun computes nothing, a killed run
resumes, added works are computed alone, a tampered entry is recomputed, figures of reused works are regenerated,
and without a store nothing changes. On the tiny untrained DDPM of tests/conftest.py (16×16)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from diffusers import UNet2DModel

from audit.reconstruction import run_reconstruction
from audit.store import ScoreStore
from audit.targets import load_target
from audit.types import EvidenceSet
from tests.conftest import count_forward_calls, evidence_for

KEY = bytes(range(32))
BS = 4
CFG = {"enabled": True, "batch_size": BS,
       "generate": {"n": 6, "steps": 3, "ssim_top_k": 4, "clique_threshold": 0.3, "min_clique": 2},
       "inpaint": {"masks": ["half", "blocks"], "steps": 3, "resample": 1},
       "img2img": {"strength": 0.5, "steps": 2, "n": 2},
       "figures": {"enabled": False}}
POOL = 6 * 3  # generate: n × steps for the one unconditional pool
PER_WORK = 2 * 3 + 2 * 2  # inpaint: 2 masks × 3 steps; img2img: 2 variations × 2 steps


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread for every run of this module, the module-scoped reference `fresh` included: SSIM's
    convolutions sum in a different order on 2 threads (last digits of `nearest[*].ssim` differ)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _target(ddpm):
    return load_target(str(ddpm.model_dir), local_files_only=True, device="cpu")


def _store(root: Path, target, run: str = "run") -> ScoreStore:
    return ScoreStore(root, target.fingerprint, 0, "float32", "cpu", key=KEY, plan_sha256="p" * 64, run=run)


@pytest.fixture(scope="module")
def evidence(untrained_ddpm) -> EvidenceSet:
    ev = evidence_for(untrained_ddpm.member_paths[:5], untrained_ddpm.held_out_paths[:7])  # 12 works
    roles = {"member": "suspect", "nonmember": "control"}
    return EvidenceSet([replace(r, role=roles[r.role]) for r in ev.records], ev.pixels)


def _first(ev: EvidenceSet, k: int) -> EvidenceSet:
    return EvidenceSet(ev.records[:k], ev.pixels[:k])


def _run(ddpm, ev, store_root=None, cfg=CFG, out=None, run="run"):
    target = _target(ddpm)
    store = _store(store_root, target, run) if store_root is not None else None
    with count_forward_calls(UNet2DModel) as calls:
        res = run_reconstruction(target, ev, cfg, out, seed=0, progress=False, store=store)
    # every image through a denoiser is counted (an extraction's base counts its own)
    assert calls["n"] == res.unet_evals + res.record.get("base_unet_evaluations", 0)
    return res


@pytest.fixture(scope="module")
def fresh(untrained_ddpm, evidence):
    """An uninterrupted run without a store: the reference."""
    return _run(untrained_ddpm, evidence)


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(a.scores.df, b.scores.df)  # bit for bit
    for k in ("artworks", "generations", "summary", "params_hash", "statistics"):
        assert a.record[k] == b.record[k], k


def test_rerun_computes_nothing_and_gives_the_same_scores(untrained_ddpm, evidence, fresh, tmp_path):
    n = len(evidence)
    assert fresh.unet_evals == POOL + n * PER_WORK and fresh.store_stats["folder"] is None
    first = _run(untrained_ddpm, evidence, tmp_path / "store", run="first")
    assert first.unet_evals == fresh.unet_evals and first.store_stats["computed"] == 6 * n
    _same(first, fresh)  # the store changes nothing of a fresh run
    again = _run(untrained_ddpm, evidence, tmp_path / "store", run="second")
    assert again.unet_evals == 0  # no generation pool, no inpainting, no img2img
    _same(again, fresh)
    st = again.store_stats
    assert st["computed"] == 0 and st["reused"] == 6 * n and st["units_computed"] == 0 and st["integrity_failed"] == 0
    prov = again.provenance
    assert set(prov["attacks"]) == set(fresh.scores.attacks)
    for p in prov["attacks"].values():
        assert p["computed"] == 0 and p["reused"] == n and p["reused_from_runs"] == ["first"]
        assert p["reused_plan_sha256"] == ["p" * 64] and p["reused_under_other_plan"] == 0
    assert all(p["computed"] == n and p["reused"] == 0 for p in first.provenance["attacks"].values())
    # reconstruction rows have a context folder of their own (their code is part of it), apart from attack scores
    target = _target(untrained_ddpm)
    assert Path(st["folder"]) != _store(tmp_path / "store", target).folder
    assert again.record["score_store"]["statistics_unet_evaluations"] == 0


def test_killed_run_resumes_where_it_stopped(untrained_ddpm, evidence, fresh, tmp_path, monkeypatch):
    from audit.reconstruction import runner

    orig, calls = runner.repaint, {"n": 0}

    def dies_in_the_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # batch 1: masks half, blocks; batch 2: half → killed
            raise KeyboardInterrupt("simulated kill")
        return orig(*a, **k)

    monkeypatch.setattr(runner, "repaint", dies_in_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(untrained_ddpm, evidence, tmp_path / "store")
    monkeypatch.setattr(runner, "repaint", orig)
    resumed = _run(untrained_ddpm, evidence, tmp_path / "store")
    # the pool and the first inpainting batch were persisted: neither is computed again
    assert resumed.unet_evals == fresh.unet_evals - POOL - BS * 2 * 3
    _same(resumed, fresh)


def test_added_works_are_computed_alone(untrained_ddpm, evidence, fresh, tmp_path):
    _run(untrained_ddpm, _first(evidence, 8), tmp_path / "store")
    more = _run(untrained_ddpm, evidence, tmp_path / "store")
    # 4 new works; the shared unconditional pool is generated again (its works are matched against all of it)
    assert more.unet_evals == POOL + 4 * PER_WORK
    _same(more, fresh)
    assert all(p["computed"] == 4 and p["reused"] == 8 for p in more.provenance["attacks"].values())


def test_a_tampered_entry_is_recomputed_not_reused(untrained_ddpm, evidence, fresh, tmp_path):
    first = _run(untrained_ddpm, evidence, tmp_path / "store")
    victim = evidence.records[5].image_id
    for f in Path(first.store_stats["folder"]).glob("batch-*.parquet"):
        df = pd.read_parquet(f)
        hit = (df["image_id"] == victim) & (df["attack"] == "recon_img2img_tiled_l2")
        if hit.any():
            df.loc[hit, "score"] = 0.0  # "reconstructed perfectly"
            df.to_parquet(f, index=False)
    again = _run(untrained_ddpm, evidence, tmp_path / "store")
    assert again.unet_evals == 2 * 2  # the victim's img2img alone
    _same(again, fresh)
    prov = again.provenance
    assert prov["integrity_failed"] == 1 and prov["integrity_failures"][0]["image_id"] == victim
    assert prov["attacks"]["recon_img2img_tiled_l2"]["computed"] == 1
    assert again.store_stats["integrity_failed"] == 1


def test_figures_of_reused_works_are_regenerated(untrained_ddpm, evidence, tmp_path):
    cfg = {**CFG, "figures": {"roles": ["suspect"], "max_items": 2, "controls": 1, "top_k": 2, "scale": 16}}
    a = _run(untrained_ddpm, evidence, tmp_path / "store", cfg, tmp_path / "a" / "reconstruction")
    b = _run(untrained_ddpm, evidence, tmp_path / "store", cfg, tmp_path / "b" / "reconstruction")
    assert a.figure_unet_evals == 0 and a.record["score_store"]["figures_regenerated"] == []
    # only the three shown works' images: the pool's one batch (of 4 generations) holding their nearest
    # generations at most twice, their inpainting and the closest img2img variation
    assert 0 < b.unet_evals == b.figure_unet_evals <= 2 * BS * 3 + 3 * (2 * 3 + 2)
    assert len(b.record["score_store"]["figures_regenerated"]) == 3
    assert a.record["figures"] == b.record["figures"]
    files = sorted(p.relative_to(a.out_dir) for p in a.out_dir.rglob("*.png"))
    assert files == sorted(p.relative_to(b.out_dir) for p in b.out_dir.rglob("*.png")) and len(files) > 3
    for f in files:  # the same figures, byte for byte
        assert (a.out_dir / f).read_bytes() == (b.out_dir / f).read_bytes(), f


def test_without_a_store_nothing_is_written_or_keyed_differently(untrained_ddpm, evidence, fresh, tmp_path):
    from audit.reconstruction.config import GenerateConfig
    from audit.types import params_hash

    out = _run(untrained_ddpm, evidence, None, CFG, tmp_path / "reconstruction")
    assert not list(tmp_path.rglob("*.parquet"))
    _same(out, fresh)
    # scores.parquet's parameter hash of a statistic is the config section's, as before the store
    gen = {**GenerateConfig().__dict__, **CFG["generate"]}
    assert out.record["params_hash"]["recon_gen_tiled_l2"] == params_hash({"statistic": "recon_gen_tiled_l2", **gen})
    assert out.provenance["attacks"]["recon_gen_ssim"]["computed"] == len(evidence)
    assert json.loads((tmp_path / "reconstruction" / "reconstruction.json").read_text())["score_store"]["folder"] is None


def test_extraction_through_the_store(untrained_ddpm, evidence, tmp_path):
    """Extraction's unit is the caption group's pool too; the grid of a rerun is regenerated from the seeds. (The
    base is another instance of the same model: what is counted, not what is found, is tested here.)"""
    cfg = {"enabled": True, "batch_size": BS, "generate": {"enabled": False}, "inpaint": {"enabled": False},
           "img2img": {"enabled": False}, "figures": {"enabled": False},
           "extract": {"enabled": True, "n": 6, "steps": 2, "model_guidance": 2.0, "cluster_threshold": 0.3,
                       "top_clusters": 3, "figures": 2,
                       "base": {"source": str(untrained_ddpm.model_dir), "local_files_only": True}}}
    a = _run(untrained_ddpm, evidence, tmp_path / "store", cfg, tmp_path / "a" / "reconstruction")
    b = _run(untrained_ddpm, evidence, tmp_path / "store", cfg, tmp_path / "b" / "reconstruction")
    assert a.unet_evals == a.record["base_unet_evaluations"] == 6 * 2 and a.figure_unet_evals == 0
    assert b.unet_evals == b.figure_unet_evals > 0  # only the grid's medoid batches
    assert b.record["extraction"]["target_unet_evaluations"] == 0
    pd.testing.assert_frame_equal(a.scores.df, b.scores.df)
    assert a.record["artworks"] == b.record["artworks"]
    assert a.record["extraction"]["groups"] == b.record["extraction"]["groups"]
    assert (a.out_dir / "extract_grid.png").read_bytes() == (b.out_dir / "extract_grid.png").read_bytes()
    assert all(p["reused"] == len(evidence) for p in b.provenance["attacks"].values())


def test_shards_compute_disjoint_units_and_a_merge_computes_none(untrained_ddpm, evidence, fresh, tmp_path):
    evals = []
    for index in range(2):
        target = _target(untrained_ddpm)
        part = run_reconstruction(target, evidence, CFG, None, seed=0, progress=False,
                                  store=_store(tmp_path / "store", target), shard=(index, 2))
        assert part.scores.df.empty and part.store_stats["shard"] == [index, 2]
        evals.append(part.unet_evals)
    assert sum(evals) == fresh.unet_evals and min(evals) > 0  # disjoint, complete
    merged = _run(untrained_ddpm, evidence, tmp_path / "store")
    assert merged.unet_evals == 0
    _same(merged, fresh)
    with pytest.raises(ValueError, match="needs a score store"):
        run_reconstruction(_target(untrained_ddpm), evidence, CFG, None, seed=0, progress=False, shard=(0, 2))


@pytest.mark.slow  # two whole audits with reports (~35 s on one thread)
def test_audit_rerun_reuses_reconstruction_scores_with_provenance(untrained_ddpm, tmp_path, monkeypatch):
    """`audit-run ... reconstruction=screen score_store=...` twice: the second run evaluates the denoiser only for
    the figures, its scores.parquet is the first's, and run.json's score_provenance lists the recon_* rows as reused."""
    from audit import io
    from audit.pipeline import run_audit
    from tests.conftest import compose_audit, small_audit

    monkeypatch.setenv("AUDIT_STORE_KEY_FILE", str(tmp_path / "store.key"))
    base, _ = small_audit(untrained_ddpm, tmp_path, n_suspect=4, n_control=8)
    cfg = compose_audit(base + [f"score_store={tmp_path / 'store'}", "reconstruction=screen",
                                "reconstruction.generate.n=4", "reconstruction.generate.steps=2",
                                "reconstruction.inpaint.steps=2", "reconstruction.img2img.steps=2",
                                "reconstruction.figures.max_items=2", "reconstruction.figures.controls=1",
                                "reconstruction.figures.scale=16", "stats.n_permutations=99",
                                "stats.crossfit_permutations=19", "stats.n_placebo=20"])
    run_audit(cfg, tmp_path / "one")
    run_audit(cfg, tmp_path / "two")
    one, two = io.read_run(tmp_path / "one"), io.read_run(tmp_path / "two")
    pd.testing.assert_frame_equal(one.scores.df, two.scores.df)
    m1, m2 = one.metadata["reconstruction"], two.metadata["reconstruction"]
    assert m1["unet_evaluations"] > 0 and m1["figure_unet_evaluations"] == 0
    assert m2["unet_evaluations"] == m2["figure_unet_evaluations"]  # nothing but the figures' images
    assert m2["score_store"]["computed"] == 0 and m2["score_store"]["reused"] == m1["score_store"]["computed"] > 0
    prov = two.metadata["score_provenance"]["attacks"]
    recon = [a for a in two.scores.attacks if a.startswith("recon_")]
    assert "loss" in prov and recon and set(recon) <= set(prov)
    for a in recon:
        assert prov[a]["computed"] == 0 and prov[a]["reused"] == 12 and prov[a]["reused_from_runs"] == ["one"]
    assert all(one.metadata["score_provenance"]["attacks"][a]["computed"] == 12 for a in recon)
    assert (tmp_path / "two" / "reconstruction" / "evidence_grid.png").read_bytes() == \
        (tmp_path / "one" / "reconstruction" / "evidence_grid.png").read_bytes()
