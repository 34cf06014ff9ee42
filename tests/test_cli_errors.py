"""User errors fail early (before the model loads) and in one line, exit status 2 (issue 11)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from audit.cli import CONFIG_DIR
from audit.data import write_manifest
from audit.pipeline import run_audit


@pytest.fixture(scope="module")
def manifest(artworks, tmp_path_factory) -> Path:
    members, held_out = artworks
    rows = [{"path": str(p), "role": "suspect"} for p in members[:4]]
    rows += [{"path": str(p), "role": "control"} for p in held_out[:8]]
    return write_manifest(rows, tmp_path_factory.mktemp("cli") / "manifest.csv")


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=["experiment=own_model", "runtime.progress=false", *overrides])


@pytest.mark.parametrize("override,message", [
    ("runtime.batch_size=0", "runtime.batch_size must be a positive integer, got 0"),
    ("runtime.batch_size=-4", "runtime.batch_size must be a positive integer, got -4"),
    ("runtime.dtype=float8", "runtime.dtype must be one of"),
    ("runtime.device=gpu0", "runtime.device must be"),
    ("stats.alpha=1.5", "alpha must be in (0, 1)"),
])
def test_bad_values_fail_before_the_model_loads(manifest, tmp_path, monkeypatch, override, message):
    import audit.targets.loading as loading

    monkeypatch.setattr(loading, "load_target", lambda *a, **k: pytest.fail("the model must not be loaded"))
    cfg = _cfg([f"target.source={tmp_path}/no_model", f"data.manifest={manifest}", override])
    with pytest.raises(Exception) as info:
        run_audit(cfg, tmp_path / "run")
    from audit.cli import user_error_line

    assert message in user_error_line(info.value)


def test_manifest_problems_fail_before_the_model_loads(manifest, tmp_path, monkeypatch):
    import audit.targets.loading as loading

    monkeypatch.setattr(loading, "load_target", lambda *a, **k: pytest.fail("the model must not be loaded"))
    bad_role = tmp_path / "roles.csv"
    bad_role.write_text(manifest.read_text().replace(",control,", ",kontrol,", 1))
    with pytest.raises(ValueError, match="unknown role 'kontrol'"):
        run_audit(_cfg([f"target.source={tmp_path}/m", f"data.manifest={bad_role}"]), tmp_path / "a")
    gone = write_manifest([{"path": str(tmp_path / f"gone_{i}.png"), "role": "suspect"} for i in range(3)],
                          tmp_path / "gone.csv")
    with pytest.raises(ValueError, match="none of the 3 files listed in the manifest exists"):
        run_audit(_cfg([f"target.source={tmp_path}/m", f"data.manifest={gone}"]), tmp_path / "b")


def _cli(args: list[str], tmp_path: Path, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, "-m", "audit", "experiment=own_model", "runtime.progress=false",
                           f"paths.results_dir={tmp_path}", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_cli_user_error_is_one_line_with_exit_status_2(manifest, tmp_path):
    proc = _cli([f"target.source={tmp_path}/no_model", f"data.manifest={manifest}", "runtime.batch_size=0"], tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["audit-run: error: runtime.batch_size must be a positive integer, got 0"], proc.stderr
    # a local path that does not exist is reported as a local path, not as a malformed hub id
    proc = _cli([f"target.source={tmp_path}/no_model", f"data.manifest={manifest}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"model folder not found: {tmp_path}/no_model (tried as a local path" in proc.stderr
    # HYDRA_FULL_ERROR=1 keeps the traceback for developers
    proc = _cli([f"target.source={tmp_path}/no_model", f"data.manifest={manifest}", "runtime.batch_size=0"], tmp_path,
                full_error=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
