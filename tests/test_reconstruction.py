"""Reconstruction tests: a memorising model reproduces its training works (and an untrained one does not),
the distances are the published ones, regeneration from recorded seeds is exact, inpainting error is
measured in the hidden region only, and the statistics flow through the ordinary ScoreTable analysis."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.groundtruth.synthetic import render_artwork
from audit.reconstruction import (
    GenerationRecord,
    InpaintConfig,
    ReconstructionConfig,
    latent_mask,
    make_masks,
    masked_rms,
    max_clique,
    reconstruction_context,
    regenerate,
    repaint,
    run_reconstruction,
    ssim,
    tiled_l2,
    tiled_l2_pairwise,
    to_unit,
)
from audit.reconstruction.runner import auc
from audit.targets import load_target
from tests.conftest import TensorSplit, evidence_for, evidence_from_tensors

ARTISTS = ["stripes", "circles", "grid", "waves"]
DISTANCES = ["recon_gen_tiled_l2", "recon_inpaint_half", "recon_inpaint_centre", "recon_inpaint_blocks",
             "recon_img2img_tiled_l2"]
FAST = {
    "enabled": True,
    "batch_size": 64,
    "generate": {"n": 48, "steps": 10, "clique_threshold": 0.2, "min_clique": 3, "ssim_top_k": 8},
    "inpaint": {"masks": ["half", "centre", "blocks"], "steps": 10, "resample": 2},
    "img2img": {"strength": 0.5, "steps": 5, "n": 2},
    "figures": {"roles": ["suspect"], "max_items": 2, "controls": 1, "top_k": 2, "scale": 48},
}


def _render(res: int, offset: int, n: int) -> torch.Tensor:
    arr = np.stack([render_artwork(ARTISTS[i % 4], offset + i, size=res, seed=5) for i in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _png(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def _load(model_dir):
    return load_target(str(model_dir), local_files_only=True, device="cpu")


def _as_roles(ev, mapping):
    from dataclasses import replace

    from audit.types import EvidenceSet

    return EvidenceSet([replace(r, role=mapping[r.role]) for r in ev.records], ev.pixels)


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory) -> TensorSplit:
    """A (16, 32) DDPM trained on 4 works at 8×8 (8 copies each per batch, 600 steps) until its samples
    are copies of them — the small-fine-tuning-set case, at a size that trains in seconds."""
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm

    members, held_out = _render(8, 0, 4), _render(8, 10_000, 16)
    unet, sched = build_ddpm(8, channels=(16, 32), seed=0)
    train_ddpm(unet, sched, members.repeat(8, 1, 1, 1), steps=600, batch_size=32, lr=3e-3, seed=0, progress=False)
    return TensorSplit(save_ddpm(unet, sched, tmp_path_factory.mktemp("ddpm_collapsed")), members, held_out)


@pytest.fixture(scope="module")
def collapsed_run(collapsed, tmp_path_factory):
    """Training works as suspects, held-out works as controls."""
    ev = _as_roles(evidence_from_tensors(collapsed.members, collapsed.held_out), {"member": "suspect", "nonmember": "control"})
    out_dir = tmp_path_factory.mktemp("recon") / "reconstruction"
    out = run_reconstruction(_load(collapsed.model_dir), ev, FAST, out_dir, seed=0, progress=False)
    return out, ev


def _dist(out, name, role):
    return -out.scores.scores(name, role)


# ---------------------------------------------------------------------------------------------- detection
def test_trained_model_reproduces_its_training_works(collapsed_run):
    out, _ = collapsed_run
    for name in DISTANCES:
        s, c = _dist(out, name, "suspect"), _dist(out, name, "control")
        assert np.median(s) < 0.6 * np.median(c), (name, np.median(s), np.median(c))
        assert auc(-s, -c) >= 0.9, (name, auc(-s, -c))
    assert auc(out.scores.scores("recon_gen_ssim", "suspect"), out.scores.scores("recon_gen_ssim", "control")) >= 0.9
    # Carlini's clique: several near-identical generations sit on (almost) every training work, none on a held-out work
    cl_s, cl_c = out.scores.scores("recon_gen_clique", "suspect"), out.scores.scores("recon_gen_clique", "control")
    assert (cl_s >= 3).sum() >= 3 and cl_c.max() == 0, (cl_s, cl_c)
    flagged = [a["generate"]["clique_flagged"] for a in out.record["artworks"]]
    assert sum(flagged) == (cl_s >= 3).sum()


def test_untrained_model_reproduces_nothing(untrained_ddpm, tmp_path):
    ev = evidence_for(untrained_ddpm.member_paths, untrained_ddpm.held_out_paths)
    cfg = {**FAST, "figures": {"enabled": False}}
    out = run_reconstruction(_load(untrained_ddpm.model_dir), ev, cfg, None, seed=0, progress=False)
    for name in DISTANCES:
        m, nm = _dist(out, name, "member"), _dist(out, name, "nonmember")
        assert 0.2 < auc(-m, -nm) < 0.8, (name, auc(-m, -nm))
        assert np.median(m) > 0.85 * np.median(nm), name
        # hardly any "member" passes the threshold calibrated on the non-members
        thr = np.quantile(nm, 0.05)
        assert (m < thr).mean() <= 0.2, name
    assert out.scores.scores("recon_gen_clique", "member").max() == 0  # nothing near-identical is generated
    assert np.median(_dist(out, "recon_gen_tiled_l2", "member")) > 0.3


def test_statistics_go_through_the_ordinary_analysis(collapsed_run):
    from audit.stats import AnalysisPlan, analyze

    out, ev = collapsed_run
    df = out.scores.df
    assert set(df["attack"]) == {"recon_gen_tiled_l2", "recon_gen_ssim", "recon_gen_clique", "recon_inpaint_half",
                                 "recon_inpaint_centre", "recon_inpaint_blocks", "recon_img2img_tiled_l2"}
    assert len(df) == 7 * len(ev) and df["target_fingerprint"].nunique() == 1 and np.isfinite(df["score"]).all()
    assert (df.groupby("attack")["attack_params_hash"].nunique() == 1).all()
    from audit.stats.blind import blind_features

    # as the pipeline does: the model-free features the (required) blind-baseline gate runs on
    result = analyze(out.scores, ev.image_table(), AnalysisPlan(primary_attack="recon_gen_tiled_l2", n_bootstrap=50,
                                                                 n_permutations=200), features=blind_features(ev))
    assert result.verdict.decision == "reject_h0"
    # the per-artwork p-values recorded for the figures are the analysis' conformal p-values
    res = result.attack("recon_gen_tiled_l2")
    recorded = {a["image_id"]: a["p_conformal"]["recon_gen_tiled_l2"] for a in out.record["artworks"] if a["role"] == "suspect"}
    assert {w.image_id: w.p_conformal for w in res.artworks} == pytest.approx(recorded)
    assert sorted(recorded.values())[:3] == pytest.approx([1 / 17] * 3)  # these beat all 16 controls
    cal = out.record["summary"]["recon_gen_tiled_l2"]["calibration"]
    assert cal["fraction_reconstructed"]["suspect"] >= 0.75 and cal["fraction_reconstructed"]["control"] <= 0.0625


# ---------------------------------------------------------------------------------------------- distances
def test_tiled_l2_matches_a_hand_computed_value():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.zeros(1, 3, 4, 4)
    b[0, 0, :2, :2] = 0.5  # top-left 2×2 tile: 4 of its 12 values differ by 0.5 → RMS √(4·0.25/12) = √(1/12)
    b[0, :, 2:, 2:] = 0.1  # bottom-right tile: all 12 values differ by 0.1 → RMS 0.1
    expected = math.sqrt(1 / 12)
    assert tiled_l2(a, b, tiles=2).item() == pytest.approx(expected, rel=1e-6)
    # one tile = the plain normalised ℓ2 over the whole image: √((4·0.25 + 12·0.01) / 48)
    assert tiled_l2(a, b, tiles=1).item() == pytest.approx(math.sqrt(1.12 / 48), rel=1e-6)
    pair = tiled_l2_pairwise(torch.cat([a, b]), torch.cat([a, b]), tiles=2)
    assert pair[0, 1].item() == pytest.approx(expected, rel=1e-6) and pair[0, 0].item() == 0.0
    # near-copies are not lost to cancellation
    x = torch.full((1, 3, 64, 64), 0.75)
    y = x + 1e-5
    exact = (y.double() - x.double()).abs().max().item()  # float32 spacing near 0.75: not exactly 1e-5
    assert tiled_l2_pairwise(x, y, tiles=4).item() == pytest.approx(exact, rel=1e-6)


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 24, 20, generator=g)
    b = (a + 0.2 * torch.randn(3, 3, 24, 20, generator=g)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(3):
        ref = skm.structural_similarity(a[i].numpy().astype(np.float64), b[i].numpy().astype(np.float64), channel_axis=0,
                                        data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 3)


def test_max_clique_is_exact_on_a_small_graph():
    adj = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (4, 5), (3, 5), (2, 4), (2, 5)]:
        adj[i, j] = adj[j, i] = True
    assert max_clique(adj) == [2, 3, 4, 5]
    assert max_clique(torch.zeros(3, 3, dtype=torch.bool)) in ([0], [1], [2]) and max_clique(torch.zeros(0, 0)) == []


# ---------------------------------------------------------------------------------------------- seeds
def test_regeneration_from_recorded_seeds_is_exact(collapsed, collapsed_run):
    out, _ = collapsed_run
    record = json.loads((out.out_dir / "reconstruction.json").read_text())
    group = record["generations"][0]
    assert group["prompt"] is None and len(group["record"]["seeds"]) == FAST["generate"]["n"]
    fresh = _load(collapsed.model_dir)  # a new process would load the model like this
    images = regenerate(fresh, group["record"])
    again = regenerate(fresh, GenerationRecord.from_dict(group["record"]))
    assert torch.equal(images, again)
    # the closest generations saved next to the figures are these images, byte for byte
    files = [g for item in record["figures"] for g in item["generations"]]
    assert files
    for f in files:
        saved = _png(out.out_dir / f["file"])
        assert torch.equal(saved, images[f["generation"]])
        assert group["record"]["seeds"][f["generation"]] == f["seed"]
    # a different model is refused
    other = dict(group["record"], target_fingerprint="0" * 64)
    with pytest.raises(ValueError, match="not by this target"):
        regenerate(fresh, other)


def test_results_do_not_depend_on_batch_size(collapsed, collapsed_run):
    out, ev = collapsed_run
    cfg = {**FAST, "batch_size": 7, "figures": {"enabled": False}}
    small = run_reconstruction(_load(collapsed.model_dir), ev, cfg, None, seed=0, progress=False)
    a = out.scores.df.sort_values(["attack", "image_id"])["score"].to_numpy()
    b = small.scores.df.sort_values(["attack", "image_id"])["score"].to_numpy()
    np.testing.assert_allclose(a, b, atol=2e-3)


# ---------------------------------------------------------------------------------------------- inpainting
def test_inpainting_error_is_measured_in_the_hidden_region_only():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 3, 8, 8, generator=g)
    pred = torch.rand(2, 3, 8, 8, generator=g)
    mask = make_masks("half", ["a", "b"], 8)
    assert mask[..., :4].sum() == 0 and mask[..., 4:].min() == 1
    base = masked_rms(pred, ref, mask)
    changed = pred.clone()
    changed[..., :4] = 1 - changed[..., :4]  # everything the model was shown
    assert torch.equal(masked_rms(changed, ref, mask), base)
    changed[0, 0, 0, 5] += 0.5  # one hidden pixel
    assert masked_rms(changed, ref, mask)[0] != base[0] and masked_rms(changed, ref, mask)[1] == base[1]
    # by hand: error only in the hidden half
    expected = ((pred - ref)[..., 4:] ** 2).flatten(1).mean(1).sqrt()
    torch.testing.assert_close(base, expected)
    with pytest.raises(ValueError, match="empty mask"):
        masked_rms(pred, ref, torch.zeros(2, 1, 8, 8))


def test_masks_and_latent_masks():
    cfg = InpaintConfig(n_blocks=3, block_size=0.25)
    centre = make_masks("centre", ["x"], 16, cfg=cfg)
    assert centre.sum() == 64 and centre[0, 0, 4:12, 4:12].min() == 1
    b1 = make_masks("blocks", ["x", "y"], 16, seed=0, cfg=cfg)
    assert torch.equal(b1, make_masks("blocks", ["x", "y"], 16, seed=0, cfg=cfg))  # seeded per image
    assert not torch.equal(b1[0], b1[1]) and not torch.equal(b1, make_masks("blocks", ["x", "y"], 16, seed=1, cfg=cfg))
    # a latent cell is hidden when any of its pixels is: never leaks hidden pixels to the model
    lat = latent_mask(b1, (4, 4))
    up = torch.nn.functional.interpolate(lat, size=(16, 16), mode="nearest")
    assert bool((up >= b1).all())


def test_repaint_keeps_the_shown_pixels_and_is_seeded(collapsed):
    from audit.attacks.base import NoiseSource

    target = _load(collapsed.model_dir)
    x0 = target.encode(collapsed.members[:2])
    mask = make_masks("centre", ["a", "b"], 8)
    cfg = InpaintConfig(steps=4, resample=2)
    ns = NoiseSource(0, ["a", "b"])
    evals = target.unet_evals
    out = repaint(target, x0, mask, ns, "t", cfg)
    assert target.unet_evals - evals == 2 * (4 * 2 - 1)
    shown = mask.expand_as(x0) == 0
    assert torch.equal(out[shown], x0[shown])  # the known part is the artwork itself
    assert torch.equal(out, repaint(target, x0, mask, NoiseSource(0, ["a", "b"]), "t", cfg))
    assert not torch.equal(out, repaint(target, x0, mask, NoiseSource(1, ["a", "b"]), "t", cfg))


# ---------------------------------------------------------------------------------------------- latent targets
def test_latent_text_to_image_target(tiny_sd, tmp_path):
    from audit.data import load_evidence

    model_dir, _ = tiny_sd
    target = _load(model_dir)
    paths = []
    for i in range(3):
        p = tmp_path / f"w{i}.png"
        Image.fromarray(render_artwork(ARTISTS[i], i, size=32, seed=1)).save(p)
        paths.append(p)
    entries = [{"path": str(paths[0]), "role": "suspect", "caption": "a harbour <b>at dusk</b>"},
               {"path": str(paths[1]), "role": "suspect", "caption": "a harbour <b>at dusk</b>"},
               {"path": str(paths[2]), "role": "control", "caption": "a river"}]
    ev = load_evidence(entries, 32, progress=False)
    cfg = {"enabled": True, "batch_size": 4,
           "generate": {"n": 3, "steps": 2, "guidance_scale": 3.0, "clique_threshold": 0.5, "min_clique": 2},
           "inpaint": {"masks": ["half"], "steps": 2, "resample": 1}, "img2img": {"strength": 0.3, "steps": 2, "n": 1},
           "figures": {"top_k": 2, "scale": 32}}
    out = run_reconstruction(target, ev, cfg, tmp_path / "reconstruction", seed=3, progress=False)
    assert np.isfinite(out.scores.df["score"]).all()
    groups = out.record["generations"]
    assert [g["prompt"] for g in groups] == ["a harbour <b>at dusk</b>", "a river"]  # one pool per distinct prompt
    assert all("prompt_clique" in g for g in groups)
    images = regenerate(_load(model_dir), groups[0]["record"])
    assert images.shape == (3, 3, 32, 32)
    f = out.record["figures"][0]["generations"][0]
    saved = _png(out.out_dir / f["file"])
    assert torch.equal(saved, images[f["generation"]])
    # the HTML fragment escapes captions
    html = (out.out_dir / "reconstruction.html").read_text()
    assert "&lt;b&gt;at dusk&lt;/b&gt;" in html and "<b>at dusk" not in html


# ---------------------------------------------------------------------------------------------- embeddings
def _tiny_encoders(root):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    kw = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8)
    CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=16, **kw)).save_pretrained(root / "clip")
    Dinov2Model(Dinov2Config(**kw)).save_pretrained(root / "dinov2")
    return root / "clip", root / "dinov2"


def test_embedding_similarity_from_a_local_encoder(untrained_ddpm, tmp_path):
    from audit.reconstruction.embedding import ImageEmbedder

    clip, dino = _tiny_encoders(tmp_path)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g)
    for path, dim in ((clip, 16), (dino, 32)):
        emb = ImageEmbedder(path).embed(x)
        assert emb.shape == (3, dim)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
        torch.testing.assert_close(ImageEmbedder(path).embed(x[:1]), emb[:1])
    cfg_json = json.loads((dino / "config.json").read_text())
    (dino / "config.json").write_text(json.dumps({**cfg_json, "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(ValueError, match="remote"):
        ImageEmbedder(dino)
    ev = evidence_for(untrained_ddpm.member_paths[:2], untrained_ddpm.held_out_paths[:2])
    cfg = {"enabled": True, "generate": {"n": 4, "steps": 2, "embedding": str(clip)}, "inpaint": {"enabled": False},
           "img2img": {"enabled": False}}
    out = run_reconstruction(_load(untrained_ddpm.model_dir), ev, cfg, None, seed=0, progress=False)
    cos = out.scores.scores("recon_gen_embed", ["member", "nonmember"])
    assert cos.shape == (4,) and ((cos > -1.0001) & (cos < 1.0001)).all()
    assert out.record["embedding"]["model_type"] == "clip_vision_model"


# ---------------------------------------------------------------------------------------------- config + report
def test_config_group_files(tmp_path):
    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        default = compose(config_name="audit")
        assert default.reconstruction.enabled is False  # the default audit does not get slower
        for name in ("screen", "full"):
            cfg = compose(config_name="audit", overrides=[f"reconstruction={name}"])
            rc = ReconstructionConfig.from_any(cfg.reconstruction)
            assert rc.enabled and rc.batch_size == cfg.runtime.batch_size
    with pytest.raises(ValueError, match="unknown keys"):
        ReconstructionConfig.from_any({"generate": {"n_generations": 5}})
    with pytest.raises(ValueError, match="unknown masks"):
        ReconstructionConfig.from_any({"inpaint": {"masks": ["left"]}})


def test_figures_and_report_context(collapsed_run):
    out, _ = collapsed_run
    d = out.out_dir
    assert (d / "evidence_grid.png").is_file() and (d / "reconstruction.html").is_file()
    ctx = reconstruction_context(d.parent)  # from the run folder, as the report will call it
    assert ctx is not None and [w["label"].split()[0] for w in ctx["works"]] == ["suspect", "suspect", "control"]
    assert all(w["src"].startswith("data:image/png;base64,") for w in ctx["works"])
    assert {s["name"] for s in ctx["statistics"]} == set(out.scores.attacks)
    assert reconstruction_context(d / "nonexistent") is None
    html = (d / "reconstruction.html").read_text()
    assert 'src="items/' in html and "Reconstruction tests" in html
    # the partial renders in an environment like the report's (autoescape, strict undefined)
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from audit.reconstruction.report import TEMPLATE_DIR, TEMPLATE_NAME

    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True, undefined=StrictUndefined)
    page = env.from_string('{% if reconstruction %}{% include "' + TEMPLATE_NAME + '" %}{% endif %}').render(reconstruction=ctx)
    assert page.count("<figure>") == 3 and "recon_gen_tiled_l2" in page
    assert env.from_string('{% if reconstruction %}{% include "' + TEMPLATE_NAME + '" %}{% endif %}').render(reconstruction=None) == ""
    assert to_unit(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]


# ---------------------------------------------------------------------------------------------- pipeline
def test_audit_run_with_reconstruction(collapsed, tmp_path):
    """`audit-run ... reconstruction=screen`: recon_* rows join scores.parquet (after the attacks, so the
    primary attack is unchanged), the run folder holds the figures and seeds, the report shows them."""
    from hydra import compose, initialize_config_dir

    from audit import io
    from audit.cli import CONFIG_DIR
    from audit.data import write_manifest
    from audit.pipeline import run_audit

    rows = []
    for role, images in (("suspect", collapsed.members), ("control", collapsed.held_out)):
        for i, img in enumerate(images):
            p = tmp_path / f"{role}_{i}.png"
            Image.fromarray(img.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(p)
            rows.append({"path": str(p), "role": role, "caption": ""})
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="audit", overrides=[
            "experiment=own_model", f"target.source={collapsed.model_dir}", "target.local_files_only=true",
            f"data.manifest={manifest}", "attack=[loss]", "runtime.progress=false", "reconstruction=screen",
            "reconstruction.generate.n=24", "reconstruction.figures.max_items=2", "report.formats=[html]",
            "stats.n_permutations=200", "stats.n_bootstrap=50"])
    out = tmp_path / "run"
    report = run_audit(cfg, out)
    run = io.read_run(out)
    attacks = list(dict.fromkeys(run.scores.df["attack"]))
    assert attacks[0] == "loss" and {"recon_gen_tiled_l2", "recon_inpaint_half", "recon_img2img_tiled_l2"} <= set(attacks)
    meta = run.metadata["reconstruction"]
    assert meta["dir"] == "reconstruction" and meta["unet_evaluations"] > 0 and meta["n_generations"] == 24
    assert (out / "reconstruction" / "reconstruction.json").is_file() and (out / "reconstruction" / "evidence_grid.png").is_file()
    html = Path(report).read_text()
    assert "Reconstruction tests" in html and "data:image/png;base64," in html
