"""The outputs target (issue 24): an audit from collected outputs and screenshots, with no model.

Real OpenCV / ImageHash matching on procedural artworks turned into phone-UI screenshots (JPEG, rescaled,
cropped, watermarked) by :mod:`audit.outputs.groundtruth`; the full audit through :func:`audit.pipeline.run_audit`.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
pytest.importorskip("imagehash")

from audit.groundtruth.synthetic import render_artwork  # noqa: E402
from audit.outputs import STATISTICS, OutputsTarget  # noqa: E402
from audit.outputs.groundtruth import paste_partial, phone_frame, screenshot  # noqa: E402

ARTISTS = ["stripes", "circles", "grid", "waves"]
FAST = ["target.work_side=256", "target.feature_side=256", "target.n_features=600"]
FAST_STATS = ["stats.n_placebo=100", "stats.n_power_resamples=50", "stats.n_permutations=199"]


def _works(folder: Path, n: int, offset: int = 0, size: int = 32, seed: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{ARTISTS[i % 4]}_{offset + i:04d}.png"
        Image.fromarray(render_artwork(ARTISTS[i % 4], offset + i, size=size, seed=seed)).save(p)
        paths.append(p)
    return paths


def _outputs_manifest(folder: Path, shots: list[tuple[str, bytes]], extra_rows: list[str] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,source,captured_at,capture_method,prompt,notes"]
    for k, (name, data) in enumerate(shots):
        (folder / name).write_bytes(data)
        rows.append(f"{name},https://app.example/share/{k},2025-03-{1 + k % 28:02d}T10:{k % 60:02d}:00Z,"
                    f"screenshot,a painting in the style of {ARTISTS[k % 4]},collected by artist {k}")
    rows += list(extra_rows)
    p = folder / "outputs.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def _score_all(target: OutputsTarget, evidence, names) -> dict[str, np.ndarray]:
    from audit.attacks.base import Batch, NoiseSource

    stats = {n: STATISTICS[n]() for n in names}
    target._names = {id(a): n for n, a in stats.items()}
    target.use_evidence(evidence)
    ids = [r.image_id for r in evidence.records]
    batch = Batch(x0=None, cond=None, captions=[""] * len(ids), image_ids=ids, noise_source=NoiseSource(0, ids))
    return {n: s.score(target, batch).numpy() for n, s in stats.items()}


def _evidence(paths: list[Path], roles: list[str]):
    from audit.data import load_evidence

    return load_evidence([{"path": str(p), "role": r, "artist": p.name.split("_")[0]} for p, r in zip(paths, roles)],
                         64, progress=False)


def test_partial_copy_is_matched_and_drawn(tmp_path):
    """A region of a work pasted, rescaled, into an unrelated output inside a phone-UI frame (JPEG): the work's best
    SIFT match is that screenshot, far above every other work's, and the transform puts it where it was pasted."""
    from audit.outputs.exhibits import draw_pair

    works = _works(tmp_path / "works", 16)
    rng = np.random.default_rng(0)
    source = np.asarray(Image.open(works[5]).convert("RGB"))
    unrelated = render_artwork("rings", 7, size=64, seed=11)  # another artist, another work
    pasted, where = paste_partial(source, unrelated, rng, frac=0.5, out_size=256)
    data, rec = screenshot(pasted, seed=4, watermark_p=1.0, crop_p=0.0)
    assert 60 <= rec["jpeg_quality"] <= 80 and rec.get("watermark")
    others = [(f"u{k}.jpg", screenshot(render_artwork(ARTISTS[k % 4], 900 + k, size=32, seed=3), seed=20 + k)[0])
              for k in range(5)]
    manifest = _outputs_manifest(tmp_path / "outs", [("partial.jpg", data)] + others)
    target = OutputsTarget(str(manifest), work_side=256, feature_side=256, n_features=600)
    ev = _evidence(works, ["suspect"] + ["control"] * 15)
    scores = _score_all(target, ev, ["out_sift"])["out_sift"]
    best = target.matches["out_sift"][ev.records[5].image_id]
    assert best["output_sha256"] == target.collection.records[0].sha256
    assert scores[5] >= 8 and scores[5] >= 3 * max(np.delete(scores, 5).max(), 1), scores
    # the work's matched region lands on the pasted region of the screenshot (output px of the decoded screenshot)
    T = np.asarray(best["transform"])
    up = target.work(ev.records[5].image_id).shape[1] / source.shape[1]  # works are matched at the working size
    x0, y0, x1, y1 = np.array(where["source_box"]) * up
    centre = T[:, :2] @ np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + T[:, 2]
    shot_w = target.output(0).shape[1]
    frame_scale = shot_w / rec["frame"]["size"][0]
    ib = np.array(rec["frame"]["image_box"], dtype=float) * frame_scale
    px0, py0, px1, py1 = where["placed_box"]
    side = ib[2] - ib[0]
    placed = np.array([ib[0] + (px0 + px1) / 2 / 256 * side, ib[1] + (py0 + py1) / 2 / 256 * side])
    assert np.linalg.norm(centre - placed) < 0.15 * side, (centre, placed)
    # the exhibit draws the inlier matches: coloured line pixels appear between the two panels
    img = np.asarray(draw_pair(target.work(ev.records[5].image_id), target.output(0), best, ["exhibit"]))
    gap = img[:360, 360:360 + 24]
    assert (np.abs(gap.astype(int) - 255).sum(axis=2) > 60).mean() > 0.01


def test_screenshot_region_is_found():
    from audit.outputs.matching import find_image_region

    art = render_artwork("circles", 3, size=64, seed=1)
    for seed in range(4):
        shot, layout = phone_frame(Image.fromarray(art), np.random.default_rng(seed), width=360, caption="x")
        box = find_image_region(np.asarray(shot))
        assert box is not None
        assert np.abs(np.array(box) - np.array(layout["image_box"])).max() <= 6, (box, layout["image_box"])


def test_null_generator_gives_uniform_pvalues(tmp_path):
    """Outputs of a generator that never saw the works (screenshots of other works by the same artists): over
    repeated random suspect / control draws the set-level test's p-values are uniform and its rejection rate at α
    stays within its binomial interval, for the primary statistic and the alignment statistics."""
    from scipy.stats import kstest

    from audit.stats.core import clopper_pearson
    from audit.stats.tests import mann_whitney_batch

    works = _works(tmp_path / "works", 48)
    shots = [(f"n{k}.jpg", screenshot(render_artwork(ARTISTS[k % 4], 2000 + k, size=32, seed=3), seed=k)[0])
             for k in range(12)]
    manifest = _outputs_manifest(tmp_path / "outs", shots)
    target = OutputsTarget(str(manifest), work_side=256, feature_side=256, n_features=600)
    ev = _evidence(works, ["control"] * len(works))
    scores = _score_all(target, ev, ["out_sift", "out_ssim", "out_phash"])
    rng = np.random.default_rng(0)
    draws = 400
    idx = np.stack([rng.permutation(len(works)) for _ in range(draws)])
    for name, s in scores.items():
        p = mann_whitney_batch(s[idx[:, :12]], s[idx[:, 12:]], n_resamples=999, seed=1)
        rej = int((p <= 0.05).sum())
        lo, hi = clopper_pearson(rej, draws, 0.99)
        assert lo <= 0.05, (name, rej)
        assert kstest(p, "uniform").pvalue > 0.001, (name, np.quantile(p, [0.1, 0.5, 0.9]))


def _bad_files(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    good = screenshot(render_artwork("grid", 1, size=32, seed=3), seed=99)[0]
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.png").write_text("this is a text file, not a screenshot")
    # a decompression bomb: a valid PNG header declaring 40000 x 40000 pixels with almost no data
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    (folder / "dup.jpg").write_bytes(good)
    (folder / "dup2.jpg").write_bytes(good)
    return ["truncated.jpg,https://x.example/1,,,,", "notes.png,,,,,", "bomb.png,,,,,", "missing.jpg,,,,,",
            "dup.jpg,,,,,", "dup2.jpg,,,,,"]


def test_corrupt_or_hostile_output_is_refused_with_a_reason(tmp_path):
    from audit.outputs.collection import OutputsConfigError, read_outputs

    extra = _bad_files(tmp_path / "outs")
    manifest = _outputs_manifest(tmp_path / "outs", [], extra)
    coll = read_outputs(manifest)
    reasons = {Path(r.path).name: r.reason for r in coll.refused}
    assert [Path(r.path).name for r in coll.records] == ["dup.jpg"]
    assert reasons["truncated.jpg"].startswith("corrupt image")
    assert reasons["notes.png"].startswith("not an image file")
    assert "decompression bomb" in reasons["bomb.png"] and "40000x40000" in reasons["bomb.png"]
    assert reasons["missing.jpg"] == "file not found"
    assert reasons["dup2.jpg"].startswith("duplicate")
    assert all(r.sha256 for r in coll.refused if Path(r.path).name != "missing.jpg")
    only_bad = _outputs_manifest(tmp_path / "bad", [], ["../outs/notes.png,,,,,"])
    with pytest.raises(OutputsConfigError, match="no usable output.*not an image file"):
        OutputsTarget(str(only_bad))
    with pytest.raises(OutputsConfigError, match="unknown column"):
        (tmp_path / "cols.csv").write_text("path,url\nx.png,y\n")
        read_outputs(tmp_path / "cols.csv")


def test_model_attacks_refuse_outputs_and_statistics_refuse_models(tmp_path):
    from audit.attacks import LossAttack
    from audit.attacks.base import AttackSetupError

    shots = [("a.jpg", screenshot(render_artwork("grid", 1, size=32, seed=3), seed=1)[0])]
    target = OutputsTarget(str(_outputs_manifest(tmp_path / "o", shots)))
    with pytest.raises(AttackSetupError, match="needs the model.*only collected outputs"):
        LossAttack().check_target(target)

    class _Model:
        access, family, process = "gray", "pixel", None

    with pytest.raises(AttackSetupError, match="use target=outputs"):
        STATISTICS["out_sift"]().check_target(_Model())


def test_every_statistic_has_a_config_that_instantiates_it():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from audit.cli import CONFIG_DIR

    for name, cls in STATISTICS.items():
        spec = OmegaConf.load(Path(CONFIG_DIR) / "attack" / f"{name}.yaml")[name]
        obj = instantiate(spec, _convert_="all")
        assert type(obj) is cls and obj.name == name and obj.access == "outputs"
        assert obj.evaluations_per_image() == 0
    assert STATISTICS["out_style"].evidence_kind == "circumstantial"


@pytest.fixture(scope="module")
def outputs_run(tmp_path_factory):
    """A full audit through target=outputs: 8 suspects, 6 of them reproduced in the collected screenshots (two as
    partial copies), 24 controls; the outputs manifest also lists corrupt and hostile files."""
    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR
    from audit.data import write_manifest
    from audit.pipeline import run_audit

    tmp = tmp_path_factory.mktemp("outputs_run")
    works = _works(tmp / "works", 32)
    rng = np.random.default_rng(1)
    shots = []
    for k in range(6):
        src = np.asarray(Image.open(works[k]).convert("RGB"))
        if k >= 4:
            src, _ = paste_partial(src, render_artwork("rings", k, size=64, seed=5), rng, frac=0.6)
        shots.append((f"s{k}.jpg", screenshot(src, seed=k)[0]))
    shots += [(f"n{k}.jpg", screenshot(render_artwork(ARTISTS[k % 4], 700 + k, size=32, seed=3), seed=50 + k)[0])
              for k in range(6)]
    extra = _bad_files(tmp / "outs")
    manifest = _outputs_manifest(tmp / "outs", shots, extra)
    rows = [{"path": str(p), "role": "suspect" if i < 8 else "control", "artist": ARTISTS[i % 4],
             "caption": "a painting"} for i, p in enumerate(works)]
    works_csv = write_manifest(rows, tmp / "works.csv")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="audit", overrides=[
            "experiment=own_model", "target=outputs", f"target.outputs={manifest}", f"data.manifest={works_csv}",
            "runtime.progress=false", "score_store=null", "report.formats=[html]", *FAST, *FAST_STATS])
    report = run_audit(cfg, tmp / "run")
    return {"out": tmp / "run", "report": Path(report), "manifest": manifest, "works": works}


def test_outputs_audit_detects_reproduced_suspects(outputs_run):
    out = outputs_run["out"]
    analysis = json.loads((out / "analysis.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert "fitted to collected outputs" in plan["decisions"]
    assert analysis["primary_attack"] == "out_sift"
    assert analysis["verdict"]["decision"] == "reject_h0", analysis["verdict"]
    run = json.loads((out / "run.json").read_text())
    assert run["unet_evaluations"] == 0 and run["target"]["family"] == "outputs"
    assert run["outputs"]["outputs"] == 13 and run["outputs"]["refused"] == 5


def test_capture_provenance_travels_into_report_and_seal(outputs_run):
    from audit.verify import verify

    out = outputs_run["out"]
    rec = json.loads((out / "outputs" / "outputs.json").read_text())
    first = rec["accepted"][0]
    assert first["source"] == "https://app.example/share/0" and first["captured_at"] == "2025-03-01T10:00:00Z"
    assert first["capture_method"] == "screenshot" and first["prompt"].startswith("a painting")
    assert (out / first["stored_as"]).is_file()
    html = outputs_run["report"].read_text()
    assert "Collected outputs (no model)" in html
    for a in rec["accepted"]:
        assert a["source"] in html and a["captured_at"] in html and a["sha256"] in html
    for r in rec["refused"]:
        assert r["reason"].split(":")[0] in html
    assert "resemblance alone" in html.lower() or "does not by itself say" in html
    assert "arXiv 2606.23872" in html and "circumstantial" in html.lower()
    exhibits = json.loads((out / "run.json").read_text())["outputs"]["exhibits"]
    assert exhibits and exhibits[0]["role"] == "suspect" and (out / exhibits[0]["file"]).is_file()
    assert exhibits[0]["source"].startswith("https://app.example/share/")
    assert 'alt="exhibit 1"' in html and "Exhibit 1 (suspect)" in html  # the drawn pair is embedded in the report
    sealed = json.loads((out / "checksums.json").read_text())
    names = json.dumps(sealed)
    assert "outputs/outputs.json" in names and "outputs/matches.json" in names and exhibits[0]["file"] in names
    assert verify(out, recompute=False).ok
    # a changed capture record breaks the seal
    p = out / "outputs" / "outputs.json"
    saved = p.read_bytes()
    try:
        p.write_text(p.read_text().replace("https://app.example/share/0", "https://elsewhere.example/0"))
        res = verify(out, recompute=False)
        assert not res.ok and any("outputs.json" in str(x) for x in res.problems)
    finally:
        p.write_bytes(saved)


def test_embedding_statistic_loads_a_local_encoder_offline(tmp_path):
    """out_embed: a local image encoder folder (safetensors), never a download; refuses anything else in one line."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from audit.attacks.base import AttackSetupError

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(tmp_path / "enc", safe_serialization=True)
    works = _works(tmp_path / "works", 6, size=64)
    outs = tmp_path / "outs"
    outs.mkdir()
    (outs / "copy.png").write_bytes(works[2].read_bytes())
    Image.fromarray(render_artwork("rings", 3, size=64, seed=9)).save(outs / "other.png")
    target = OutputsTarget(str(outs), work_side=64)
    ev = _evidence(works, ["suspect"] + ["control"] * 5)
    from audit.attacks.base import Batch, NoiseSource

    stat = STATISTICS["out_embed"](model=str(tmp_path / "enc"))
    stat.check_target(target)
    target.use_evidence(ev)
    ids = [r.image_id for r in ev.records]
    s = stat.score(target, Batch(x0=None, cond=None, captions=[""] * 6, image_ids=ids,
                                 noise_source=NoiseSource(0, ids))).numpy()
    assert s[2] == pytest.approx(1.0, abs=1e-4) and s.argmax() == 2
    assert target.matches["out_embed"][ids[2]]["output_sha256"] == target.collection.records[0].sha256
    with pytest.raises(AttackSetupError, match="local folder"):
        STATISTICS["out_embed"](model="facebook/dinov2-small").check_target(target)
