"""Configs compose and instantiate; the configured audit runs end to end through the real entry point."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from audit import io
from audit.attacks import Attack
from audit.cli import CONFIG_DIR
from audit.data import write_manifest
from audit.pipeline import build_attacks, run_audit
from audit.stats import AnalysisPlan
from audit.targets import Target

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=overrides, return_hydra_config=False)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "hydra" for o in _options(g)])
def test_every_config_file_composes_and_instantiates(group, option, memorized_ddpm, tiny_sd, tmp_path):
    if group in OTHER_PRIMARY:
        return _check_script_group(group, option, tmp_path)
    if group == "launcher":  # selects a Hydra launcher plugin; its jobs run in tests/test_scaleout.py
        from hydra.plugins.launcher import Launcher
        from hydra.utils import get_class

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            hcfg = compose(config_name="audit", overrides=[f"launcher={option}"], return_hydra_config=True)
        assert issubclass(get_class(hcfg.hydra.launcher._target_), Launcher)
        assert hcfg.runtime.shards >= 2  # one job per shard, then the merge
        assert hcfg.hydra.launcher.shards in (None, hcfg.runtime.shards)  # None: runtime.shards
        return
    overrides = [f"{group}={option}", f"paths.cache_dir={tmp_path}"]
    if group == "attack":
        overrides[0] = f"attack=[{option}]"
    cfg = _compose(overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if group == "attack":
        if cfg.attack[option].get("reference") is not None:  # calibrated attacks load their reference model
            cfg.attack[option].reference.source = str(memorized_ddpm.model_dir)
            cfg.attack[option].reference.local_files_only = True
        attacks = build_attacks(cfg)
        assert list(attacks) == [option] and all(isinstance(a, Attack) for a in attacks.values())
        # black-box statistics make no local denoiser evaluations: they cost service requests
        # (matching statistics of collected outputs, target=outputs, use neither: they read image files)
        assert (attacks[option].evaluations_per_image() > 0 or getattr(attacks[option], "access", "") == "outputs"
                or attacks[option].requests_per_image() > 0)
    elif group == "stats":
        assert isinstance(instantiate(cfg.stats), AnalysisPlan)
    elif group == "scenario":
        scen = instantiate(cfg.scenario)
        assert not scen.is_ready()  # instantiating must not build anything
    elif group == "target" and option == "http":  # a hosted service: built without contacting it
        cfg.target.base_url = "http://127.0.0.1:9"
        assert instantiate(cfg.target).info.family == "http"
    elif group == "target" and option == "outputs":  # collected outputs: a folder with one image, no model
        from PIL import Image

        (tmp_path / "outs").mkdir()
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "outs" / "o.png")
        cfg.target.outputs = str(tmp_path / "outs")
        assert instantiate(cfg.target).info.family == "outputs"
    elif group == "target":
        cfg.target.source = str(tiny_sd[0] if option == "sd" else memorized_ddpm.model_dir)
        cfg.target.local_files_only = True
        assert isinstance(instantiate(cfg.target), Target)
    elif group == "experiment":
        assert cfg.get("scenario") is None and OmegaConf.is_missing(cfg.target, "source")
    else:
        assert cfg[group] is not None


# groups of scripts/train_target.py and scripts/benchmark.py, composed through their own primary configs
OTHER_PRIMARY = {"dataset": "train_target", "model": "train_target", "bench": "benchmark"}


def _check_script_group(group: str, option: str, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from audit.groundtruth.sources import dataset_entries

    overrides = [f"{group}={option}", f"paths.cache_dir={tmp_path}", f"paths.results_dir={tmp_path}"]
    if group == "bench" and option == "local":
        overrides.append(f"bench.target_dir={tmp_path}")
    if group == "dataset" and option == "folder":
        (tmp_path / "artist_a").mkdir()
        (tmp_path / "artist_a" / "w.png").write_bytes(b"")
        overrides.append(f"dataset.folder={tmp_path}")
    if group == "dataset" and option == "synthetic":
        overrides.append("dataset.per_artist=2")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(OTHER_PRIMARY[group], overrides=overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if group == "dataset":
        if option == "openclipart" and not Path("/usr/share/openclipart/png").is_dir():
            with pytest.raises(FileNotFoundError, match="apt-get install openclipart-png"):
                dataset_entries(cfg.dataset, tmp_path)
            return
        entries = dataset_entries(cfg.dataset, tmp_path)
        assert entries and all(Path(e["path"]).is_file() and "category" in e for e in entries)
    elif group == "model":
        assert cfg.model.kind in ("ddpm", "lora") and cfg.model.n_members > 0 and cfg.model.n_nonmembers > 0
    else:
        assert cfg.bench.name == option and cfg.bench.source and cfg.out.endswith(option)
        assert set(cfg.attack) >= {"loss", "pia"}


def test_multirun_over_attacks_composes_one_attack_per_job():
    for name in _options("attack"):
        cfg = _compose([f"attack={name}"])
        assert list(cfg.attack) == [name]


@pytest.fixture(scope="module")
def audit_run(memorized_ddpm, tmp_path_factory):
    """A configured audit of the memorising tiny DDPM: suspects = members, controls = held-out works,
    plus a corrupt PNG and a non-image file listed as suspects."""
    root = tmp_path_factory.mktemp("audit_run")
    bad = root / "broken.png"
    bad.write_bytes(memorized_ddpm.member_paths[0].read_bytes()[:60])
    text = root / "readme_not_image.png"
    text.write_text("not an image")
    rows = [{"path": str(p), "role": "suspect", "caption": "", "artist": "a", "created": ""}
            for p in memorized_ddpm.member_paths[:12]]
    rows += [{"path": str(p), "role": "member"} for p in memorized_ddpm.member_paths[12:]]
    rows += [{"path": str(p), "role": "control"} for p in memorized_ddpm.held_out_paths[:24]]
    rows += [{"path": str(p), "role": "nonmember"} for p in memorized_ddpm.held_out_paths[24:]]
    rows += [{"path": str(bad), "role": "suspect"}, {"path": str(text), "role": "suspect"}]
    manifest = write_manifest(rows, root / "manifest.csv")
    cfg = _compose([
        "experiment=own_model",
        f"target.source={memorized_ddpm.model_dir}",
        "target.local_files_only=true",
        f"data.manifest={manifest}",
        "attack=[loss,pia]",
        "attack.loss.timesteps=[50,100,200]",
        "attack.pia.t=100",
        "runtime.progress=false",
        "stats.n_permutations=2000",
        "stats.n_bootstrap=300",
        "stats.crossfit_permutations=199",
        f"score_store={root / 'score_store'}",
    ])
    out = root / "results"
    report = run_audit(cfg, out)
    return out, report


def test_audit_detects_memorized_suspects_and_writes_report(audit_run):
    out, report = audit_run
    analysis = json.loads((out / io.ANALYSIS).read_text())
    assert analysis["verdict"]["decision"] == "reject_h0"
    html = Path(report).read_text()
    assert "inconsistent with" in html and "<img" in html
    assert "broken.png" in html and "readme_not_image.png" in html


def test_results_folder_is_complete_and_typed(audit_run):
    out, _ = audit_run
    run = io.read_run(out)
    df = run.scores.df
    assert set(df["attack"]) == {"loss", "pia"}
    assert len(df) == 2 * 48  # 48 accepted: 12 suspects, 4 members, 24 controls, 8 nonmembers
    assert df["target_fingerprint"].nunique() == 1 and len(df["target_fingerprint"].iloc[0]) == 64
    assert set(run.images["image_id"]) == set(df["image_id"])
    reasons = {Path(r["path"]).name: r["reason"] for r in run.rejected}
    assert set(reasons) == {"broken.png", "readme_not_image.png"}
    assert reasons["broken.png"] != reasons["readme_not_image.png"]
    meta = run.metadata
    assert meta["unet_evaluations"] == 48 * (6 + 2)
    assert meta["target"]["fingerprint"] == df["target_fingerprint"].iloc[0]
    assert "torch" in meta["versions"] and "seed: 0" in run.config_yaml
    # model-free features for the blind baseline, one row per accepted work; the plan recorded before scoring
    assert run.features is not None and set(run.features["image_id"]) == set(run.images["image_id"])
    plan = json.loads((out / io.PLAN).read_text())
    assert plan["sha256"] == meta["analysis_plan"]["sha256"] == json.loads((out / io.ANALYSIS).read_text())["plan_sha256"]
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")


def test_report_regenerates_without_the_model(audit_run, tmp_path, monkeypatch):
    import scripts.report as report_script
    import audit.targets.loading as loading

    out, _ = audit_run
    monkeypatch.setattr(loading, "load_target", lambda *a, **k: pytest.fail("the model must not be loaded"))
    new = report_script.main([str(out), "stats.alpha=0.01", "--out", str(tmp_path)])
    analysis = json.loads((tmp_path / io.ANALYSIS).read_text())
    assert analysis["plan"]["alpha"] == 0.01
    assert "α = 0.01" in Path(new).read_text()
    pd.testing.assert_frame_equal(io.read_run(tmp_path).scores.df, io.read_run(out).scores.df)
    # the PDF is regenerated too, and every gate ran from the stored files (blind features included)
    pdf = (tmp_path / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    assert {g["name"]: g["status"] for g in analysis["gates"]}["blind_baseline"] in ("pass", "fail")
    # a plan changed after scoring is labelled exploratory; the original plan regenerates as confirmatory
    assert analysis["verdict"]["confirmatory"] is False
    report_script.main([str(out), "--out", str(tmp_path / "same"), "--formats", "html"])
    assert json.loads((tmp_path / "same" / io.ANALYSIS).read_text())["verdict"]["confirmatory"] is True


@pytest.mark.slow
def test_hydra_multirun_over_attacks_writes_one_report_per_attack(memorized_ddpm, audit_run, tmp_path):
    """The real console entry point, as a user runs it: `audit-run -m ... attack=loss,pia`."""
    import subprocess
    import sys

    out, _ = audit_run
    manifest = out.parent / "manifest.csv"
    cmd = [sys.executable, "-m", "audit", "-m", "experiment=own_model", f"target.source={memorized_ddpm.model_dir}",
           "target.local_files_only=true", f"data.manifest={manifest}", "attack=loss,pia", "runtime.progress=false",
           "stats.n_permutations=200", "stats.n_bootstrap=50", "stats.crossfit_permutations=99", "report.formats=[html]",
           f"paths.results_dir={tmp_path}", "name=sweep"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    analyses = sorted(tmp_path.rglob(io.ANALYSIS))
    assert len(analyses) == 2
    attacks = sorted(json.loads(a.read_text())["primary_attack"] for a in analyses)
    assert attacks == ["loss", "pia"]
    assert all((a.parent / "report.html").is_file() for a in analyses)
