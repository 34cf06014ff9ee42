"""Scale-out (issue 14): one audit split into shards — accelerate processes, launcher jobs, a SLURM submission —
gives the single-process scores bit for bit, one results folder and one report; a killed shard reruns alone and
recomputes only its unfinished batches. CPU only, on a tiny untrained pixel DDPM (scores need no training)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from diffusers import UNet2DModel

from audit import io, verify
from audit.parallel import (ScaleRun, SingleRun, apply_speed_settings, assign_batches, probe_batch_size, shard_batches,
                            validate_scale_config)
from tests.conftest import count_forward_calls

ROOT = Path(__file__).resolve().parents[1]
BS = 8
N = 48  # 16 suspects + 32 controls (untrained_ddpm's artworks)
PER_IMAGE = 2 + 2  # loss at 2 timesteps + PIA (2)


def _overrides(model_dir: Path, manifest: Path, store: Path, results: Path) -> list[str]:
    return ["experiment=own_model", f"target.source={model_dir}", "target.local_files_only=true",
            f"data.manifest={manifest}", "attack=[loss,pia]", "attack.loss.timesteps=[100,400]", "attack.loss.n_noise=1",
            f"runtime.batch_size={BS}", "runtime.progress=false", "runtime.num_threads=1", f"score_store={store}",
            "report.formats=[html]", "stats.n_permutations=100", "stats.n_bootstrap=50", "stats.n_placebo=20",
            "stats.gates=[placebo]", f"paths.results_dir={results}", "name=scale"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=overrides)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONPATH": str(ROOT)}


def _complete(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.rglob("COMPLETE"))


@pytest.fixture(scope="module")
def setup(untrained_ddpm, tmp_path_factory):
    from audit.data import write_manifest

    root = tmp_path_factory.mktemp("scale")
    rows = [{"path": str(p), "role": "suspect"} for p in untrained_ddpm.member_paths]
    rows += [{"path": str(p), "role": "control"} for p in untrained_ddpm.held_out_paths]
    manifest = write_manifest(rows, root / "manifest.csv")
    return untrained_ddpm.model_dir, manifest, root


@pytest.fixture(scope="module")
def single(setup):
    """The single-process reference run (its own score store)."""
    from audit.pipeline import run_audit

    model_dir, manifest, root = setup
    out = root / "single"
    with count_forward_calls(UNet2DModel) as calls:
        run_audit(_compose(_overrides(model_dir, manifest, root / "store_single", root / "res_single")), out)
    assert calls["n"] == N * PER_IMAGE
    return out, pd.read_parquet(out / io.SCORES)


def test_batches_are_assigned_by_content_balanced_and_complete():
    ids = [f"{i:064x}" for i in range(45)]
    for n in (1, 2, 3, 4):
        owner = assign_batches(ids, BS, n)
        assert len(owner) == 6 and sorted(set(owner)) == list(range(min(n, 6)))
        counts = [owner.count(s) for s in range(n)]
        assert max(counts) - min(counts) <= 1  # balanced to one batch
        assert sorted(sum((shard_batches(ids, BS, n, s) for s in range(n)), [])) == list(range(6))
        assert assign_batches(list(ids), BS, n) == owner  # deterministic
    # content, not position: other works in a batch move it, the same works keep it
    assert assign_batches(ids, BS, 3) != assign_batches(ids[::-1], BS, 3)


@pytest.mark.slow
def test_shard_jobs_killed_rerun_alone_then_merge_equal_single(setup, single, tmp_path, monkeypatch):
    """Shard 0 dies in its second batch; rerun alone it computes only its unfinished batches (counted); the merge
    refuses while shard 1 is missing, then writes scores identical to the single-process run, without the model."""
    from audit.attacks import LossAttack
    from audit.pipeline import run_audit

    model_dir, manifest, _ = setup
    _, ref = single
    store, shard_dir = tmp_path / "store", tmp_path / "shards"
    base = _overrides(model_dir, manifest, store, tmp_path / "res") + [
        "runtime.shards=2", f"runtime.shard_dir={shard_dir}"]
    ids_order = None
    mine = None

    orig = LossAttack.score
    seen = {"n": 0}

    def dies_in_second_batch(self, target, batch):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt("simulated kill of shard 0")
        return orig(self, target, batch)

    monkeypatch.setattr(LossAttack, "score", dies_in_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_audit(_compose(base + ["runtime.shard=0"]), tmp_path / "s0_killed")
    monkeypatch.setattr(LossAttack, "score", orig)
    assert len(list(store.rglob("batch-*.parquet"))) == 1 and not list(shard_dir.glob("*.json"))

    ids_order = list(ref.drop_duplicates("image_id")["image_id"])
    mine = shard_batches(ids_order, BS, 2, 0)
    with count_forward_calls(UNet2DModel) as calls:
        run_audit(_compose(base + ["runtime.shard=0"]), tmp_path / "s0")
    assert calls["n"] == (len(mine) - 1) * BS * PER_IMAGE  # the finished batch is not recomputed
    rec0 = json.loads((shard_dir / "shard-000-of-002.json").read_text())
    assert rec0["unet_evaluations"] == calls["n"] and rec0["store"]["batches_reused"] == 1
    assert rec0["batches"] == mine and not (tmp_path / "s0" / io.SCORES).exists()

    merge_cfg = _compose(base + ["runtime.shard=merge"])
    with pytest.raises(ValueError, match=r"no record of shard\(s\) \[1\] of 2"):
        run_audit(merge_cfg, tmp_path / "merge_early")

    with count_forward_calls(UNet2DModel) as calls:
        run_audit(_compose(base + ["runtime.shard=1"]), tmp_path / "s1")
    assert calls["n"] == (6 - len(mine)) * BS * PER_IMAGE

    import audit.targets

    def no_model(*a, **k):
        raise AssertionError("the merge must not load the model")

    monkeypatch.setattr(audit.targets, "load_target", no_model)
    with count_forward_calls(UNet2DModel) as calls:
        run_audit(merge_cfg, tmp_path / "merged")
    assert calls["n"] == 0
    merged = tmp_path / "merged"
    pd.testing.assert_frame_equal(pd.read_parquet(merged / io.SCORES), ref)  # bit for bit, same row order
    meta = json.loads((merged / io.RUN).read_text())
    assert meta["scale"]["mode"] == "merge" and [s["index"] for s in meta["scale"]["per_shard"]] == [0, 1]
    # evaluations of the whole audit: shard 0's rerun + shard 1 (the killed attempt's finished batch was reused)
    assert meta["unet_evaluations"] == (N - BS) * PER_IMAGE
    assert json.loads((merged / io.PLAN).read_text())["sha256"] == json.loads(
        (single[0] / io.PLAN).read_text())["sha256"]
    a = json.loads((merged / io.ANALYSIS).read_text())
    b = json.loads((single[0] / io.ANALYSIS).read_text())
    assert a["verdict"] == b["verdict"]
    assert (merged / "report.html").is_file() and verify.verify(merged, recompute=False).ok


@pytest.mark.slow
def test_local_launcher_two_shards_equal_single(setup, single, tmp_path):
    """audit-run -m launcher=local runtime.shards=2: two shard processes (submitit's local executor) + the merge."""
    model_dir, manifest, _ = setup
    _, ref = single
    cmd = [sys.executable, "-m", "audit", "-m", "launcher=local", "runtime.shards=2",
           *_overrides(model_dir, manifest, tmp_path / "store", tmp_path / "res")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (folder,) = _complete(tmp_path / "res")  # one sealed results folder: the merge job's
    assert folder.name.endswith("_merge")
    pd.testing.assert_frame_equal(pd.read_parquet(folder / io.SCORES), ref)
    meta = json.loads((folder / io.RUN).read_text())
    shards = meta["scale"]["per_shard"]
    assert len(shards) == 2 and len({s["pid"] for s in shards}) == 2  # two processes
    assert meta["unet_evaluations"] == N * PER_IMAGE == sum(s["unet_evaluations"] for s in shards)
    assert len(list((tmp_path / "res").rglob("report.html"))) == 1
    launch = json.loads(next((tmp_path / "res").rglob("launch.json")).read_text())
    assert [o[-2] for o in launch["points"][0]["shard_jobs"]] == ["runtime.shard=0", "runtime.shard=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_two_processes_equal_single(setup, single, tmp_path):
    """accelerate launch --multi_gpu --num_processes 2 (torchrun underneath; CPU processes here, runtime=cpu)."""
    model_dir, manifest, _ = setup
    _, ref = single
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "audit",
           *_overrides(model_dir, manifest, tmp_path / "store", tmp_path / "res")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (folder,) = _complete(tmp_path / "res")  # rank 0 alone writes the results folder
    assert len(list((tmp_path / "res").rglob("report.html"))) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(folder / io.SCORES), ref)
    meta = json.loads((folder / io.RUN).read_text())
    assert meta["scale"]["mode"] == "distributed" and meta["scale"]["shards"] == 2
    shards = meta["scale"]["per_shard"]
    assert len({s["pid"] for s in shards}) == 2 and all(s["unet_evaluations"] > 0 for s in shards)
    assert meta["unet_evaluations"] == N * PER_IMAGE
    assert "rank 1 of 2 scored" in proc.stdout


@pytest.mark.slow
def test_slurm_dry_run_writes_the_submission_for_four_shards(setup, tmp_path):
    model_dir, manifest, _ = setup
    cmd = [sys.executable, "-m", "audit", "-m", "launcher=slurm", "runtime.shards=4", "hydra.launcher.dry_run=true",
           "hydra.launcher.partition=gpu-a100", "hydra.launcher.timeout_min=90", "hydra.launcher.gpus_per_node=1",
           "hydra.launcher.array_parallelism=2", "hydra.launcher.account=artlab",
           *_overrides(model_dir, manifest, tmp_path / "store", tmp_path / "res")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "nothing submitted" in proc.stdout
    (folder,) = list((tmp_path / "res").rglob("0_slurm"))
    shards = (folder / "shards.sbatch").read_text()
    merge = (folder / "merge.sbatch").read_text()
    submit = (folder / "submit.sh").read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu-a100", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --account=artlab", "#SBATCH --job-name=audit-shards"):
        assert line in shards.splitlines(), (line, shards)
    cmdline = [ln for ln in shards.splitlines() if " -m audit " in ln]
    assert len(cmdline) == 1 and cmdline[0].startswith("srun ")
    assert "runtime.shard=${SLURM_ARRAY_TASK_ID}" in cmdline[0] and "runtime.shards=4" in cmdline[0]
    assert f"runtime.shard_dir={folder.parent / '0_shards'}" in cmdline[0] and "launcher=" not in cmdline[0]
    assert f"target.source={model_dir}" in cmdline[0]
    assert "runtime.shard=merge" in merge and "--gpus-per-node" not in merge and "--array" not in merge
    assert "#SBATCH --partition=gpu-a100" in merge.splitlines()
    assert "--dependency=afterok:$array" in submit and submit.index("shards.sbatch") < submit.index("merge.sbatch")
    assert not list((tmp_path / "res").rglob("COMPLETE")) and not (tmp_path / "store").exists()  # nothing ran
    reruns = (folder / "rerun_one_shard.txt").read_text().splitlines()
    assert len(reruns) == 4 and "runtime.shard=3" in reruns[3]
    # the generated shard command is a valid audit-run command line: task 2 of the array is shard 2 of 4
    import shlex

    job = cmdline[0].split(" -m audit ", 1)[1].replace("${SLURM_ARRAY_TASK_ID}", "2")
    args = [a for a in shlex.split(job) if not a.startswith("hydra.")]
    assert validate_scale_config(_compose(args)) == ("shard", 4, 2)
    merge_args = [a for a in shlex.split(next(ln for ln in merge.splitlines() if " -m audit " in ln).split(" -m audit ", 1)[1]) if not a.startswith("hydra.")]
    assert validate_scale_config(_compose(merge_args)) == ("merge", 4, None)


RECON = ["reconstruction=screen", "reconstruction.generate.n=4", "reconstruction.generate.steps=2",
         "reconstruction.inpaint.steps=2", "reconstruction.img2img.steps=2", "reconstruction.figures.enabled=false"]


@pytest.mark.slow  # a single run and two shards with reconstruction, two merges (~1 min on one thread)
def test_reconstruction_is_sharded_with_the_scores_and_merged_without_recomputing(setup, tmp_path):
    """Shard jobs compute disjoint reconstruction units into the store (their evaluations sum to a single run's);
    the merge assembles the single run's recon_* rows and reconstruction.json bit for bit, evaluating nothing; a
    merge whose reconstruction settings differ from the shards' is refused in one line."""
    from audit.pipeline import run_audit

    model_dir, manifest, root = setup
    one = tmp_path / "single"
    with count_forward_calls(UNet2DModel) as calls:
        run_audit(_compose(_overrides(model_dir, manifest, tmp_path / "store1", tmp_path / "res1") + RECON), one)
    single_recon = json.loads((one / io.RUN).read_text())["reconstruction"]
    assert calls["n"] == N * PER_IMAGE + single_recon["unet_evaluations"] and single_recon["unet_evaluations"] > 0

    store, shard_dir = tmp_path / "store", tmp_path / "shards"
    base = _overrides(model_dir, manifest, store, tmp_path / "res") + RECON + [
        "runtime.shards=2", f"runtime.shard_dir={shard_dir}"]
    per_shard = []
    for i in range(2):
        run_audit(_compose(base + [f"runtime.shard={i}"]), tmp_path / f"s{i}")
        rec = json.loads((shard_dir / f"shard-00{i}-of-002.json").read_text())["reconstruction"]
        per_shard.append(rec["unet_evaluations"])
        assert rec["store"]["shard"] == [i, 2]
    assert sum(per_shard) == single_recon["unet_evaluations"] and min(per_shard) > 0  # disjoint and complete

    with pytest.raises(ValueError, match=r"shard\(s\) \[0, 1\] of 2 ran with reconstruction"):
        run_audit(_compose([o for o in base if not o.startswith("reconstruction")] + ["runtime.shard=merge"]),
                  tmp_path / "merge_without")
    merged = tmp_path / "merged"
    with count_forward_calls(UNet2DModel) as calls:
        run_audit(_compose(base + ["runtime.shard=merge"]), merged)
    assert calls["n"] == 0  # every statistic is the shards'; no figures configured
    a, b = pd.read_parquet(merged / io.SCORES), pd.read_parquet(one / io.SCORES)
    assert a["attack"].str.startswith("recon_").any()
    pd.testing.assert_frame_equal(a, b)  # attack and recon_* rows, bit for bit, same order
    ra, rb = (json.loads((d / "reconstruction" / "reconstruction.json").read_text()) for d in (merged, one))
    for k in ("artworks", "generations", "summary", "params_hash", "statistics"):
        assert ra[k] == rb[k], k
    meta = json.loads((merged / io.RUN).read_text())
    assert meta["reconstruction"]["shard_unet_evaluations"] == single_recon["unet_evaluations"]
    assert meta["reconstruction"]["unet_evaluations"] == 0
    recon_prov = {k: p for k, p in meta["score_provenance"]["attacks"].items() if k.startswith("recon_")}
    assert recon_prov and all(p["computed"] == N and p["reused"] == 0 for p in recon_prov.values())  # for this run
    assert verify.verify(merged, recompute=False).ok


@pytest.mark.parametrize("extra,message", [
    (["runtime.shards=0"], "runtime.shards must be a positive integer, got 0"),
    (["runtime.shards=2", "runtime.shard=2", "runtime.shard_dir=x"], "runtime.shard must be null, 'merge' or an integer 0..1"),
    (["runtime.shards=2"], "runtime.shards=2 needs a launcher"),
    (["runtime.shards=2", "runtime.shard=0"], "runtime.shard=0 needs runtime.shard_dir"),
    (["runtime.shards=2", "runtime.shard=0", "runtime.shard_dir=x", "score_store=null"], "needs a score store"),
    (["runtime.attention=flash"], "runtime.attention must be one of auto, sdpa, eager"),
    (["runtime.compile=fast"], "runtime.compile must be false, true or one of"),
])
def test_bad_scale_config_is_one_line(extra, message, setup, tmp_path):
    model_dir, manifest, _ = setup
    cfg = _compose(_overrides(model_dir, manifest, tmp_path / "store", tmp_path / "res") + extra)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as e:
        validate_scale_config(cfg)
    assert "\n" not in str(e.value)


def test_bad_scale_config_exits_2_in_one_line_before_the_model_loads(setup, tmp_path, capsys, monkeypatch):
    """audit-run's user-error path: exit status 2, one line, and the model is never loaded."""
    import audit.targets
    from audit.cli import run_reporting_user_errors
    from audit.pipeline import run_audit

    monkeypatch.setattr(audit.targets, "load_target", lambda *a, **k: pytest.fail("the model was loaded"))
    model_dir, manifest, _ = setup
    cfg = _compose(_overrides(model_dir, manifest, tmp_path / "store", tmp_path / "res") + ["runtime.shards=3"])
    with pytest.raises(SystemExit) as e:
        run_reporting_user_errors("audit-run", run_audit, cfg, tmp_path / "out")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().count("\n") == 0
    assert err.startswith("audit-run: error: runtime.shards=3 needs a launcher")


@pytest.mark.slow
def test_speed_settings_keep_scores_and_probe_finds_largest_batch(untrained_ddpm, tmp_path):
    from audit.attacks import LossAttack
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm
    from audit.parallel.speed import attack_batch_runner
    from audit.targets import load_target
    from tests.conftest import evidence_for

    model = save_ddpm(*build_ddpm(16, channels=(16, 32), attention=True, seed=0), tmp_path / "attn_ddpm")
    ev = evidence_for(untrained_ddpm.member_paths[:4], untrained_ddpm.held_out_paths[:4])
    attacks = {"loss": LossAttack(timesteps=[100], n_noise=1)}

    def scores(rt):
        from audit.attacks import score_evidence

        t = load_target(str(model), local_files_only=True, device="cpu")
        applied = apply_speed_settings(t, rt)
        return score_evidence(t, ev, attacks, batch_size=4, seed=0, progress=False).df["score"], applied, t

    plain, applied, _ = scores({})
    assert applied["attention"] == {"setting": "auto", "processors": ["AttnProcessor2_0"]}  # diffusers' SDPA
    assert applied["dtype"] == "float32"
    fast, applied, t = scores({"channels_last": True, "attention": "eager"})
    assert applied["attention"]["processors"] == ["AttnProcessor"]  # switched in every attention layer
    assert applied["channels_last"] and t.denoiser.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    pd.testing.assert_series_equal(plain, fast, rtol=1e-4, atol=1e-6)

    def fake(b):  # "fits" up to 37 images
        if b > 37:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    r = probe_batch_size(fake, start=4, limit=1024)
    assert r["largest"] == 37 and r["tried"][64] == "oom" and r["tried"][32] == "ok"
    with pytest.raises(ZeroDivisionError):  # other errors are not "does not fit"
        probe_batch_size(lambda b: 1 / 0)
    real = probe_batch_size(attack_batch_runner(t, attacks, ev.batch(0, 2)), start=1, limit=6)
    assert real["largest"] == 6  # CPU, tiny model: the limit fits


def test_scale_run_from_config_single_mode(setup, tmp_path):
    model_dir, manifest, _ = setup
    run = ScaleRun.from_config(_compose(_overrides(model_dir, manifest, tmp_path / "s", tmp_path / "r")))
    assert run.mode == "single" and run.rank0 and not run.is_merge


def test_dry_run_applies_speed_settings_and_probes_the_batch(setup, capsys):
    """scripts/dry_run.py --probe-batch=N: the run's throughput settings, and the largest suite batch <= N."""
    import importlib.util

    model_dir, manifest, _ = setup
    spec = importlib.util.spec_from_file_location("dry_run_script", ROOT / "scripts" / "dry_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = _compose(_overrides(model_dir, manifest, Path("unused"), Path("unused")) + ["runtime.batch_size=4",
                                                                                      "runtime.attention=eager"])
    r = mod.dry_run(cfg, probe_limit=10)
    assert r["speed"]["attention"]["setting"] == "eager"
    assert r["probe"]["largest"] == 10 and r["probe"]["tried"] == {4: "ok", 8: "ok", 10: "ok"}
    mod._print(r)
    assert "largest batch that fits (whole suite, limit 10): 10" in capsys.readouterr().out


def test_store_context_keeps_non_default_denoiser_settings_apart(tmp_path):
    """Scores made with eager attention, channels_last or torch.compile differ in the last digits: never mixed."""
    from audit.store import ScoreStore

    plain = ScoreStore(tmp_path, "f" * 64, 0, "float32", "cpu")
    eager = ScoreStore(tmp_path, "f" * 64, 0, "float32", "cpu", settings="attention=eager")
    assert plain.folder != eager.folder and "denoiser_settings" not in plain.context  # defaults: old key kept
    run = SingleRun()
    assert run.store_settings() == ""
    run.speed = {"attention": {"setting": "eager"}, "channels_last": True, "compile": "default"}
    assert run.store_settings() == "attention=eager,channels_last,compile=default"
