"""Reconstruction tests end to end: statistics per artwork → ScoreTable rows, seeds, figures, HTML fragment.

:func:`run_reconstruction` is the integration point. For every artwork of the configured roles it
computes the configured reconstruction statistics, each oriented like every membership score (**higher
= more member-like**: distances are negated), and returns them as rows of the ordinary long-format
:class:`audit.types.ScoreTable` — so the analysis (conformal per-artwork p-values against the controls,
set-level tests, effect sizes) treats them exactly like attack scores. Alongside it writes, to
``out_dir``:

- ``reconstruction.json`` — the configuration, every generation record (prompt, per-image seeds,
  sampler settings, the target's fingerprint: :func:`audit.reconstruction.regenerate` rebuilds the exact
  images), per-artwork results (nearest generations with their seeds and distances, clique sizes,
  inpainting / img2img errors, conformal p-values against the controls) and a summary per statistic;
- ``evidence_grid.png`` and ``items/<id>.png`` — each selected artwork beside its closest generations,
  its inpainting and img2img reconstructions, with distances and p-values;
- ``generations/<id>_gen<k>.png`` — the closest generations at native resolution, losslessly, so that a
  regenerated image can be compared byte for byte;
- ``reconstruction.html`` — an HTML fragment rendered from ``audit/report/templates/_reconstruction.html.j2``.

Statistics (ScoreTable attack names):

=========================== ==========================================================================
``recon_gen_tiled_l2``      −min over the generations of Carlini's tiled ℓ2 to the artwork
``recon_gen_ssim``          max SSIM over the ``ssim_top_k`` nearest generations
``recon_gen_embed``         max cosine similarity of image embeddings (only with ``generate.embedding``)
``recon_gen_clique``        size of the largest clique of mutually near-identical generations that are all
                            near the artwork (Carlini's clique criterion, verified against the artwork)
``recon_inpaint_<mask>``    −RMS error of the RePaint reconstruction inside the hidden region
``recon_img2img_tiled_l2``  −mean tiled ℓ2 of ``n`` img2img reconstructions to the artwork
=========================== ==========================================================================
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from audit.attacks.base import NoiseSource
from audit.diffusion.loops import img2img
from audit.reconstruction.config import ReconstructionConfig
from audit.reconstruction.figures import EvidenceRow, Panel, grid_png, masked_preview, row_png, save_png_image
from audit.reconstruction.inpaint import latent_mask, make_masks, repaint
from audit.reconstruction.metrics import max_clique, masked_rms, ssim, tiled_l2, tiled_l2_pairwise, to_unit
from audit.reconstruction.sampling import GenerationRecord, diffusion_shape, generate, to_pixels, to_uint8
from audit.targets.base import Target
from audit.stats.core import auc as _auc
from audit.stats.core import conformal_pvalues
from audit.types import EvidenceSet, ScoreTable, params_hash

__all__ = ["ReconstructionOutput", "run_reconstruction", "STATISTICS", "JSON_NAME", "HTML_NAME", "GRID_NAME"]

log = logging.getLogger(__name__)

JSON_NAME = "reconstruction.json"
HTML_NAME = "reconstruction.html"
GRID_NAME = "evidence_grid.png"

#: what each statistic means, as printed in the JSON and the report
STATISTICS: dict[str, str] = {
    "recon_gen_tiled_l2": "generate-and-match: −(smallest tiled ℓ2 distance from the artwork to any generation)",
    "recon_gen_ssim": "generate-and-match: highest SSIM between the artwork and a generation",
    "recon_gen_embed": "generate-and-match: highest cosine similarity of image embeddings",
    "recon_gen_clique": "generate-and-match: largest clique of near-identical generations, all near the artwork",
    "recon_inpaint_half": "inpainting (right half hidden): −RMS error inside the hidden half",
    "recon_inpaint_centre": "inpainting (centre hidden): −RMS error inside the hidden square",
    "recon_inpaint_blocks": "inpainting (random blocks hidden): −RMS error inside the hidden blocks",
    "recon_img2img_tiled_l2": "img2img: −mean tiled ℓ2 distance of the reconstructions to the artwork",
    "recon_extract_tiled_l2": "model-guided extraction: −(smallest tiled ℓ2 from the work to a guided sample of its caption)",
    "recon_extract_cluster": "model-guided extraction: −(smallest tiled ℓ2 from the work to an extracted cluster medoid)",
}
# how a statistic is shown as a similarity/distance value in figures (the score with its sign undone)
_DISPLAY = {"recon_gen_tiled_l2": ("tiled ℓ2", -1), "recon_gen_ssim": ("SSIM", 1), "recon_gen_embed": ("cos", 1),
            "recon_gen_clique": ("clique", 1), "recon_img2img_tiled_l2": ("img2img ℓ2", -1)}


@dataclass
class ReconstructionOutput:
    """What :func:`run_reconstruction` returns: the ScoreTable rows and the artefact record."""

    scores: ScoreTable
    record: dict[str, Any]  # the content of reconstruction.json
    out_dir: Path | None = None
    files: list[str] = field(default_factory=list)  # written files, relative to out_dir
    unet_evals: int = 0

    def metadata(self) -> dict[str, Any]:
        """Compact entry for run.json (the full record is in reconstruction.json)."""
        return {
            "enabled": True,
            "dir": self.out_dir.name if self.out_dir else None,  # relative to the run folder
            "json": JSON_NAME if self.out_dir else None,
            "html": HTML_NAME if (self.out_dir and HTML_NAME in self.files) else None,
            "grid": GRID_NAME if (self.out_dir and GRID_NAME in self.files) else None,
            "statistics": list(self.record.get("statistics", {})),
            "summary": self.record.get("summary", {}),
            "unet_evaluations": self.unet_evals,
            "n_generations": sum(len(g["record"]["seeds"]) for g in self.record.get("generations", [])),
            "config": self.record.get("config", {}),
        }


# ---------------------------------------------------------------------------------------------- helpers
# the per-work p-value and the AUC are the analysis's own (one definition: audit.stats.core)
conformal_p = conformal_pvalues
auc = _auc


def _prompt_for(template: str, rec: Any) -> str:
    try:
        return template.format(caption=rec.caption, artist=rec.artist)
    except (KeyError, IndexError) as e:
        raise ValueError(f"reconstruction.generate.prompt {template!r}: only {{caption}} and {{artist}} can be used ({e})") from e


def _short(image_id: str) -> str:
    return image_id[:12]


# ---------------------------------------------------------------------------------------------- main
def run_reconstruction(
    target: Target,
    evidence: EvidenceSet,
    cfg: Any = None,
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> ReconstructionOutput:
    """Run the configured reconstruction tests on ``evidence`` (see the module docstring).

    ``cfg`` is a :class:`ReconstructionConfig`, a dict or the ``reconstruction`` node of the Hydra config.
    ``out_dir`` (e.g. ``<run folder>/reconstruction``) receives the JSON record, figures and HTML
    fragment; without it nothing is written. Every random draw derives from ``seed``.
    """
    cfg = ReconstructionConfig.from_any(cfg)
    ev = evidence.select(cfg.roles)
    if len(ev) == 0:
        raise ValueError(f"reconstruction: no artworks with roles {cfg.roles}")
    out = Path(out_dir) if out_dir is not None else None
    evals0 = target.unet_evals
    n = len(ev)
    recs = ev.records
    res = int(target.info.resolution)
    originals = ev.pixels  # uint8 [n, 3, res, res]
    stats: "OrderedDict[str, np.ndarray]" = OrderedDict()
    hashes: dict[str, str] = {}
    per_art: list[dict[str, Any]] = [
        {"image_id": r.image_id, "role": r.role, "path": r.path, "caption": r.caption, "artist": r.artist}
        for r in recs
    ]
    fig_idx = _figure_candidates(cfg, recs)
    material: dict[int, dict[str, Any]] = {i: {} for i in fig_idx}
    groups_out: list[dict[str, Any]] = []
    embedder_info = None

    with torch.inference_mode():
        if cfg.generate.enabled:
            embedder_info = _generate_and_match(target, ev, cfg, seed, progress, stats, hashes, per_art, material,
                                                groups_out)
            _prune(material, stats, recs, cfg)
        if cfg.inpaint.enabled and cfg.inpaint.masks:
            _inpaint_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material)
            _prune(material, stats, recs, cfg)
        if cfg.img2img.enabled:
            _img2img_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material)
            _prune(material, stats, recs, cfg)
        extraction = None
        if cfg.extract.enabled:  # model-guided extraction (fine-tune vs base): audit/reconstruction/extract.py
            from audit.reconstruction.extract import reconstruction_step

            extraction = reconstruction_step(target, ev, cfg, seed, progress, stats, hashes, per_art)
    if not stats:
        raise ValueError("reconstruction: every test is disabled (generate, inpaint, img2img)")

    # ScoreTable rows, in evidence order, one block per statistic
    frames = []
    for name, s in stats.items():
        frames.append(pd.DataFrame({
            "image_id": [r.image_id for r in recs], "role": [r.role for r in recs], "attack": name,
            "attack_params_hash": hashes[name], "target_fingerprint": target.fingerprint, "seed": int(seed),
            "score": s.astype(float),
        }))
    table = ScoreTable(pd.concat(frames, ignore_index=True))

    # calibration against the controls (the analysis recomputes this; here for the JSON and the figures)
    roles = np.array([r.role for r in recs])
    summary = _summaries(stats, roles, cfg.calibration_fpr)
    controls = roles == "control"
    for name, s in stats.items():
        pv = conformal_p(s, s[controls]) if controls.any() else np.full(n, np.nan)
        for i in range(n):
            per_art[i].setdefault("scores", {})[name] = float(s[i])
            if controls.any() and not controls[i]:
                per_art[i].setdefault("p_conformal", {})[name] = float(pv[i])

    record: dict[str, Any] = {
        "version": 1,
        "seed": int(seed),
        "target_fingerprint": target.fingerprint,
        "target_kind": target.info.kind,
        "resolution": res,
        "config": cfg.to_dict(),
        "statistics": {k: STATISTICS.get(k, k) for k in stats},
        "params_hash": hashes,
        "summary": summary,
        "generations": groups_out,
        "embedding": embedder_info,
        "artworks": per_art,
        "regenerate": ("audit.reconstruction.regenerate(target, record) with target = audit.targets.load_target(<the "
                       "audited model>) and record = generations[i]['record'] rebuilds generation group i exactly"),
        "figures": [],
    }
    files: list[str] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.figures.enabled and fig_idx:
            record["figures"], fig_files = _write_figures(cfg, out, recs, per_art, material, originals, stats, roles)
            files += fig_files
        if extraction is not None:
            files += extraction.write(out, ev, stats, roles)
    if extraction is not None:
        record["extraction"] = extraction.record
        # the base model's own evaluations are counted on the base (as calibration's are), not in unet_evals
        record["base_unet_evaluations"] = extraction.base_evals
    if out is not None:
        (out / JSON_NAME).write_text(json.dumps(record, indent=2, default=_json_default, allow_nan=False))
        files.append(JSON_NAME)
        from audit.reconstruction.report import write_fragment

        write_fragment(out, out / HTML_NAME)
        files.append(HTML_NAME)
    return ReconstructionOutput(table, record, out, files, target.unet_evals - evals0)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _figure_candidates(cfg: ReconstructionConfig, recs: list) -> list[int]:
    roles_present = [r.role for r in recs]
    wanted = [r for r in cfg.figures.roles if r in roles_present and r != "control"]
    if not wanted:
        wanted = [r for r in ("suspect", "member", "nonmember") if r in roles_present][:1]
    if int(cfg.figures.controls) > 0:
        wanted.append("control")
    return [i for i, r in enumerate(recs) if r.role in wanted]


def _prune(material: dict[int, dict[str, Any]], stats: dict[str, np.ndarray], recs: list, cfg: ReconstructionConfig) -> None:
    """Keep figure material only for the works that can still be shown: the ``max_items`` most member-like
    works of the figure roles and the ``controls`` most member-like controls, by the first statistic (which
    orders them exactly as its conformal p-values do). Bounds memory when there are thousands of works."""
    if not stats or not material:
        return
    s = stats[_primary_stat(stats)]
    ctrl = sorted((i for i in material if recs[i].role == "control"), key=lambda i: -s[i])
    other = sorted((i for i in material if recs[i].role != "control"), key=lambda i: -s[i])
    keep = set(other[: int(cfg.figures.max_items)]) | set(ctrl[: int(cfg.figures.controls)])
    for i in list(material):
        if i not in keep:
            del material[i]


def _summaries(stats: dict[str, np.ndarray], roles: np.ndarray, fpr: float) -> dict[str, Any]:
    """Per statistic: AUCs, and the fraction of each role 'reconstructed' at the controls' (1−fpr) quantile."""
    out: dict[str, Any] = {}
    for name, s in stats.items():
        by = {r: s[roles == r] for r in ("suspect", "control", "member", "nonmember")}
        d: dict[str, Any] = {
            "n": {r: int(v.size) for r, v in by.items()},
            "auc_suspect_control": auc(by["suspect"], by["control"]),
            "auc_member_nonmember": auc(by["member"], by["nonmember"]),
            "median": {r: float(np.median(v)) for r, v in by.items() if v.size},
        }
        if by["control"].size:
            thr = float(np.quantile(by["control"], 1.0 - fpr, method="higher"))
            d["calibration"] = {
                "fpr_target": fpr,
                "threshold_score": thr,
                "rule": f"reconstructed = score > the {1 - fpr:g} quantile of the controls' scores",
                "fraction_reconstructed": {r: float((v > thr).mean()) for r, v in by.items() if v.size},
                "count_reconstructed": {r: int((v > thr).sum()) for r, v in by.items() if v.size},
            }
        out[name] = d
    return out


# ---------------------------------------------------------------------------------------------- generate
def _generate_and_match(target, ev, cfg, seed, progress, stats, hashes, per_art, material, groups_out):
    g = cfg.generate
    n = len(ev)
    recs = ev.records
    shape = diffusion_shape(target)
    groups: "OrderedDict[str | None, list[int]]" = OrderedDict()
    for i, r in enumerate(recs):
        key = _prompt_for(g.prompt, r) if target.conditional else None
        groups.setdefault(key, []).append(i)
    embedder = None
    if g.embedding:
        from audit.reconstruction.embedding import ImageEmbedder

        embedder = ImageEmbedder(g.embedding, device=target.device, allow_pickle=g.embedding_allow_pickle)
    d_min = np.zeros(n)
    s_max = np.zeros(n)
    e_max = np.zeros(n)
    clique = np.zeros(n)
    top_k = max(1, int(cfg.figures.top_k))
    bar = tqdm(total=len(groups) * g.n, desc="reconstruction: generate", unit="img", disable=not progress)
    for gi, (prompt, idxs) in enumerate(groups.items()):
        rec = GenerationRecord.new(target, prompt, g.n, seed=seed, steps=g.steps, guidance_scale=g.guidance_scale,
                                   eta=g.eta, batch_size=cfg.batch_size, shape=shape)
        gens = generate(target, rec)
        bar.update(len(rec.seeds))
        G = to_unit(gens).to(target.device)  # distances on the model's device (a GPU when there is one)
        A = to_unit(ev.pixels[idxs]).to(target.device)
        D = tiled_l2_pairwise(A, G, g.tiles)  # [a, n_gen]
        order = torch.argsort(D, dim=1)
        group: dict[str, Any] = {"index": gi, "prompt": prompt, "n_artworks": len(idxs), "record": rec.to_dict()}
        if target.conditional and len(rec.seeds) > 1:
            # Carlini's prompt-level criterion: generations for the prompt alone, without the artwork
            cl = max_clique(tiled_l2_pairwise(G, G, g.tiles) <= g.clique_threshold)
            group["prompt_clique"] = {"size": len(cl), "members": cl, "flagged": len(cl) >= g.min_clique}
        groups_out.append(group)
        k_ssim = G.shape[0] if g.ssim_top_k is None else min(int(g.ssim_top_k), G.shape[0])
        emb_g = embedder.embed(G).cpu() if embedder is not None else None
        emb_a = embedder.embed(A).cpu() if embedder is not None else None
        for a, i in enumerate(idxs):
            cand = order[a, :k_ssim]
            sims = ssim(A[a:a + 1].expand(len(cand), -1, -1, -1), G[cand])
            d_min[i] = float(D[a, order[a, 0]])
            s_max[i] = float(sims.max())
            near = (D[a] <= g.clique_threshold).nonzero().flatten()
            near = near[torch.argsort(D[a, near])][:512]
            if len(near) >= 2:
                size = len(max_clique(tiled_l2_pairwise(G[near], G[near], g.tiles) <= g.clique_threshold))
            else:
                size = int(len(near))
            clique[i] = size
            ssim_of = {int(c): float(v) for c, v in zip(cand.tolist(), sims.tolist())}
            nearest = [{"generation": int(j), "seed": int(rec.seeds[int(j)]), "tiled_l2": float(D[a, j]),
                        "ssim": ssim_of.get(int(j))} for j in order[a, :top_k].tolist()]
            info: dict[str, Any] = {"group": gi, "prompt": prompt, "nearest": nearest,
                                    "n_within_threshold": int((D[a] <= g.clique_threshold).sum()),
                                    "clique_size": size, "clique_flagged": size >= g.min_clique}
            if emb_g is not None:
                cos = emb_a[a:a + 1] @ emb_g.T
                e_max[i] = float(cos.max())
                info["embedding_best"] = {"generation": int(cos.argmax()), "cosine": e_max[i]}
            per_art[i]["generate"] = info
            if i in material:
                material[i]["generations"] = [(gens[int(j)].clone(), d) for j, d in zip(order[a, :top_k].tolist(), nearest)]
    bar.close()
    params = {k: v for k, v in cfg.generate.__dict__.items()}
    stats["recon_gen_tiled_l2"] = -d_min
    stats["recon_gen_ssim"] = s_max
    if embedder is not None:
        stats["recon_gen_embed"] = e_max
    stats["recon_gen_clique"] = clique
    for name in ("recon_gen_tiled_l2", "recon_gen_ssim", "recon_gen_embed", "recon_gen_clique"):
        if name in stats:
            hashes[name] = params_hash({"statistic": name, **params})
    return embedder.describe() if embedder is not None else None


# ---------------------------------------------------------------------------------------------- inpaint
def _batches(ev: EvidenceSet, batch_size: int):
    for start in range(0, len(ev), batch_size):
        yield start, min(start + batch_size, len(ev))


def _conditioning(target: Target, captions: list[str], guidance_scale: float):
    if not target.conditional:
        return None, None
    cond = target.encode_text(captions)
    uncond = target.encode_text([""] * len(captions)) if float(guidance_scale) != 1.0 else None
    return cond, uncond


def _inpaint_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material):
    c = cfg.inpaint
    n = len(ev)
    res = int(target.info.resolution)
    errs = {m: np.zeros(n) for m in c.masks}
    bar = tqdm(total=n * len(c.masks), desc="reconstruction: inpaint", unit="img", disable=not progress)
    for start, stop in _batches(ev, cfg.batch_size):
        recs = ev.records[start:stop]
        ids = [r.image_id for r in recs]
        pixels = ev.batch(start, stop)
        ref = to_unit(ev.pixels[start:stop])
        x0 = target.encode(pixels)
        cond, uncond = _conditioning(target, [r.caption for r in recs], c.guidance_scale)
        noise = NoiseSource(seed, ids)
        for mask_kind in c.masks:
            m_pix = make_masks(mask_kind, ids, res, seed=seed, cfg=c)
            m_lat = latent_mask(m_pix, tuple(x0.shape[-2:]))
            total = torch.zeros(len(ids))
            first = None
            for r in range(int(c.n)):
                x = repaint(target, x0, m_lat, noise, f"recon/inpaint/{mask_kind}/r{r}", c, cond=cond, uncond=uncond)
                img = to_uint8(to_pixels(target, x))
                total += masked_rms(to_unit(img), ref, m_pix)
                first = img if first is None else first
            e = (total / int(c.n)).numpy()
            errs[mask_kind][start:stop] = e
            for j, i in enumerate(range(start, stop)):
                per_art[i].setdefault("inpaint", {})[mask_kind] = {"rms_in_mask": float(e[j]),
                                                                  "hidden_fraction": float(m_pix[j].mean())}
                if i in material:
                    material[i].setdefault("inpaint", {})[mask_kind] = (
                        masked_preview(ev.pixels[i], m_pix[j]), first[j].clone(), float(e[j]))
            bar.update(len(ids))
    bar.close()
    for mask_kind in c.masks:
        name = f"recon_inpaint_{mask_kind}"
        stats[name] = -errs[mask_kind]
        hashes[name] = params_hash({"statistic": name, "seed_tag": "recon/inpaint", **c.__dict__})


# ---------------------------------------------------------------------------------------------- img2img
def img2img_timestep(target: Target, strength: float) -> int:
    """Strength in (0, 1] → the diffusion timestep the artwork is noised to (the target's process decides)."""
    return target.process.img2img_timestep(strength)


def _img2img_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material):
    c = cfg.img2img
    tiles = cfg.generate.tiles
    n = len(ev)
    t = img2img_timestep(target, c.strength)
    steps = max(1, min(int(c.steps), t))
    dist = np.zeros(n)
    bar = tqdm(total=n, desc="reconstruction: img2img", unit="img", disable=not progress)
    for start, stop in _batches(ev, cfg.batch_size):
        recs = ev.records[start:stop]
        ids = [r.image_id for r in recs]
        x0 = target.encode(ev.batch(start, stop))
        ref = to_unit(ev.pixels[start:stop])
        cond = target.encode_text([r.caption for r in recs]) if target.conditional else None
        noise = NoiseSource(seed, ids)
        ds = []
        imgs = []
        for k in range(int(c.n)):
            # the ReDiffuse / loss attacks' draw for this timestep: same variations as `rediffuse` at equal t
            z = noise.randn(f"eps/t{t}/k{k}", x0.shape[1:], x0.device)
            img = to_uint8(to_pixels(target, img2img(target, x0, z, t, steps, cond)))
            ds.append(tiled_l2(to_unit(img), ref, tiles))
            imgs.append(img)
        dk = torch.stack(ds)  # [n_var, B]
        dist[start:stop] = dk.mean(0).numpy()
        best = dk.argmin(0)
        for j, i in enumerate(range(start, stop)):
            per_art[i]["img2img"] = {"t": t, "steps": steps, "tiled_l2": [float(v) for v in dk[:, j]],
                                     "mean_tiled_l2": float(dist[i])}
            if i in material:
                material[i]["img2img"] = (imgs[int(best[j])][j].clone(), float(dk[int(best[j]), j]), t)
        bar.update(len(ids))
    bar.close()
    stats["recon_img2img_tiled_l2"] = -dist
    hashes["recon_img2img_tiled_l2"] = params_hash({"statistic": "recon_img2img_tiled_l2", "t": t, "steps": steps,
                                                    "tiles": tiles, **c.__dict__})


# ---------------------------------------------------------------------------------------------- figures
def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _ordinal(k: int) -> str:
    return {1: "", 2: "2nd ", 3: "3rd "}.get(k, f"{k}th ")


def _primary_stat(stats: dict[str, np.ndarray]) -> str:
    return next(iter(stats))


def _write_figures(cfg, out: Path, recs, per_art, material, originals, stats, roles):
    controls = roles == "control"
    primary = _primary_stat(stats)
    s = stats[primary]
    # works of the figure roles by p-value (= by score), then the most member-like controls for contrast
    works = sorted((i for i in material if recs[i].role != "control"), key=lambda i: -s[i])[: int(cfg.figures.max_items)]
    ctrl = sorted((i for i in material if recs[i].role == "control"), key=lambda i: -s[i])[: int(cfg.figures.controls)]
    chosen = works + ctrl
    rows: list[EvidenceRow] = []
    items: list[dict[str, Any]] = []
    files: list[str] = []
    scale = int(cfg.figures.scale)
    for i in chosen:
        r = recs[i]
        mat = material[i]
        art = per_art[i]
        panels = [Panel(originals[i], f"{r.role} {_short(r.image_id)}", "artwork", highlight=True)]
        gen_files = []
        for rank, (img, d) in enumerate(mat.get("generations", [])):
            lab = f"ℓ2t {_fmt(d['tiled_l2'])}" + (f"  SSIM {_fmt(d['ssim'], 2)}" if d.get("ssim") is not None else "")
            panels.append(Panel(img, f"{lab}\nseed {d['seed']}", f"generation #{d['generation']}"))
            rel = f"generations/{_short(r.image_id)}_gen{d['generation']}.png"
            save_png_image(img, out / rel)
            gen_files.append({"file": rel, "group": art["generate"]["group"], "generation": d["generation"],
                              "seed": d["seed"], "tiled_l2": d["tiled_l2"], "ssim": d.get("ssim")})
            files.append(rel)
        for kind, (shown, recon, err) in mat.get("inpaint", {}).items():
            panels.append(Panel(shown, "shown to the model", f"inpaint: {kind}"))
            panels.append(Panel(recon, f"RMS in hidden {_fmt(err)}", "model's fill"))
        if "img2img" in mat:
            img, d, t = mat["img2img"]
            panels.append(Panel(img, f"ℓ2t {_fmt(d)}", f"img2img t={t}"))
        pvals = art.get("p_conformal", {})
        ptxt = ", ".join(f"{k.removeprefix('recon_')} p={_fmt(v, 2)}" for k, v in list(pvals.items())[:4])
        if r.role == "control":
            rank = int((s[controls] > s[i]).sum()) + 1
            ptxt = f"for contrast: the control with the {_ordinal(rank)}highest {primary}"
        title = f"{r.role} {_short(r.image_id)}" + (f" — “{r.caption[:60]}”" if r.caption else "") + (f"   [{ptxt}]" if ptxt else "")
        row = EvidenceRow(title, panels)
        rows.append(row)
        rel = f"items/{_short(r.image_id)}.png"
        (out / "items").mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(row_png(row, scale))
        files.append(rel)
        items.append({"image_id": r.image_id, "role": r.role, "path": r.path, "caption": r.caption, "figure": rel,
                      "generations": gen_files, "scores": art.get("scores", {}), "p_conformal": pvals})
    if rows:
        (out / GRID_NAME).write_bytes(grid_png(rows, scale))
        files.append(GRID_NAME)
    return items, files
