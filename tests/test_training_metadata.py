"""Score a fine-tune as it was trained, read its training metadata, audit full fine-tunes like LoRAs (issue 23).

Tiny real-class models (audit/groundtruth/families.py) with LoRA files that carry kohya-style ``ss_*`` metadata,
loaded through ``load_target`` and run through ``run_audit`` like a user's model.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from audit.cli import CONFIG_DIR  # noqa: E402
from audit.targets import TargetLoadError, load_target  # noqa: E402
from audit.targets.metadata import (  # noqa: E402
    MAX_HEADER_BYTES, check_base_hashes, exhibit_context, kohya_addnet_hash, kohya_model_hash, read_training_metadata)

README = Path(__file__).resolve().parents[1] / "README.md"


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=overrides, return_hydra_config=False)


def _with_metadata(src: Path, dst: Path, meta: dict[str, str]) -> Path:
    from safetensors.torch import load_file, save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.fixture(scope="module")
def flux_lora(tmp_path_factory):
    """A tiny Flux model (VAE sample_size 32, T5 tokenizer of 24 tokens) and a LoRA whose file says it was
    trained at 16 px with 12-token T5 prompts."""
    from audit.groundtruth.families import build_tiny_family, make_random_lora

    root = tmp_path_factory.mktemp("flux_meta")
    model = build_tiny_family("flux", root / "model", seed=0)
    plain = make_random_lora(model, "flux", root / "plain", rank=4, seed=1) / "pytorch_lora_weights.safetensors"
    meta = {"ss_resolution": "(16, 16)", "ss_t5xxl_max_token_length": "12", "ss_apply_t5_attn_mask": "True",
            "ss_guidance_scale": "2.5", "ss_output_name": "artist_x_v1", "ss_num_train_images": "32",
            "ss_training_started_at": "1700000000.5",
            "ss_dataset_dirs": json.dumps({"10_artist_x": {"n_repeats": 10, "img_count": 32}}),
            "ss_tag_frequency": json.dumps({"10_artist_x": {"artist_x": 32, "harbour": 7, "<b>dusk</b>": 3}}),
            "modelspec.title": "<script>alert('x')</script> harbour LoRA"}
    lora = _with_metadata(plain, root / "lora" / "artist_x.safetensors", meta)
    meta2 = {**meta}
    meta2["sshs_model_hash"] = kohya_addnet_hash(lora)  # the tensors' hash as kohya records it
    lora = _with_metadata(plain, root / "lora" / "artist_x.safetensors", meta2)
    return model, lora, plain


def test_a_lora_file_sets_resolution_token_length_mask_and_guidance_and_options_override(flux_lora):
    model, lora, plain = flux_lora
    t = load_target(str(model), lora=str(lora), local_files_only=True)
    assert (t.info.resolution, t.max_sequence_length, t.t5_attention_mask, t.guidance) == (16, 12, True, 2.5)
    cond = t.info.conditioning
    assert cond["resolution"]["source"] == "training metadata" and "ss_resolution=(16, 16)" in cond["resolution"]["reason"]
    assert cond["max_sequence_length"]["source"] == "training metadata"
    # explicit options win, and the metadata record says which of its values were not used
    o = load_target(str(model), lora=str(lora), local_files_only=True, resolution=32, max_sequence_length=20,
                    t5_attention_mask=False)
    assert (o.info.resolution, o.max_sequence_length, o.t5_attention_mask, o.guidance) == (32, 20, False, 2.5)
    assert o.info.conditioning["max_sequence_length"]["source"] == "option"
    used = o.info.training_metadata["scoring_defaults"]
    assert used["max_sequence_length"]["used"] is False and used["guidance"]["used"] is True
    # without metadata: the model's own config (vae.config.sample_size = 32) and the pipeline's defaults
    p = load_target(str(model), lora=str(plain), local_files_only=True)
    assert (p.info.resolution, p.max_sequence_length, p.t5_attention_mask) == (32, 24, False)
    assert p.info.conditioning["resolution"] == {"value": 32, "source": "model config",
                                                 "reason": "vae.config.sample_size=32"}
    # the settings change the scores, so they are part of the fingerprint (no score-store reuse across them)
    assert len({t.fingerprint, o.fingerprint, p.fingerprint}) == 3
    off = load_target(str(model), lora=str(lora), local_files_only=True, use_training_metadata=False)
    assert off.info.resolution == 32 and "not read" in off.info.training_metadata["note"]


def test_the_t5_mask_makes_the_padding_length_irrelevant_and_unmasked_padding_is_not(flux_lora):
    model, _, plain = flux_lora
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    out = {}
    for mask in (True, False):
        for n in (12, 24):
            t = load_target(str(model), lora=str(plain), local_files_only=True, t5_attention_mask=mask,
                            max_sequence_length=n)
            with torch.inference_mode():
                out[mask, n] = t.predict_noise(x, 500, t.encode_text(["a red circle", "waves"]))
    assert torch.allclose(out[True, 12], out[True, 24], atol=1e-5)
    assert (out[False, 12] - out[False, 24]).abs().max() > 1e-3


def test_an_option_that_does_not_apply_to_the_family_is_refused_in_one_line(tiny_sd):
    model, _ = tiny_sd
    with pytest.raises(TargetLoadError, match=r"t5_attention_mask does not apply to sd models") as e:
        load_target(str(model), local_files_only=True, t5_attention_mask=True)
    assert "\n" not in str(e.value)
    with pytest.raises(TargetLoadError, match=r"max_sequence_length=99: must be an integer from 1 to 16"):
        load_target(str(model), local_files_only=True, max_sequence_length=99)
    with pytest.raises(TargetLoadError, match=r"caption_template.*\{caption\}"):
        load_target(str(model), local_files_only=True, caption_template="{artist} style")


def test_the_caption_template_is_applied_and_the_empty_prompt_stays_empty(tiny_sd):
    model, _ = tiny_sd
    plain = load_target(str(model), local_files_only=True)
    tmpl = load_target(str(model), local_files_only=True, caption_template="sks, {caption}")
    assert tmpl.prompts(["a cat", ""]) == ["sks, a cat", ""]
    with torch.inference_mode():
        assert torch.equal(tmpl.encode_text(["a cat"]), plain.encode_text(["sks, a cat"]))
        assert torch.equal(tmpl.encode_text([""]), plain.encode_text([""]))
    assert tmpl.info.conditioning["caption_template"]["source"] == "option"


def test_hostile_metadata_is_refused_or_bounded_and_escaped_in_the_report(flux_lora, tmp_path):
    _, lora, _ = flux_lora
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{" + b" " * 64)
    r = read_training_metadata(huge)
    assert r.status == "refused" and "more than" in r.reason and not r.raw
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes((10_000).to_bytes(8, "little") + b'{"__metadata__": {}}')
    assert "does not fit" in read_training_metadata(lying).reason
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((12).to_bytes(8, "little") + b"{not json!!}")
    assert read_training_metadata(garbage).status == "refused"
    from safetensors.torch import save_file

    chunked = tmp_path / "chunked.safetensors"
    save_file({"w": torch.zeros(2)}, str(chunked), metadata={"ss_max_token_length": "225"})
    from audit.targets.metadata import metadata_notes

    assert "not reproduced" in metadata_notes([read_training_metadata(chunked)])[0]
    bad_json = tmp_path / "bad_json.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_json), metadata={"ss_tag_frequency": "{'not': json", "ss_resolution": "abc"})
    b = read_training_metadata(bad_json)
    assert b.status == "read" and b.to_dict()["unparsed"] == ["ss_tag_frequency"]
    long = tmp_path / "long.safetensors"
    save_file({"w": torch.zeros(2)}, str(long), metadata={"ss_output_name": "x" * 100_000})
    assert len(read_training_metadata(long).to_dict()["settings"]["ss_output_name"]) <= 300
    # HTML in the strings reaches the report only escaped
    t = load_target(str(flux_lora[0]), lora=str(lora), local_files_only=True)
    from audit.report.html import _env

    html = _env().get_template("_training_metadata.html.j2").render(
        training_metadata=exhibit_context(t.info.to_dict()))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;dusk" in html
    assert "10_artist_x" in html and "harbour" in html and "ss_t5xxl_max_token_length" in html
    assert "matches" in html and ">yes<" in html  # sshs_model_hash recomputed over the tensors


def test_base_hashes_are_checked_against_a_single_file_base(tmp_path):
    from safetensors.torch import save_file

    base = tmp_path / "base.safetensors"
    save_file({"w": torch.arange(600_000, dtype=torch.float32)}, str(base))  # > 1 MiB: the legacy hash reads there
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(600_000)}, str(other))
    lora = tmp_path / "lora.safetensors"
    import hashlib

    full = hashlib.sha256(base.read_bytes()).hexdigest()
    save_file({"w": torch.zeros(2)}, str(lora), metadata={"ss_sd_model_hash": kohya_model_hash(base),
                                                          "ss_new_sd_model_hash": full})
    rec = [read_training_metadata(lora)]
    assert check_base_hashes(rec, base)[0]["status"] == "matches"
    assert check_base_hashes(rec, other)[0]["status"] == "differs"
    assert check_base_hashes(rec, tmp_path)[0]["status"] == "not computable"


def test_a_default_run_scores_a_lora_at_its_training_metadata_and_says_why(flux_lora, artworks, tmp_path):
    from audit.data import write_manifest
    from audit.pipeline import run_audit

    model, lora, _ = flux_lora
    members, held_out = artworks
    rows = [{"path": str(p), "role": "suspect", "caption": "a harbour at dusk", "artist": "x", "created": ""}
            for p in members[:3]]
    rows += [{"path": str(p), "role": "control", "caption": "a harbour at dusk", "artist": "x", "created": ""}
             for p in held_out[:5]]
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    base = ["experiment=own_model", f"target.source={model}", f"target.lora={lora}", "target.local_files_only=true",
            f"data.manifest={manifest}", "attack=[loss]", "attack.loss.timesteps=[500]", "attack.loss.n_noise=1",
            "runtime.progress=false", "stats.n_permutations=99", "stats.n_bootstrap=20",
            "stats.crossfit_permutations=19", "stats.n_placebo=10", "report.formats=[html]", "score_store=null"]
    out = tmp_path / "default"
    run_audit(_compose(base), out)
    plan = json.loads((out / "plan.json").read_text())
    assert "resolution = 16 (training metadata: artist_x.safetensors: ss_resolution=(16, 16))" in plan["decisions"]
    assert "max_sequence_length = 12 (training metadata" in plan["decisions"]
    run = json.loads((out / "run.json").read_text())
    assert run["target"]["resolution"] == 16
    assert run["target"]["training_metadata"]["files"][0]["datasets"] == [
        {"folder": "10_artist_x", "images": 32, "repeats": 10}]
    # the base reference is scored as the target is (same resolution and prompt length)
    ref = run["attacks"]["loss_calibrated"]["reference"]
    assert ref["resolution"] == 16 and ref["conditioning"]["max_sequence_length"]["value"] == 12
    html = (out / "report.html").read_text()
    assert "What the model file says about its own training" in html and "ss_t5xxl_max_token_length" in html
    # an explicit option overrides the metadata, and plan.json says so
    over = tmp_path / "override"
    run_audit(_compose(base + ["target.max_sequence_length=20"]), over)
    decisions = json.loads((over / "plan.json").read_text())["decisions"]
    assert "max_sequence_length = 20 (option" in decisions and "resolution = 16 (training metadata" in decisions


# ---------------------------------------------------------------------------------------------- full fine-tunes
def _plan_after_defaults(overrides: list[str]):
    """The attacks and plan a run would declare (add_lora_calibration + choose_default_primary), no model loaded."""
    from hydra.utils import instantiate

    from audit.defaults import add_lora_calibration, choose_default_primary
    from audit.pipeline import build_attacks

    cfg = _compose(overrides)
    plan = instantiate(cfg.stats, _convert_="all")
    attacks = build_attacks(cfg)
    attacks, plan, why = add_lora_calibration(cfg, attacks, plan)
    plan, why2 = choose_default_primary(cfg, plan, attacks, n_suspect=10)
    return attacks, plan, why + " " + why2


def test_target_base_makes_a_full_fine_tune_calibrated_against_it(tmp_path):
    attacks, plan, why = _plan_after_defaults(
        ["experiment=own_model", "target.source=/models/finetune", "target.base=/models/public_base",
         "data.manifest=works.csv"])
    assert plan.primary_attack == "loss_calibrated" and "target.base" in why
    assert attacks["loss_calibrated"].reference["source"] == "/models/public_base"
    assert "base" not in attacks["loss_calibrated"].reference  # the reference is the base itself
    # calibrate_lora=false and an explicit primary are respected
    _, plan, _ = _plan_after_defaults(["experiment=own_model", "target.source=/m", "target.base=/b",
                                       "data.manifest=w.csv", "stats.primary_attack=loss"])
    assert plan.primary_attack == "loss"
    attacks, _, why = _plan_after_defaults(["experiment=own_model", "target.source=/m", "target.base=/b",
                                            "data.manifest=w.csv", "calibrate_lora=false"])
    assert "loss_calibrated" not in attacks and "calibrate_lora=false" in why
    # without base or LoRA nothing is calibrated (the measured default feature set)
    attacks, plan, _ = _plan_after_defaults(["experiment=own_model", "target.source=/m", "data.manifest=w.csv"])
    assert "loss_calibrated" not in attacks and plan.features


def _readme_calibrated_commands() -> list[list[str]]:
    """Every `audit-run` command line of the README that names a calibrated attack, as Hydra overrides."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("audit-run") and "loss_calibrated" in line and "..." not in line:
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_calibrated_examples_make_the_calibrated_loss_primary():
    commands = _readme_calibrated_commands()
    assert len(commands) >= 2  # the SDXL and the Flux LoRA examples
    for overrides in commands:
        overrides = [o for o in overrides if not o.startswith("runtime=")]
        attacks, plan, why = _plan_after_defaults(overrides)
        assert plan.primary_attack == "loss_calibrated", (overrides, why)
        assert set(attacks) == {"loss", "loss_calibrated"}


def test_a_full_fine_tune_run_with_target_base_is_calibrated_against_that_base(tiny_sd, artworks, tmp_path):
    """End to end: a fine-tuned folder (every UNet weight changed, no LoRA) + target.base → loss_calibrated primary,
    its reference the named base."""
    import shutil

    from audit.data import write_manifest
    from audit.pipeline import run_audit

    model, lora = tiny_sd
    tuned = load_target(str(model), lora=str(lora), local_files_only=True)  # the LoRA fused: a changed UNet
    ft = tmp_path / "finetune"
    shutil.copytree(model, ft)
    tuned.unet.save_pretrained(ft / "unet", safe_serialization=True)
    members, held_out = artworks
    rows = [{"path": str(p), "role": "suspect", "caption": "a painting", "artist": "a", "created": ""}
            for p in members[:3]]
    rows += [{"path": str(p), "role": "control", "caption": "a painting", "artist": "a", "created": ""}
             for p in held_out[:5]]
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    out = tmp_path / "run"
    run_audit(_compose(["experiment=own_model", f"target.source={ft}", f"target.base={model}",
                        "target.local_files_only=true", f"data.manifest={manifest}", "attack=[loss]",
                        "attack.loss.timesteps=[100]", "attack.loss.n_noise=1", "runtime.progress=false",
                        "stats.n_permutations=99", "stats.n_bootstrap=20", "stats.crossfit_permutations=19",
                        "stats.n_placebo=10", "report=none", "score_store=null"]), out)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["plan"]["primary_attack"] == "loss_calibrated" and "(target.base)" in plan["decisions"]
    run = json.loads((out / "run.json").read_text())
    assert run["attacks"]["loss_calibrated"]["reference"]["source"] == str(model)
    assert run["target"]["source"] == str(ft)
