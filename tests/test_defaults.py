"""Defaults decided before the plan is recorded: base calibration for a LoRA target (issue 12)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from audit.cli import CONFIG_DIR
from audit.data import write_manifest
from audit.pipeline import run_audit


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=overrides, return_hydra_config=False)


@pytest.fixture(scope="module")
def lora_setup(tiny_sd, artworks, tmp_path_factory):
    model, lora = tiny_sd
    members, held_out = artworks
    root = tmp_path_factory.mktemp("lora_default")
    rows = [{"path": str(p), "role": "suspect", "caption": "a painting", "artist": "a", "created": ""}
            for p in members[:4]]
    rows += [{"path": str(p), "role": "control", "caption": "a painting", "artist": "a", "created": ""}
             for p in held_out[:6]]
    manifest = write_manifest(rows, root / "manifest.csv")
    base = ["experiment=own_model", f"target.source={model}", f"target.lora={lora}", "target.local_files_only=true",
            f"data.manifest={manifest}", "attack=[loss]", "attack.loss.timesteps=[100]", "attack.loss.n_noise=1",
            "runtime.progress=false", "stats.n_permutations=99", "stats.n_bootstrap=20",
            "stats.crossfit_permutations=19", "stats.n_placebo=10", "report.formats=[html]", "score_store=null"]
    return root, base, model


def test_a_lora_target_is_calibrated_against_its_base_by_default(lora_setup):
    root, base, model = lora_setup
    out = root / "default"
    run_audit(_compose(base), out)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["plan"]["primary_attack"] == "loss_calibrated"
    assert "without the LoRA" in plan["decisions"] and str(model) in plan["decisions"]
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["attack"]) == {"loss", "loss_calibrated"}
    # the calibrated score is the target's loss score minus the base model's: not identical to the plain one
    wide = scores.pivot_table(index="image_id", columns="attack", values="score")
    assert (wide["loss_calibrated"] - wide["loss"]).abs().max() > 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["primary_attack"] == "loss_calibrated"


def test_calibration_default_can_be_switched_off_and_respects_an_explicit_primary(lora_setup):
    root, base, _ = lora_setup
    off = root / "off"
    run_audit(_compose(base + ["calibrate_lora=false"]), off)
    assert set(pd.read_parquet(off / "scores.parquet")["attack"]) == {"loss"}
    kept = root / "kept"
    run_audit(_compose(base + ["stats.primary_attack=loss"]), kept)
    plan = json.loads((kept / "plan.json").read_text())
    assert plan["plan"]["primary_attack"] == "loss" and "primary statistic is kept" in plan["decisions"]


def test_the_default_attack_list_is_fitted_to_the_target_and_a_chosen_list_is_not(untrained_ddpm, tmp_path):
    """A flow-matching target with the default attacks: PIAN (variance-preserving only) is left out with the
    reason, instead of stopping the run; a list the user chose is kept, so its unsupported attack still stops
    the run in one line at scoring."""
    from audit.attacks import PIA, PIAN, LossAttack
    from audit.defaults import DEFAULT_ATTACKS, fit_default_attacks
    from audit.groundtruth.families import build_tiny_family
    from audit.targets import load_target

    flow = load_target(str(build_tiny_family("sd3", tmp_path / "sd3", seed=0)), local_files_only=True)
    vp = load_target(str(untrained_ddpm.model_dir), local_files_only=True)
    default = {"loss": LossAttack(), "pia": PIA(), "pian": PIAN()}
    assert tuple(default) == DEFAULT_ATTACKS
    kept, why = fit_default_attacks(dict(default), flow)
    assert list(kept) == ["loss", "pia"] and "left out pian" in why and "flow" in why
    assert fit_default_attacks(dict(default), vp) == (default, "")  # every default attack supports a DDPM
    chosen = {"loss": LossAttack(), "pian": PIAN()}
    assert fit_default_attacks(chosen, flow) == (chosen, "")
