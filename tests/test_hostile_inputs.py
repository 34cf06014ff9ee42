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


# ------------------------------------------------------------------------ 3-5, 12. crafted results folders
from tests.test_evidence_integrity import make_folder  # noqa: E402


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("genuine") / "run")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def _regenerate(args: list[str]):
    from audit.regenerate import main

    return main(args)


def _reconstruction_json(figure: str) -> dict:
    return {"config": {}, "statistics": {}, "summary": {},
            "figures": [{"role": "suspect", "image_id": "s" * 64, "figure": figure, "scores": {}, "p_conformal": {}}]}


@pytest.mark.parametrize("figure", ["../../secret.txt", "ABSOLUTE"])
def test_crafted_figure_path_embeds_nothing_from_outside(tmp_path, figure):
    import base64

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"the attacker wants this file: " + os.urandom(16).hex().encode())
    folder = make_folder(tmp_path / "a" / "run", seal=False)
    (folder / "reconstruction").mkdir()
    fig = str(secret) if figure == "ABSOLUTE" else figure
    (folder / "reconstruction" / "reconstruction.json").write_text(json.dumps(_reconstruction_json(fig)))
    verify.seal(folder)  # sealed by whoever crafted it
    _regenerate([str(folder), "--formats", "html"])
    html = (folder / "report.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode()[:24] not in html


def test_symlinked_directory_in_a_sealed_folder_is_refused_by_name(genuine, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "reconstruction.json").write_text(json.dumps(_reconstruction_json("f.png")))
    folder = _copy(genuine, tmp_path / "run")
    (folder / "reconstruction").symlink_to(outside, target_is_directory=True)
    v = verify.verify(folder)
    assert not v.ok and any("reconstruction (symbolic link" in p for p in v.problems)
    with pytest.raises(ValueError, match="regular files only.*reconstruction"):
        _regenerate([str(folder), "--allow-altered", "--formats", "html"])
    with pytest.raises(ValueError, match="regular files only"):
        verify.seal(folder)


@pytest.mark.parametrize("name", [io.ANALYSIS, "evidence_inventory.csv", io.REGENERATED])
def test_regeneration_never_writes_through_a_symlink(genuine, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite")
    folder = _copy(genuine, tmp_path / "run")
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(victim)
    with pytest.raises(ValueError, match=f"refused: {name}"):
        _regenerate([str(folder), "--allow-altered", "--formats", "html"])
    assert victim.read_text() == "do not overwrite"


def test_verify_on_a_symlink_to_dev_zero_ends_and_fails(genuine, tmp_path):
    folder = _copy(genuine, tmp_path / "run")
    (folder / "zero.bin").symlink_to("/dev/zero")
    v = _finishes(lambda: verify.verify(folder))
    assert not v.ok and any("zero.bin (symbolic link" in p for p in v.problems)


def test_edited_report_resealed_does_not_verify(genuine, tmp_path):
    folder = _copy(genuine, tmp_path / "run")
    html = (folder / "report.html").read_text()
    assert "are inconsistent with the hypothesis" in html
    (folder / "report.html").write_text(html.replace("are inconsistent with the hypothesis",
                                                     "are consistent with the hypothesis"))
    verify.seal(folder)
    v = verify.verify(folder)
    assert not v.ok and any("does not state the verdict" in p for p in v.problems)


def test_another_audits_report_dropped_in_and_resealed_does_not_verify(genuine, tmp_path):
    other = make_folder(tmp_path / "other", n_s=6, n_c=25)
    folder = _copy(genuine, tmp_path / "run")
    (folder / "report.html").write_bytes((other / "report.html").read_bytes())
    verify.seal(folder)
    v = verify.verify(folder)
    assert not v.ok and any("made from another analysis" in p for p in v.problems)


def test_a_seal_without_the_run_records_does_not_verify(genuine, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / io.SCORES).write_bytes((genuine / io.SCORES).read_bytes())
    verify.seal(folder)
    v = verify.verify(folder)
    assert not v.ok and any("not an audit's results" in p and io.RUN in p for p in v.problems)


def test_regeneration_typo_fails_before_touching_the_sealed_folder(genuine, tmp_path):
    folder = _copy(genuine, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for bad in (["stats.strata=[nonexistent]"], ["stats.primary_attack=nonexistent"], ["--formats", "docx"]):
        with pytest.raises(ValueError):
            _regenerate([str(folder), *bad])
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert verify.verify(folder).ok


# ------------------------------------------------------------------------ 6. long captions
def test_long_captions_refused_in_one_line_and_unbroken_text_is_breakable(tmp_path):
    from audit.data import read_manifest
    from audit.report.html import _breakable

    m = tmp_path / "m.csv"
    m.write_text(f"path,role,caption\na.png,suspect,{'x' * 2001}\n")
    with pytest.raises(ValueError, match=r"m.csv:line 2: field 'caption' has 2001 characters, more than the 2000"):
        read_manifest(m)
    m.write_text(f"path,role,caption\na.png,suspect,{'x' * 140_000}\n")  # over the csv module's own limit
    with pytest.raises(ValueError, match="m.csv: malformed CSV: field larger than field limit"):
        read_manifest(m)
    out = _breakable("x" * 2000)
    assert out.count("\u200b") == 24 and _breakable("f" * 64) == "f" * 64  # a SHA-256 stays whole


@pytest.mark.slow
def test_pdf_of_a_report_with_a_long_unbroken_caption_takes_no_longer(tmp_path):
    """Before: a 2,000-character unbroken caption added ~20 s per table cell to the PDF (52 s in the probe)."""
    import time

    from audit.pipeline import analyze_and_report
    from audit.report.html import PdfUnavailable  # noqa: F401  (the PDF path must be importable)
    from audit.stats import AnalysisPlan
    from tests.test_evidence_integrity import FAST_PLAN, _scores

    times = {}
    for n in (10, 2000):
        scores, images = _scores(8, 30)
        images.loc[0, "caption"] = "x" * n
        images.loc[1, "path"] = "/evidence/" + "y" * n + ".png"
        out = tmp_path / str(n)
        out.mkdir()
        run = io.RunData(scores=scores, images=images, metadata={"seed": 0}, config_yaml="seed: 0\n")
        t0 = time.time()
        analyze_and_report(run, AnalysisPlan(**FAST_PLAN), {"enabled": True, "formats": ["html", "pdf"]}, out)
        times[n] = time.time() - t0
        if not (out / "report.pdf").is_file():
            pytest.skip("WeasyPrint cannot write PDFs here")
    assert times[2000] < 1.6 * times[10] + 5, times


# ------------------------------------------------------------------------ 7-14. configs checked before anything runs
@pytest.fixture(scope="module")
def manifest(artworks, tmp_path_factory) -> Path:
    from audit.data import write_manifest

    members, held_out = artworks
    rows = [{"path": str(p), "role": "suspect"} for p in members[:4]]
    rows += [{"path": str(p), "role": "control"} for p in held_out[:8]]
    return write_manifest(rows, tmp_path_factory.mktemp("hostile") / "manifest.csv")


def _cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=["experiment=own_model", "runtime.progress=false", *overrides])


@pytest.fixture
def no_model(monkeypatch):
    import audit.targets.loading as loading

    monkeypatch.setattr(loading, "load_target", lambda *a, **k: pytest.fail("the model must not be loaded"))


def _refused(cfg, out: Path, match: str):
    from audit.cli import user_error_line
    from audit.pipeline import run_audit

    with pytest.raises(Exception) as info:
        run_audit(cfg, out)
    line = user_error_line(info.value)
    assert line is not None and match in line, (line, info.value)
    return line


@pytest.mark.parametrize("override,message", [
    ("+attack.evil={_target_:builtins.open,file:VICTIM,mode:w}", "only the project's own classes"),
    ("+attack.evil={_target_:shutil.copyfile,src:VICTIM,dst:VICTIM2}", "only the project's own classes"),
    ("+attack.evil={_target_:pathlib.Path.touch,self:VICTIM2}", "only the project's own classes"),
    ("+attack.evil={_target_:audit.store.os.system,_args_:[touch VICTIM2]}", "only the project's own classes"),
    ("+attack.evil={_target_:audit.io.write_json,path:VICTIM,obj:1}", "only the project's own classes"),
])
def test_only_project_classes_are_instantiable(manifest, tmp_path, no_model, override, message):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    ov = override.replace("VICTIM2", str(tmp_path / "created.txt")).replace("VICTIM", str(victim))
    _refused(_cfg([f"target.source={tmp_path}/m", f"data.manifest={manifest}", ov]), tmp_path / "run", message)
    assert victim.read_text() == "intact" and not (tmp_path / "created.txt").exists()


@pytest.mark.parametrize("override,message", [
    ("report.filename=../../escape.html", "report.filename must be a plain file name"),
    ("report.filename=plan.json", "report.filename must be a plain file name"),
    ("report.filename=scores.parquet", "report.filename must be a plain file name"),
    ("report.pdf_filename=report.html", "report.pdf_filename must be a plain file name"),
    ("report.formats=[docx]", "report.formats must be"),
    ("data.max_pixels=0", "data.max_pixels must be a positive integer"),
    ("stats.primary_attack=secmi", "stats.primary_attack names 'secmi', which is not in this run's attack list"),
    ("stats.features=[loss,nonexistent]", "stats.features names 'nonexistent'"),
    ("stats.strata=[nonexistent]", "stats.strata names column 'nonexistent'"),
    ("seed=99999999999999999999", "seed must be an integer from 0 to 2**63 - 1"),
])
def test_late_failing_settings_fail_before_the_model_loads(manifest, tmp_path, no_model, override, message):
    cfg = _cfg([f"target.source={tmp_path}/m", f"data.manifest={manifest}", "attack=[loss,pia]", override])
    _refused(cfg, tmp_path / "a" / "run", message)
    assert not (tmp_path / "escape.html").exists()
    assert not list((tmp_path / "a").rglob("*.json"))  # nothing written: no plan, no scores


def test_same_second_runs_do_not_share_a_folder(manifest, tmp_path, no_model):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "run"
        out.mkdir()
        (out / ".audit-run").write_text(f"{holder.pid}\n")  # the other audit, still running, holds the folder
        _refused(_cfg([f"target.source={tmp_path}/m", f"data.manifest={manifest}"]), out, "is in use by another run")
    finally:
        holder.kill()
        holder.wait()
    from audit.pipeline import claim_run_folder

    claim_run_folder(out)  # the holder ended: its claim is taken over
    assert (out / ".audit-run").read_text().strip() == str(os.getpid())


SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c"


@pytest.mark.parametrize("override", [
    f"+target.headers.X-Api-Key={SECRET}",
    f"+target.headers.Authorization=Bearer_{SECRET}",
    f"target.api_key_env={SECRET}",
    f"target.base_url=https://user:{SECRET}@api.example.com",
    f"target.base_url='https://api.example.com/?api_key={SECRET}'",
])
@pytest.mark.slow
def test_a_credential_never_reaches_disk(manifest, tmp_path, override):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    args = [sys.executable, "-m", "audit", "experiment=own_model", "target=http", "runtime.progress=false",
            "target.base_url=https://api.example.com", f"data.manifest={manifest}", f"paths.results_dir={tmp_path}",
            f"paths.cache_dir={tmp_path / 'cache'}", override]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("audit-run: error: ") and SECRET not in lines[0], proc.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_bytes().decode("latin-1"), f
    # a multirun too: Hydra writes multirun.yaml before any job starts
    proc = subprocess.run([args[0], "-m", "audit", "-m", *args[3:]], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2 and SECRET not in proc.stderr, proc.stderr[-2000:]
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_bytes().decode("latin-1"), f


def test_duplicate_manifest_column_and_foreign_encodings_are_refused_in_one_line(tmp_path):
    from audit.data import read_manifest

    m = tmp_path / "m.csv"
    m.write_text("path,role,caption,artist,artist\na.png,suspect,c,A,B\n")
    with pytest.raises(ValueError, match=r"m.csv:line 1: column\(s\) 'artist' appear more than once"):
        read_manifest(m)
    m.write_bytes("path,role,caption\nä.png,suspect,café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"m.csv: not UTF-8 text"):
        read_manifest(m)
    m.write_bytes("path,role\na.png,suspect\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"m.csv: not UTF-8 text"):
        read_manifest(m)


@pytest.mark.slow
def test_audit_verify_into_a_closed_pipe_has_no_traceback(genuine):
    proc = subprocess.run(f"{sys.executable} -c 'from audit.verify import console; console()' {genuine} | head -c 1",
                          shell=True, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------ 1b. audit-verify --rescore
@pytest.mark.slow
def test_rescore_recomputes_reused_scores_and_catches_rewritten_ones(memorized_ddpm, tmp_path, capsys):
    from audit.data import write_manifest
    from audit.pipeline import analyze_and_report, run_audit

    rows = [{"path": str(p), "role": "suspect"} for p in memorized_ddpm.member_paths[:6]]
    rows += [{"path": str(p), "role": "control"} for p in memorized_ddpm.held_out_paths[:10]]
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    ov = [f"target.source={memorized_ddpm.model_dir}", "target.local_files_only=true", f"data.manifest={manifest}",
          "attack=[loss]", "attack.loss.timesteps=[100]", f"score_store={tmp_path / 'store'}", "report.formats=[html]",
          "stats.gates=[placebo]", "stats.n_placebo=50", "stats.n_permutations=200", "stats.n_bootstrap=50"]
    run_audit(_cfg(ov), tmp_path / "first")
    run_audit(_cfg(ov), tmp_path / "second")  # every score reused from the store
    folder = tmp_path / "second"
    meta = json.loads((folder / io.RUN).read_text())
    assert meta["score_provenance"]["attacks"]["loss"]["reused"] == 16
    assert meta["score_provenance"]["attacks"]["loss"]["reused_from_runs"] == ["first"]
    assert verify.main([str(folder), "--rescore", "5"]) == 0
    assert "5 of 5 sampled scores recomputed with the model agree" in capsys.readouterr().out

    # someone rewrites the suspects' scores, recomputes the analysis and the report and reseals: the folder
    # verifies, but the scores no longer follow from the model
    run = io.read_run(folder)
    df = run.scores.df.copy()
    df.loc[df.role == "suspect", "score"] -= 1.0
    df.to_parquet(folder / io.SCORES, index=False)
    run = io.read_run(folder)
    plan = io.plan_from_values(json.loads((folder / io.PLAN).read_text())["plan"])
    analyze_and_report(run, plan, {"enabled": True, "formats": ["html"]}, folder)
    verify.seal(folder)
    assert verify.main([str(folder)]) == 0
    capsys.readouterr()
    assert verify.main([str(folder), "--rescore", "all"]) == 1
    out = capsys.readouterr().out
    assert out.count("recomputed with the model") == 6  # the 6 suspects' rewritten scores, by image


def test_stripping_altered_from_the_seal_does_not_verify(genuine, tmp_path):
    folder = _copy(genuine, tmp_path / "run")
    (folder / "notes.txt").write_text("added after sealing")
    _regenerate([str(folder), "--allow-altered", "--formats", "html"])
    seal = json.loads((folder / io.CHECKSUMS).read_text())
    assert seal["altered"]
    seal["altered"] = []
    blob = json.dumps(seal, indent=1, sort_keys=True).encode()
    (folder / io.CHECKSUMS).write_bytes(blob)
    import hashlib

    (folder / io.COMPLETE).write_text(hashlib.sha256(blob).hexdigest() + "\n")
    v = verify.verify(folder)
    assert not v.ok and any("regenerated from data that failed verification" in p for p in v.problems)


@pytest.mark.parametrize("name", ["../../../secret.txt", "ABSOLUTE"])
def test_crafted_outputs_exhibit_embeds_nothing_from_outside(tmp_path, name):
    from audit.outputs.report import outputs_context

    secret = tmp_path / "secret.txt"
    secret.write_text("outside the folder")
    root = tmp_path / "a" / "b" / "run"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "outputs.json").write_text(json.dumps({"accepted": [], "refused": []}))
    file = str(secret) if name == "ABSOLUTE" else name
    (root / "run.json").write_text(json.dumps({"outputs": {"exhibits": [{"file": file}]}, "attacks": {}}))
    ctx = outputs_context(root)
    assert ctx is not None and "exhibits" in ctx and all(not e.get("b64") for e in ctx["exhibits"])


def test_missing_or_empty_lora_is_named_in_one_line(tiny_sd, tmp_path):
    from safetensors.torch import save_file

    from audit.cli import user_error_line

    model, _ = tiny_sd
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    for lora, message in ((str(tmp_path / "gone" / "adapter.safetensors"), "LoRA file or folder not found"),
                          (str(empty), "holds no tensors")):
        with pytest.raises(Exception) as info:
            load_target(str(model), lora=lora, local_files_only=True, device="cpu")
        line = user_error_line(info.value)
        assert line is not None and message in line and "hub" not in line, line


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_bad_model_index_is_named_in_one_line(tmp_path, content):
    from audit.cli import user_error_line

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text(content)
    with pytest.raises(Exception) as info:
        load_target(str(tmp_path / "model"), local_files_only=True, device="cpu")
    line = user_error_line(info.value)
    assert line is not None and "model_index.json" in line, (line, info.value)


def test_an_absurd_model_resolution_fails_in_one_line_before_decoding(manifest, tmp_path, monkeypatch):
    import audit.prepare as prep

    class Huge:
        fingerprint, info = "f" * 64, type("I", (), {"resolution": 100_000})()

    monkeypatch.setattr(prep, "load_evidence_from_config", lambda *a, **k: pytest.fail("nothing may be decoded"))
    cfg = _cfg([f"target.source={tmp_path}/m", f"data.manifest={manifest}"])
    with pytest.raises(ValueError, match="the model scores works at 100000 px"):
        prep.prepare(cfg, load_target=lambda c: Huge(), progress=False)
