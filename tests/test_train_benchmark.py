"""Ground-truth targets (scripts/train_target.py) and the benchmark (scripts/benchmark.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from audit.benchmark import BenchmarkSettings, null_fpr, run_benchmark, set_level_power, smallest_n, write_benchmark
from audit.cli import CONFIG_DIR
from audit.data import read_manifest, sha256_file
from audit.targets import load_target
from audit.groundtruth.train import train_target

TINY = ["dataset=synthetic", "dataset.per_artist=6", "dataset.size=16", "model.resolution=16",
        "model.channels=[16,32,32]", "model.n_members=8", "model.n_nonmembers=16", "model.batch_size=8",
        "model.bf16=false", "progress=false"]


def _train_cfg(tmp: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train_target", overrides=[*TINY, f"out={tmp}", f"paths.cache_dir={tmp.parent / 'cache'}",
                                                  *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny DDPM that memorises its 8 members (300 steps, ~10 s)."""
    out = tmp_path_factory.mktemp("gt") / "ddpm"
    cfg = _train_cfg(out, "model.steps=300")
    train_target(cfg, cfg.out, cfg.paths.cache_dir, progress=False)
    return out


@pytest.mark.slow
def test_train_target_writes_loadable_model_and_membership(trained: Path):
    target = load_target(str(trained), local_files_only=True)
    assert target.info.kind == "pixel" and target.info.resolution == 16
    m = json.loads((trained / "membership.json").read_text())
    assert m["n_member"] == 8 and m["n_nonmember"] == 16 and m["seed"] == 0 and m["training"]["steps"] == 300
    entries = read_manifest(trained / "evidence.csv")
    assert sorted(e["role"] for e in entries) == ["member"] * 8 + ["nonmember"] * 16
    # the manifest lists exactly the files in membership.json, by content hash, and every artist is recorded
    by_hash = {i["image_id"]: i["role"] for i in m["images"]}
    assert {sha256_file(e["path"]): e["role"] for e in entries} == by_hash
    assert all(e["artist"] for e in entries)
    assert not (trained / "checkpoint.pt").exists()  # removed once the model is saved


@pytest.mark.slow
def test_ddpm_training_resumes_bit_exactly(tmp_path):
    """An interrupted run resumed from its checkpoint ends with the weights of an uninterrupted run."""
    from audit.groundtruth.ddpm import build_ddpm, train_ddpm

    images = torch.rand(6, 3, 8, 8) * 2 - 1
    ref, sched = build_ddpm(8, channels=(8, 16), seed=0)
    train_ddpm(ref, sched, images, steps=30, batch_size=4, lr=1e-3, seed=0, progress=False)

    ckpt = tmp_path / "ck.pt"
    unet, sched = build_ddpm(8, channels=(8, 16), seed=0)
    calls = {"n": 0}

    def crash(module, args):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt("simulated interruption")

    h = unet.register_forward_pre_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        train_ddpm(unet, sched, images, steps=30, batch_size=4, lr=1e-3, seed=0, progress=False, checkpoint=ckpt,
                   checkpoint_every=10)
    h.remove()
    assert ckpt.is_file()
    fresh, sched = build_ddpm(8, channels=(8, 16), seed=0)
    stats = train_ddpm(fresh, sched, images, steps=30, batch_size=4, lr=1e-3, seed=0, progress=False,
                       checkpoint=ckpt, checkpoint_every=10)
    assert stats["resumed_from_step"] == 20
    for (name, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    # a checkpoint from other settings is refused rather than silently mixed in
    with pytest.raises(ValueError, match="other settings"):
        train_ddpm(fresh, sched, images, steps=30, batch_size=2, lr=1e-3, seed=0, progress=False, checkpoint=ckpt)


def test_split_is_seeded_and_refuses_impossible_requests():
    from audit.groundtruth.sources import split_members

    entries = [{"path": f"/x/{i}.png", "category": "a" if i < 10 else "b"} for i in range(30)]
    a = split_members(entries, 4, 4, seed=1)
    assert [e["path"] for e in a] == [e["path"] for e in split_members(entries, 4, 4, seed=1)]
    assert [e["path"] for e in a] != [e["path"] for e in split_members(entries, 4, 4, seed=2)]
    only_a = split_members(entries, 3, 7, seed=0, groups=["a"])
    assert {e["category"] for e in only_a} == {"a"} and [e["role"] for e in only_a].count("member") == 3
    with pytest.raises(ValueError, match="only 10 images"):
        split_members(entries, 5, 6, seed=0, groups=["a"])


@pytest.mark.slow
def test_benchmark_end_to_end_detects_memorisation(trained: Path, tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("benchmark", overrides=[
            "bench=local", f"bench.target_dir={trained}", "attack=[loss,pia]", "settings.n_draws=50",
            "settings.n_null_draws=300", "settings.suspect_sizes=[2,6]", "settings.null_size=5",
            "settings.n_bootstrap=200", "progress=false", f"out={tmp_path / 'bench'}"])
    result = run_benchmark(cfg, progress=False)
    out = write_benchmark(result, cfg.out)
    rows = {r["attack"]: r for r in result["attacks"]}
    loss = rows["loss"]
    assert loss["n_member"] == 8 and loss["n_nonmember"] == 16
    assert loss["auc"] > 0.8 and loss["auc_ci"][0] > 0.5  # the memorised members are found
    assert loss["evals_per_image"] == loss["evals_per_image_declared"] == 6
    assert loss["overhead_ratio"] > 0 and loss["images_per_s"] > 0
    assert not loss["tpr_at_0.001_fpr"]["achievable"]  # 16 non-members cannot support a 0.1% FPR claim
    all_members = [r for r in loss["set_level"] if r["member_fraction"] == 1.0]
    assert all_members[-1]["median_p"] < all_members[0]["median_p"]  # more suspects, stronger evidence
    assert (out / "benchmark.md").read_text().count("| loss |") == 1
    assert (out / "roc.png").stat().st_size > 1000 and (out / "pvalue_vs_n.png").is_file()
    assert json.loads((out / "benchmark.json").read_text())["attacks"][0]["scores"]["member"] == loss["scores"]["member"]


def test_set_level_power_and_null_fpr_behave():
    rng = np.random.default_rng(0)
    settings = BenchmarkSettings(suspect_sizes=(5, 20, 50), member_fractions=(1.0, 0.2), n_draws=100,
                                 n_null_draws=1000, null_size=20, alpha=0.05, max_controls=300)
    neg = rng.normal(size=1000)
    pos = rng.normal(loc=0.8, size=200)
    rows = set_level_power(pos, neg, settings)
    power = {(r["n_suspect"], r["member_fraction"]): r["power"] for r in rows}
    assert power[(50, 1.0)] > 0.95 and power[(5, 1.0)] < power[(50, 1.0)]
    assert power[(50, 0.2)] < power[(50, 1.0)]
    assert smallest_n(rows, 1.0) in (5, 20)
    null = null_fpr(neg, settings)  # suspects are non-members: the rate must sit at or below α
    assert null["fpr_ci"][0] <= 0.05 and null["fpr"] < 0.08
    # a shifted "null" (suspects drawn from the member distribution) is not mistaken for one
    shifted = set_level_power(pos, neg, BenchmarkSettings(suspect_sizes=(20,), member_fractions=(1.0,),
                                                          n_draws=50, alpha=0.05))
    assert shifted[0]["power"] > 0.5
