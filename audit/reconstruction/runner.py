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

With a score store (``store``; the run's ``score_store``) every statistic and every per-work value of the record
is persisted unit by unit (a batch of works for inpainting / img2img, a prompt group's pool for generate-and-match
and extraction) and reused by a resumed or extended run: see :mod:`audit.reconstruction.store` for the keys, the
units and how the figures of reused works are regenerated.

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
from audit.reconstruction.store import GENERATE_SEEDS, ReconStore, folder_fingerprint, nan_to_none, pool_id, store_hash
from audit.targets.base import Target
from audit.stats.core import auc as _auc
from audit.stats.core import conformal_pvalues
from audit.types import SCORE_COLUMNS, EvidenceSet, ScoreTable, params_hash

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
    unet_evals: int = 0  # every denoiser evaluation of the target in this call (statistics and figures)
    figure_unet_evals: int = 0  # of which: regenerating figure images of works whose statistics were reused
    #: run.json ``score_provenance`` shape (:func:`audit.store.provenance_summary`) of the recon_* rows
    provenance: dict[str, Any] = field(default_factory=dict)
    #: computed / reused statistics and units, integrity failures, the store folder (None without a store)
    store_stats: dict[str, Any] = field(default_factory=dict)

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
            "figure_unet_evaluations": self.figure_unet_evals,
            "score_store": dict(self.store_stats),
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
    store: Any = None,
    shard: tuple[int, int] | None = None,
    computed_for: tuple[str, str] | None = None,
) -> ReconstructionOutput:
    """Run the configured reconstruction tests on ``evidence`` (see the module docstring).

    ``cfg`` is a :class:`ReconstructionConfig`, a dict or the ``reconstruction`` node of the Hydra config.
    ``out_dir`` (e.g. ``<run folder>/reconstruction``) receives the JSON record, figures and HTML
    fragment; without it nothing is written. Every random draw derives from ``seed``. ``store``: the run's
    :class:`audit.store.ScoreStore` (its context's seed must be ``seed``); None = compute everything, persist nothing.
    ``shard=(index, n)`` (with a store): compute and persist only this shard's units, return no rows and write
    nothing else (:mod:`audit.reconstruction.store`); a later call without it assembles the results.
    ``computed_for=(plan SHA-256, declared UTC)``: that assembling call's plan: stored statistics the shards
    computed under it after its declaration are recorded as computed for this run (provenance), not reused.
    """
    if store is not None and int(store.seed) != int(seed):
        raise ValueError(f"reconstruction: the score store's seed {store.seed} is not the run seed {seed}")
    rs = ReconStore(store, shard, computed_for)
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
    skeys: dict[str, list[str]] = {}  # statistic -> the store key's parameter hash of each work
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
                                                groups_out, rs, skeys)
            _prune(material, stats, recs, cfg)
        if cfg.inpaint.enabled and cfg.inpaint.masks:
            _inpaint_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material, rs, skeys)
            _prune(material, stats, recs, cfg)
        if cfg.img2img.enabled:
            _img2img_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material, rs, skeys)
            _prune(material, stats, recs, cfg)
        extraction = None
        if cfg.extract.enabled:  # model-guided extraction (fine-tune vs base): audit/reconstruction/extract.py
            from audit.reconstruction.extract import reconstruction_step

            extraction = reconstruction_step(target, ev, cfg, seed, progress, stats, hashes, per_art, rs, skeys)
        if not stats:
            raise ValueError("reconstruction: every test is disabled (generate, inpaint, img2img)")
        evals_scores = target.unet_evals - evals0
        if rs.shard is not None:  # one shard's units are in the store; the merge assembles rows, record, figures
            empty = ScoreTable(pd.DataFrame({c: pd.Series(dtype="float64" if c == "score" else "object")
                                             for c in SCORE_COLUMNS}))
            counts = {"folder": rs.folder, "shard": list(rs.shard), "units_computed": rs.units_computed,
                      "units_reused": rs.units_reused, "integrity_failed": len(rs.failures)}
            return ReconstructionOutput(empty, {"shard": list(rs.shard)}, None, [], evals_scores, 0, {}, counts)
        # figure images of works whose statistics were reused: regenerated from the recorded seeds / per-work noise
        regenerated: list[str] = []
        if out is not None and cfg.figures.enabled and fig_idx:
            regenerated = _regenerate_material(target, ev, cfg, seed, material, per_art, groups_out)
    figure_evals = target.unet_evals - evals0 - evals_scores

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
    keys = [(r.image_id, name, skeys[name][i]) for name in stats for i, r in enumerate(recs)]
    provenance = rs.provenance(keys)
    store_stats = {"folder": rs.folder, **rs.counts(keys)}
    files: list[str] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.figures.enabled and fig_idx:
            record["figures"], fig_files = _write_figures(cfg, out, recs, per_art, material, originals, stats, roles)
            files += fig_files
        if extraction is not None:
            files += extraction.write(out, ev, stats, roles)
            figure_evals += extraction.figure_evals
    if extraction is not None:
        record["extraction"] = extraction.record
        # the base model's own evaluations are counted on the base (as calibration's are), not in unet_evals
        record["base_unet_evaluations"] = extraction.base_evals
    shown = {it["image_id"] for it in record["figures"]}
    record["score_store"] = {
        **store_stats,
        "units": "inpainting / img2img: batches of works; generate-and-match / extraction: one pool per prompt group",
        "figures": ("the figures show the most member-like works over all works; images of works whose statistics "
                    "were reused from the store are regenerated for them (generations from the recorded seeds, "
                    "inpainting / img2img from the same per-work noise); the distances shown are the stored ones"),
        "figures_regenerated": [i for i in regenerated if i in shown],
        "figure_unet_evaluations": int(figure_evals),
        "statistics_unet_evaluations": int(evals_scores),
    }
    if rs.failures:
        log.warning("reconstruction: %d stored entr%s failed the integrity check and were recomputed, not reused "
                    "(first: %s in %s: %s)", len(rs.failures), "y" if len(rs.failures) == 1 else "ies",
                    rs.failures[0].image_id[:12] or "-", rs.failures[0].file, rs.failures[0].reason)
    if out is not None:
        (out / JSON_NAME).write_text(json.dumps(record, indent=2, default=_json_default, allow_nan=False))
        files.append(JSON_NAME)
        from audit.reconstruction.report import write_fragment

        write_fragment(out, out / HTML_NAME)
        files.append(HTML_NAME)
    return ReconstructionOutput(table, record, out, files, target.unet_evals - evals0, int(figure_evals), provenance,
                                store_stats)


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
def _generate_and_match(target, ev, cfg, seed, progress, stats, hashes, per_art, material, groups_out, rs, skeys):
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
    names = ["recon_gen_tiled_l2", "recon_gen_ssim"] + (["recon_gen_embed"] if embedder is not None else []) + [
        "recon_gen_clique"]
    params = {k: v for k, v in cfg.generate.__dict__.items()}
    for name in names:
        hashes[name] = params_hash({"statistic": name, **params})
        skeys[name] = [""] * n
    # what else decides the values (the store key): the seeds policy, the generation batch (part of the record),
    # the embedding model's weights
    extra: dict[str, Any] = {"seeds": GENERATE_SEEDS, "batch_size": int(cfg.batch_size)}
    if embedder is not None:
        extra["embedding"] = {**embedder.describe(), "weights": folder_fingerprint(g.embedding)}
    vals = {name: np.zeros(n) for name in names}
    top_k = max(1, int(cfg.figures.top_k))
    bar = tqdm(total=len(groups) * g.n, desc="reconstruction: generate", unit="img", disable=not progress)
    for gi, (prompt, idxs) in enumerate(groups.items()):
        if not rs.mine(gi):
            continue
        rec = GenerationRecord.new(target, prompt, g.n, seed=seed, steps=g.steps, guidance_scale=g.guidance_scale,
                                   eta=g.eta, batch_size=cfg.batch_size, shape=shape)
        h = {name: store_hash(hashes[name], extra, prompt if target.conditional else None) for name in names}
        hd = h["recon_gen_tiled_l2"]  # the per-work and per-pool record values
        k_near = min(top_k, len(rec.seeds))

        def work_keys(i: int) -> list[tuple[str, str, str]]:
            iid = recs[i].image_id
            ks = [(iid, name, h[name]) for name in names] + [(iid, "recon_gen/n_within_threshold", hd)]
            for k in range(k_near):
                ks += [(iid, f"recon_gen/nearest{k}/{v}", hd) for v in ("generation", "tiled_l2", "ssim")]
            if embedder is not None:
                ks.append((iid, "recon_gen/embedding_best/generation", hd))
            return ks

        pid = pool_id(prompt)
        with_clique = bool(target.conditional and len(rec.seeds) > 1)

        def pool_done() -> bool:
            if not with_clique:
                return True
            if not rs.has([(pid, "recon_gen/prompt_clique/size", hd)]):
                return False
            size = int(rs.get(pid, "recon_gen/prompt_clique/size", hd))
            return rs.has([(pid, f"recon_gen/prompt_clique/member{k}", hd) for k in range(size)])

        group: dict[str, Any] = {"index": gi, "prompt": prompt, "n_artworks": len(idxs), "record": rec.to_dict()}
        need = [i for i in idxs if not rs.has(work_keys(i))]
        shown: dict[int, list[torch.Tensor]] = {}
        if need or not pool_done():
            gens = generate(target, rec)
            bar.update(len(rec.seeds))
            G = to_unit(gens).to(target.device)  # distances on the model's device (a GPU when there is one)
            rows: list[tuple[str, str, str, float]] = []
            if with_clique and not pool_done():
                # Carlini's prompt-level criterion: generations for the prompt alone, without the artwork
                cl = max_clique(tiled_l2_pairwise(G, G, g.tiles) <= g.clique_threshold)
                rows.append((pid, "recon_gen/prompt_clique/size", hd, float(len(cl))))
                rows += [(pid, f"recon_gen/prompt_clique/member{k}", hd, float(m)) for k, m in enumerate(cl)]
            if need:
                A = to_unit(ev.pixels[need]).to(target.device)
                D = tiled_l2_pairwise(A, G, g.tiles)  # [a, n_gen]; each row depends on its work only
                order = torch.argsort(D, dim=1)
                k_ssim = G.shape[0] if g.ssim_top_k is None else min(int(g.ssim_top_k), G.shape[0])
                emb_g = embedder.embed(G).cpu() if embedder is not None else None
                emb_a = embedder.embed(A).cpu() if embedder is not None else None
                for a, i in enumerate(need):
                    iid = recs[i].image_id
                    cand = order[a, :k_ssim]
                    sims = ssim(A[a:a + 1].expand(len(cand), -1, -1, -1), G[cand])
                    near = (D[a] <= g.clique_threshold).nonzero().flatten()
                    near = near[torch.argsort(D[a, near])][:512]
                    if len(near) >= 2:
                        size = len(max_clique(tiled_l2_pairwise(G[near], G[near], g.tiles) <= g.clique_threshold))
                    else:
                        size = int(len(near))
                    ssim_of = {int(c): float(v) for c, v in zip(cand.tolist(), sims.tolist())}
                    rows += [(iid, "recon_gen_tiled_l2", h["recon_gen_tiled_l2"], -float(D[a, order[a, 0]])),
                             (iid, "recon_gen_ssim", h["recon_gen_ssim"], float(sims.max())),
                             (iid, "recon_gen_clique", h["recon_gen_clique"], float(size)),
                             (iid, "recon_gen/n_within_threshold", hd, float((D[a] <= g.clique_threshold).sum()))]
                    for k, j in enumerate(order[a, :k_near].tolist()):
                        s_j = ssim_of.get(int(j))
                        rows += [(iid, f"recon_gen/nearest{k}/generation", hd, float(j)),
                                 (iid, f"recon_gen/nearest{k}/tiled_l2", hd, float(D[a, j])),
                                 (iid, f"recon_gen/nearest{k}/ssim", hd, float("nan") if s_j is None else s_j)]
                    if emb_g is not None:
                        cos = emb_a[a:a + 1] @ emb_g.T
                        rows += [(iid, "recon_gen_embed", h["recon_gen_embed"], float(cos.max())),
                                 (iid, "recon_gen/embedding_best/generation", hd, float(cos.argmax()))]
                    if i in material:
                        shown[i] = [gens[int(j)].clone() for j in order[a, :k_near].tolist()]
            rs.add(rows)  # the group's unit, persisted before the next group starts
        else:
            rs.units_reused += 1
        if with_clique:
            size = int(rs.get(pid, "recon_gen/prompt_clique/size", hd))
            members = [int(rs.get(pid, f"recon_gen/prompt_clique/member{k}", hd)) for k in range(size)]
            group["prompt_clique"] = {"size": size, "members": members, "flagged": size >= g.min_clique}
        groups_out.append(group)
        for i in idxs:  # the work's values, stored or just computed: one way to the record
            iid = recs[i].image_id
            for name in names:
                vals[name][i] = rs.get(iid, name, h[name])
                skeys[name][i] = h[name]
            nearest = []
            for k in range(k_near):
                j = int(rs.get(iid, f"recon_gen/nearest{k}/generation", hd))
                nearest.append({"generation": j, "seed": int(rec.seeds[j]),
                                "tiled_l2": rs.get(iid, f"recon_gen/nearest{k}/tiled_l2", hd),
                                "ssim": nan_to_none(rs.get(iid, f"recon_gen/nearest{k}/ssim", hd))})
            size = int(vals["recon_gen_clique"][i])
            info: dict[str, Any] = {"group": gi, "prompt": prompt, "nearest": nearest,
                                    "n_within_threshold": int(rs.get(iid, "recon_gen/n_within_threshold", hd)),
                                    "clique_size": size, "clique_flagged": size >= g.min_clique}
            if embedder is not None:
                info["embedding_best"] = {"generation": int(rs.get(iid, "recon_gen/embedding_best/generation", hd)),
                                          "cosine": float(vals["recon_gen_embed"][i])}
            per_art[i]["generate"] = info
            if i in material and i in shown:
                material[i]["generations"] = list(zip(shown[i], nearest))
    bar.close()
    for name in names:
        stats[name] = vals[name]
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


def _pixels(ev: EvidenceSet, idx: list[int]) -> torch.Tensor:
    """Works ``idx`` in [-1, 1] (as :meth:`EvidenceSet.batch` gives a contiguous range)."""
    return ev.pixels[idx].float().div(127.5).sub(1.0)


def _inpaint_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material, rs, skeys):
    c = cfg.inpaint
    n = len(ev)
    recs = ev.records
    res = int(target.info.resolution)
    names = {m: f"recon_inpaint_{m}" for m in c.masks}
    for name in names.values():
        hashes[name] = params_hash({"statistic": name, "seed_tag": "recon/inpaint", **c.__dict__})
        skeys[name] = [store_hash(hashes[name], None, r.caption if target.conditional else None) for r in recs]

    def work_keys(i: int) -> list[tuple[str, str, str]]:
        iid = recs[i].image_id
        return [k for name in names.values() for k in ((iid, name, skeys[name][i]),
                                                       (iid, f"{name}/hidden_fraction", skeys[name][i]))]

    errs = {m: np.zeros(n) for m in c.masks}
    bar = tqdm(total=n * len(c.masks), desc="reconstruction: inpaint", unit="img", disable=not progress)
    for start, stop in _batches(ev, cfg.batch_size):
        if not rs.mine(start // cfg.batch_size):
            continue
        need = [i for i in range(start, stop) if not rs.has(work_keys(i))]
        if need:  # the batch's missing works (all of them in a fresh run), computed together
            ids = [recs[i].image_id for i in need]
            pixels = _pixels(ev, need)
            ref = to_unit(ev.pixels[need])
            x0 = target.encode(pixels)
            cond, uncond = _conditioning(target, [recs[i].caption for i in need], c.guidance_scale)
            noise = NoiseSource(seed, ids)
            rows: list[tuple[str, str, str, float]] = []
            for mask_kind in c.masks:
                name = names[mask_kind]
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
                for j, i in enumerate(need):
                    rows += [(ids[j], name, skeys[name][i], -float(e[j])),
                             (ids[j], f"{name}/hidden_fraction", skeys[name][i], float(m_pix[j].mean()))]
                    if i in material:
                        material[i].setdefault("inpaint", {})[mask_kind] = (
                            masked_preview(ev.pixels[i], m_pix[j]), first[j].clone(), float(e[j]))
                bar.update(len(ids))
            rs.add(rows)  # the batch's unit, persisted before the next batch starts
        else:
            rs.units_reused += 1
            bar.update((stop - start) * len(c.masks))
        for i in range(start, stop):
            iid = recs[i].image_id
            for mask_kind, name in names.items():
                err = -rs.get(iid, name, skeys[name][i])
                errs[mask_kind][i] = err
                per_art[i].setdefault("inpaint", {})[mask_kind] = {
                    "rms_in_mask": err, "hidden_fraction": rs.get(iid, f"{name}/hidden_fraction", skeys[name][i])}
    bar.close()
    for mask_kind, name in names.items():
        stats[name] = -errs[mask_kind]


# ---------------------------------------------------------------------------------------------- img2img
def img2img_timestep(target: Target, strength: float) -> int:
    """Strength in (0, 1] → the diffusion timestep the artwork is noised to (the target's process decides)."""
    return target.process.img2img_timestep(strength)


def _img2img_all(target, ev, cfg, seed, progress, stats, hashes, per_art, material, rs, skeys):
    c = cfg.img2img
    tiles = cfg.generate.tiles
    n = len(ev)
    recs = ev.records
    t = img2img_timestep(target, c.strength)
    steps = max(1, min(int(c.steps), t))
    name = "recon_img2img_tiled_l2"
    hashes[name] = params_hash({"statistic": name, "t": t, "steps": steps, "tiles": tiles, **c.__dict__})
    skeys[name] = [store_hash(hashes[name], None, r.caption if target.conditional else None) for r in recs]

    def work_keys(i: int) -> list[tuple[str, str, str]]:
        iid = recs[i].image_id
        return [(iid, name, skeys[name][i])] + [(iid, f"{name}/variation{k}", skeys[name][i]) for k in range(int(c.n))]

    dist = np.zeros(n)
    bar = tqdm(total=n, desc="reconstruction: img2img", unit="img", disable=not progress)
    for start, stop in _batches(ev, cfg.batch_size):
        if not rs.mine(start // cfg.batch_size):
            continue
        need = [i for i in range(start, stop) if not rs.has(work_keys(i))]
        if need:
            ids = [recs[i].image_id for i in need]
            x0 = target.encode(_pixels(ev, need))
            ref = to_unit(ev.pixels[need])
            cond = target.encode_text([recs[i].caption for i in need]) if target.conditional else None
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
            mean = dk.mean(0).numpy()
            best = dk.argmin(0)
            rows: list[tuple[str, str, str, float]] = []
            for j, i in enumerate(need):
                rows.append((ids[j], name, skeys[name][i], -float(mean[j])))
                rows += [(ids[j], f"{name}/variation{k}", skeys[name][i], float(dk[k, j])) for k in range(int(c.n))]
                if i in material:
                    material[i]["img2img"] = (imgs[int(best[j])][j].clone(), float(dk[int(best[j]), j]), t)
            rs.add(rows)
        else:
            rs.units_reused += 1
        for i in range(start, stop):
            iid = recs[i].image_id
            dist[i] = -rs.get(iid, name, skeys[name][i])
            per_art[i]["img2img"] = {"t": t, "steps": steps,
                                     "tiled_l2": [rs.get(iid, f"{name}/variation{k}", skeys[name][i])
                                                  for k in range(int(c.n))],
                                     "mean_tiled_l2": float(dist[i])}
        bar.update(stop - start)
    bar.close()
    stats[name] = -dist


# ---------------------------------------------------------------------------------------------- figures of reused works
def _regenerate_material(target, ev, cfg, seed, material, per_art, groups_out) -> list[str]:
    """Figure images of the shown works whose statistics came from the store (nothing was computed for them in
    this run): the nearest generations from the recorded generation record — only the record's batches that hold
    them, each generated exactly as the audit generated it — and the inpainting / img2img reconstructions from the
    same per-work noise. Returns the ids of the works whose images were regenerated."""
    recs = ev.records
    res = int(target.info.resolution)
    done: set[int] = set()
    if cfg.generate.enabled:
        todo = [i for i in material if "generations" not in material[i] and "generate" in per_art[i]]
        by_group: dict[int, list[int]] = {}
        for i in todo:
            by_group.setdefault(int(per_art[i]["generate"]["group"]), []).append(i)
        for gi, works in by_group.items():
            rec = GenerationRecord.from_dict(groups_out[gi]["record"])
            bs = max(1, int(rec.batch_size))
            wanted = {d["generation"] for i in works for d in per_art[i]["generate"]["nearest"]}
            images: dict[int, torch.Tensor] = {}
            for chunk in sorted({j // bs for j in wanted}):
                lo, hi = chunk * bs, min(chunk * bs + bs, len(rec.seeds))
                imgs = generate(target, rec, indices=list(range(lo, hi)))  # the record's own batch
                images.update({j: imgs[j - lo] for j in range(lo, hi)})
            for i in works:
                material[i]["generations"] = [(images[d["generation"]], d) for d in per_art[i]["generate"]["nearest"]]
                done.add(i)
    c = cfg.inpaint
    if c.enabled and c.masks:
        todo = [i for i in material if set(material[i].get("inpaint", {})) != set(c.masks)]
        for s0 in range(0, len(todo), cfg.batch_size):
            idx = todo[s0:s0 + cfg.batch_size]
            ids = [recs[i].image_id for i in idx]
            x0 = target.encode(_pixels(ev, idx))
            cond, uncond = _conditioning(target, [recs[i].caption for i in idx], c.guidance_scale)
            noise = NoiseSource(seed, ids)
            for mask_kind in c.masks:
                m_pix = make_masks(mask_kind, ids, res, seed=seed, cfg=c)
                m_lat = latent_mask(m_pix, tuple(x0.shape[-2:]))
                x = repaint(target, x0, m_lat, noise, f"recon/inpaint/{mask_kind}/r0", c, cond=cond, uncond=uncond)
                img = to_uint8(to_pixels(target, x))  # the first repeat, as the figure of a computed work shows
                for j, i in enumerate(idx):
                    material[i].setdefault("inpaint", {})[mask_kind] = (
                        masked_preview(ev.pixels[i], m_pix[j]), img[j].clone(),
                        float(per_art[i]["inpaint"][mask_kind]["rms_in_mask"]))
            done.update(idx)
    if cfg.img2img.enabled:
        todo = [i for i in material if "img2img" not in material[i] and "img2img" in per_art[i]]
        by_k: dict[int, list[int]] = {}
        for i in todo:  # the variation the figure shows: the closest one
            by_k.setdefault(int(np.argmin(per_art[i]["img2img"]["tiled_l2"])), []).append(i)
        for k, works in sorted(by_k.items()):
            for s0 in range(0, len(works), cfg.batch_size):
                idx = works[s0:s0 + cfg.batch_size]
                t, steps = per_art[idx[0]]["img2img"]["t"], per_art[idx[0]]["img2img"]["steps"]
                x0 = target.encode(_pixels(ev, idx))
                cond = target.encode_text([recs[i].caption for i in idx]) if target.conditional else None
                z = NoiseSource(seed, [recs[i].image_id for i in idx]).randn(f"eps/t{t}/k{k}", x0.shape[1:], x0.device)
                img = to_uint8(to_pixels(target, img2img(target, x0, z, t, steps, cond)))
                for j, i in enumerate(idx):
                    material[i]["img2img"] = (img[j].clone(), float(per_art[i]["img2img"]["tiled_l2"][k]), t)
                done.update(idx)
    return [recs[i].image_id for i in sorted(done)]

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
