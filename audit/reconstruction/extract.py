"""Model-guided extraction: make a fine-tune regenerate its training works, guided by what it changed.

Written from the idea of FineXtract (Wu et al., "Revealing the Unseen: Guiding Personalized Diffusion Models to
Expose Training Data", ICML 2025): a fine-tune's distribution is approximately the base model's moved part of the
way towards the fine-tuning data, ``p_ft ∝ p_base^(1−λ) · q^λ``, so the fine-tuning data ``q ∝ p_ft^(1/λ) ·
p_base^(1−1/λ)`` is reached by extrapolating from the base along the difference of the two models' predictions:

    ε̃(x_t, c) = ε_base(x_t, c) + w · (ε_ft(x_t, c) − ε_base(x_t, c))          (w = 1/λ > 1; w = 1 is the fine-tune)
              [+ k · (ε_ft(x_t, c) − ε_ft(x_t, ∅))                            optional text guidance]

Many samples per caption are drawn with deterministic DDIM (flow models: the flow ODE) from recorded seeds; the
samples of each caption are clustered (graph of tiled-ℓ2 distances ≤ ``cluster_threshold``, connected components,
each represented by its medoid); the largest clusters' medoids are the *extracted* images. Each work — suspect and
control alike — is matched against the extraction of its own caption, so the per-work statistic is computed the
same way for both and enters the ScoreTable like every other reconstruction score:

=========================== ==========================================================================
``recon_extract_tiled_l2``  −(smallest tiled ℓ2 from the work to any guided sample of its caption)
``recon_extract_cluster``   −(smallest tiled ℓ2 from the work to the medoid of one of its caption's
                            ``top_clusters`` largest clusters): FineXtract's extracted images
=========================== ==========================================================================

Cost: ``n × steps × (2, or 3 with text guidance)`` denoiser evaluations per distinct caption (half of the
first two on the base model, counted on the base target). The base is the fine-tune's public base: for a LoRA
target the same source without the LoRA (default), for a full fine-tune ``target.base``; both must share the
VAE / latent space (a LoRA or a denoiser fine-tune does).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from audit.reconstruction.figures import EvidenceRow, Panel, grid_png
from audit.reconstruction.metrics import tiled_l2_pairwise, to_unit
from audit.reconstruction.sampling import ddim_move, diffusion_shape, to_pixels, to_uint8
from audit.targets.base import Target

__all__ = ["ExtractionSettings", "ExtractionResult", "guided_samples", "cluster_medoids", "extract", "STATISTICS",
           "evidence_rows"]

STATISTICS: dict[str, str] = {
    "recon_extract_tiled_l2": "model-guided extraction: −(smallest tiled ℓ2 from the work to a guided sample of its caption)",
    "recon_extract_cluster": "model-guided extraction: −(smallest tiled ℓ2 from the work to an extracted cluster medoid)",
}


@dataclass
class ExtractionSettings:
    """n: guided samples per distinct caption; steps: DDIM steps; model_guidance: w (1 = plain fine-tune sampling);
    text_guidance: k (0 = none); cluster_threshold: tiled ℓ2 (images in [0, 1]) under which two samples are
    linked; top_clusters: how many of the largest clusters' medoids count as extracted; tiles: tiled-ℓ2 grid;
    prompt: the caption template ({caption}, {artist})."""

    n: int = 16
    steps: int = 20
    model_guidance: float = 3.0
    text_guidance: float = 0.0
    cluster_threshold: float = 0.12
    top_clusters: int = 8
    tiles: int = 4
    batch_size: int = 32
    prompt: str = "{caption}"

    def __post_init__(self) -> None:
        if self.n < 1 or self.steps < 1 or self.top_clusters < 1 or self.batch_size < 1:
            raise ValueError("extraction: n, steps, top_clusters and batch_size must be ≥ 1")
        if self.model_guidance < 0 or self.text_guidance < 0:
            raise ValueError("extraction: model_guidance and text_guidance must be ≥ 0")


def extraction_seeds(seed: int, prompt: str | None, n: int) -> list[int]:
    """``n`` 63-bit seeds from (run seed, caption, index), recorded so every sample can be regenerated."""
    out = []
    for i in range(int(n)):
        d = hashlib.sha256(f"{int(seed)}|extract|{prompt if prompt is not None else '<unconditional>'}|{i}".encode())
        out.append(int.from_bytes(d.digest()[:8], "little") & ((1 << 63) - 1))
    return out


def check_pair(target: Target, base: Target) -> None:
    """Refuse, in one line, a base that cannot guide this target (other process, resolution or latent shape)."""
    if base.process.kind != target.process.kind:
        raise ValueError(f"extraction: the base is a {base.process.kind} model, the target a {target.process.kind} one")
    if int(base.info.resolution) != int(target.info.resolution):
        raise ValueError(f"extraction: the base works at {base.info.resolution} px, the target at "
                         f"{target.info.resolution} px")
    if diffusion_shape(base) != diffusion_shape(target):
        raise ValueError("extraction: base and target have different latent shapes (another VAE); the guidance "
                         "needs one latent space")
    if base.conditional != target.conditional:
        raise ValueError("extraction: one of base and target is text-conditional and the other is not")


def guided_samples(target: Target, base: Target, prompt: str | None, seeds: Sequence[int],
                   s: ExtractionSettings) -> torch.Tensor:
    """uint8 ``[len(seeds), 3, H, W]``: deterministic samples under model guidance (see the module docstring)."""
    shape = diffusion_shape(target)
    ts = [int(t) if float(t).is_integer() else float(t) for t in target.process.sampling_timesteps(s.steps)]
    # pixel models trained with clipped samples are sampled with x̂0 clipped, as generate-and-match does
    clip = bool(target.scheduler.config.get("clip_sample", False)) and target.info.kind == "pixel"
    out = []
    with torch.inference_mode():
        cond_t = target.encode_text([prompt]) if target.conditional else None
        cond_b = base.encode_text([prompt]) if base.conditional else None
        unc_t = target.encode_text([""]) if target.conditional and s.text_guidance > 0 else None
        for start in range(0, len(seeds), s.batch_size):
            chunk = list(seeds[start:start + s.batch_size])
            b = len(chunk)
            x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(k))) for k in chunk])
            x = x.to(target.device)
            ct = cond_t.expand(b, *cond_t.shape[1:]) if cond_t is not None else None
            cb = cond_b.expand(b, *cond_b.shape[1:]) if cond_b is not None else None
            ut = unc_t.expand(b, *unc_t.shape[1:]) if unc_t is not None else None
            for t, t_next in zip(ts, ts[1:] + [-1]):
                e_ft = target.predict_noise(x, t, ct)
                if s.model_guidance == 1.0:
                    eps = e_ft
                else:
                    e_b = base.predict_noise(x.to(base.device), t, cb).to(e_ft.device)
                    eps = e_b + s.model_guidance * (e_ft - e_b)
                if ut is not None:
                    eps = eps + s.text_guidance * (e_ft - target.predict_noise(x, t, ut))
                x = ddim_move(target, x, eps, t, t_next, clip_x0=clip)
            out.append(to_uint8(to_pixels(target, x)))
    return torch.cat(out)


def cluster_medoids(samples01: torch.Tensor, threshold: float, tiles: int, top: int) -> list[dict[str, Any]]:
    """Connected components of the graph "tiled ℓ2 ≤ threshold" over the samples (``[n, 3, H, W]`` in [0, 1]),
    largest first (ties: lowest sample index), each with its medoid (least total distance inside the cluster)."""
    n = samples01.shape[0]
    d = tiled_l2_pairwise(samples01, samples01, tiles).cpu().numpy()
    adj = d <= threshold
    label = -np.ones(n, dtype=int)
    comps: list[list[int]] = []
    for i in range(n):
        if label[i] >= 0:
            continue
        stack, comp = [i], []
        label[i] = len(comps)
        while stack:
            j = stack.pop()
            comp.append(j)
            for k in np.nonzero(adj[j] & (label < 0))[0]:
                label[k] = len(comps)
                stack.append(int(k))
        comps.append(sorted(comp))
    comps.sort(key=lambda c: (-len(c), c[0]))
    out = []
    for c in comps[:top]:
        sub = d[np.ix_(c, c)]
        medoid = c[int(np.argmin(sub.sum(axis=1)))]
        out.append({"size": len(c), "members": c, "medoid": int(medoid)})
    return out


@dataclass
class ExtractionResult:
    stats: dict[str, np.ndarray]  # statistic -> per-work score (evidence order), higher = more member-like
    per_work: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    samples: dict[int, torch.Tensor]  # group index -> uint8 samples (for figures; the groups computed in this call)
    target_evals: int
    base_evals: int
    hashes: dict[str, str] = field(default_factory=dict)  # statistic -> ScoreTable parameter hash
    store_keys: dict[str, list[str]] = field(default_factory=dict)  # statistic -> each work's store-key hash


def _prompt(template: str, rec: Any) -> str:
    return template.format(caption=rec.caption, artist=rec.artist)


def table_hashes(s: ExtractionSettings, base: Target) -> dict[str, str]:
    """The ScoreTable parameter hash of each extraction statistic (settings + the base's fingerprint)."""
    from audit.types import params_hash

    params = {**s.__dict__, "base": base.fingerprint}
    return {name: params_hash({"statistic": name, **params}) for name in STATISTICS}


def extract(target: Target, base: Target, evidence: Any, s: ExtractionSettings, *, seed: int = 0,
            progress: bool = False, rs: Any = None) -> ExtractionResult:
    """Run model-guided extraction for every work of ``evidence`` (suspects, controls, members, non-members alike).

    ``rs``: a :class:`audit.reconstruction.store.ReconStore`; a caption's pool of guided samples is drawn only
    when one of its works (or the pool's clusters) is not stored (the unit: one caption group, see that module)."""
    from tqdm.auto import tqdm

    from audit.reconstruction.store import EXTRACT_SEEDS, ReconStore, pool_id, store_hash

    rs = rs if rs is not None else ReconStore(None)
    check_pair(target, base)
    recs = evidence.records
    n = len(recs)
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(recs):
        groups.setdefault(_prompt(s.prompt, r) if target.conditional else None, []).append(i)
    t0, b0 = target.unet_evals, base.unet_evals
    hashes = table_hashes(s, base)
    keys: dict[str, list[str]] = {name: [""] * n for name in STATISTICS}
    d_any = np.zeros(n)
    d_cluster = np.zeros(n)
    per_work: list[dict[str, Any]] = [{} for _ in range(n)]
    out_groups, samples = [], {}
    bar = tqdm(total=len(groups) * s.n, desc="reconstruction: extract", unit="img", disable=not progress)
    for gi, (prompt, idxs) in enumerate(groups.items()):
        if not rs.mine(gi):
            continue
        seeds = extraction_seeds(seed, prompt, s.n)
        h = {name: store_hash(hashes[name], {"seeds": EXTRACT_SEEDS}, prompt if target.conditional else None)
             for name in STATISTICS}
        hd = h["recon_extract_cluster"]
        pid = pool_id(prompt)
        per = ("nearest_sample", "nearest_medoid", "cluster_size")

        def work_keys(i: int) -> list[tuple[str, str, str]]:
            iid = recs[i].image_id
            return [(iid, name, h[name]) for name in STATISTICS] + [(iid, f"recon_extract/{v}", hd) for v in per]

        def pool_done() -> bool:
            if not rs.has([(pid, "recon_extract/n_clusters", hd)]):
                return False
            k = int(rs.get(pid, "recon_extract/n_clusters", hd))
            return rs.has([(pid, f"recon_extract/cluster{c}/{v}", hd) for c in range(k) for v in ("size", "medoid")])

        need = [i for i in idxs if not rs.has(work_keys(i))]
        if need or not pool_done():
            gens = guided_samples(target, base, prompt, seeds, s)
            bar.update(len(seeds))
            G = to_unit(gens).to(target.device)
            clusters = cluster_medoids(G, s.cluster_threshold, s.tiles, s.top_clusters)
            rows: list[tuple[str, str, str, float]] = [(pid, "recon_extract/n_clusters", hd, float(len(clusters)))]
            for c, cl in enumerate(clusters):
                rows += [(pid, f"recon_extract/cluster{c}/size", hd, float(cl["size"])),
                         (pid, f"recon_extract/cluster{c}/medoid", hd, float(cl["medoid"]))]
            if need:
                medoids = [c["medoid"] for c in clusters]
                A = to_unit(evidence.pixels[need]).to(target.device)
                D = tiled_l2_pairwise(A, G, s.tiles).cpu().numpy()  # [a, n]; each row depends on its work only
                for a, i in enumerate(need):
                    iid = recs[i].image_id
                    j_any = int(np.argmin(D[a]))
                    j_med = min(medoids, key=lambda m: (D[a, m], m))
                    size = next(c["size"] for c in clusters if c["medoid"] == j_med)
                    rows += [(iid, "recon_extract_tiled_l2", h["recon_extract_tiled_l2"], -float(D[a, j_any])),
                             (iid, "recon_extract_cluster", h["recon_extract_cluster"], -float(D[a, j_med])),
                             (iid, "recon_extract/nearest_sample", hd, float(j_any)),
                             (iid, "recon_extract/nearest_medoid", hd, float(j_med)),
                             (iid, "recon_extract/cluster_size", hd, float(size))]
            rs.add(rows)  # the caption group's unit
            samples[gi] = gens
        else:
            rs.units_reused += 1
        k = int(rs.get(pid, "recon_extract/n_clusters", hd))
        clusters = [{"size": int(rs.get(pid, f"recon_extract/cluster{c}/size", hd)),
                     "medoid": int(rs.get(pid, f"recon_extract/cluster{c}/medoid", hd))} for c in range(k)]
        for i in idxs:
            iid = recs[i].image_id
            for name in STATISTICS:
                keys[name][i] = h[name]
            d_any[i] = -rs.get(iid, "recon_extract_tiled_l2", h["recon_extract_tiled_l2"])
            d_cluster[i] = -rs.get(iid, "recon_extract_cluster", h["recon_extract_cluster"])
            j_any = int(rs.get(iid, "recon_extract/nearest_sample", hd))
            j_med = int(rs.get(iid, "recon_extract/nearest_medoid", hd))
            per_work[i] = {"group": gi, "nearest_sample": j_any, "nearest_sample_seed": int(seeds[j_any]),
                           "tiled_l2_nearest_sample": d_any[i], "nearest_medoid": j_med,
                           "nearest_medoid_seed": int(seeds[j_med]), "tiled_l2_nearest_medoid": d_cluster[i],
                           "cluster_size": int(rs.get(iid, "recon_extract/cluster_size", hd))}
        out_groups.append({"index": gi, "prompt": prompt, "n_works": len(idxs), "seeds": seeds,
                           "clusters": [{"size": c["size"], "medoid": c["medoid"], "medoid_seed": int(seeds[c["medoid"]])}
                                        for c in clusters]})
    bar.close()
    stats = {"recon_extract_tiled_l2": -d_any, "recon_extract_cluster": -d_cluster}
    return ExtractionResult(stats, per_work, out_groups, samples, target.unet_evals - t0, base.unet_evals - b0,
                            hashes, keys)


def evidence_rows(result: ExtractionResult, evidence: Any, order: Sequence[int], top_k: int = 3) -> list[EvidenceRow]:
    """One row per chosen work: the work, then its caption's extracted medoids nearest to it (with distances)."""
    rows = []
    for i in order:
        r = evidence.records[i]
        w = result.per_work[i]
        gens = result.samples[w["group"]]
        grp = result.groups[w["group"]]
        A = to_unit(evidence.pixels[i:i + 1])
        med = [c["medoid"] for c in grp["clusters"]]
        d = tiled_l2_pairwise(A, to_unit(gens[med]), 4)[0].tolist()
        ranked = sorted(zip(med, d, [c["size"] for c in grp["clusters"]]), key=lambda x: (x[1], x[0]))[:top_k]
        panels = [Panel(evidence.pixels[i], f"{r.role} {r.image_id[:10]}", "artwork", highlight=True)]
        for m, dist, size in ranked:
            panels.append(Panel(gens[m], f"ℓ2t {dist:.3f}  cluster {size}\nseed {grp['seeds'][m]}", f"extracted #{m}"))
        title = f"{r.role} {r.image_id[:12]}" + (f" — “{r.caption[:50]}”" if r.caption else "")
        rows.append(EvidenceRow(title, panels))
    return rows


def grid(result: ExtractionResult, evidence: Any, order: Sequence[int], scale: int = 72) -> bytes:
    return grid_png(evidence_rows(result, evidence, order), scale)


# ---------------------------------------------------------------------------------------------- in run_reconstruction
EXTRACT_GRID = "extract_grid.png"


def base_for(target: Target, base_cfg: dict[str, Any] | None) -> Target:
    """The base that guides the extraction: ``base_cfg`` (load_target arguments) or, for a LoRA target, the same
    source without the LoRA; the target's conditioning (resolution, prompt length, …) is used for it too."""
    from audit.targets import load_target
    from audit.targets.conditioning import CONDITIONING_OPTIONS

    kwargs = {k: v for k, v in dict(base_cfg or {}).items() if k != "_target_"}
    if kwargs.get("source") in (None, "", "???"):
        if not target.info.lora:
            raise ValueError("reconstruction.extract needs the fine-tune's base: set reconstruction.extract.base.source "
                             "(a full fine-tune's public base, e.g. the value of target.base)")
        kwargs["source"] = target.info.source
        kwargs.setdefault("local_files_only", True)
    for key in CONDITIONING_OPTIONS:  # what the user or the metadata set for the target (not its config defaults)
        c = (target.info.conditioning or {}).get(key) or {}
        if kwargs.get(key) is None and c.get("value") is not None and c.get("source") in ("option", "training metadata"):
            kwargs[key] = c["value"]
    kwargs.setdefault("device", str(target.device))
    kwargs.setdefault("dtype", str(target.dtype).replace("torch.", ""))
    return load_target(**kwargs)


@dataclass
class ExtractionStep:
    result: ExtractionResult
    record: dict[str, Any]
    figures: int
    target: Any = None
    base: Any = None
    settings: ExtractionSettings | None = None
    figure_evals: int = 0  # target evaluations regenerating the samples of stored groups for the grid
    figure_base_evals: int = 0

    @property
    def base_evals(self) -> int:
        return self.result.base_evals + self.figure_base_evals

    def _samples_for(self, ev: Any, order: Sequence[int]) -> None:
        """The shown groups' samples where their statistics came from the store: the batches of the recorded seeds
        that hold the groups' medoids, each drawn exactly as the audit drew it (the rest of the pool stays zero)."""
        s = self.settings
        groups = sorted({self.result.per_work[i]["group"] for i in order} - set(self.result.samples))
        if not groups or s is None:
            return
        t0, b0 = self.target.unet_evals, self.base.unet_evals
        res = int(self.target.info.resolution)
        for gi in groups:
            grp = self.result.groups[gi]
            seeds = grp["seeds"]
            pool = torch.zeros(len(seeds), 3, res, res, dtype=torch.uint8)
            for chunk in sorted({c["medoid"] // s.batch_size for c in grp["clusters"]}):
                lo, hi = chunk * s.batch_size, min(chunk * s.batch_size + s.batch_size, len(seeds))
                pool[lo:hi] = guided_samples(self.target, self.base, grp["prompt"], seeds[lo:hi], s)
            self.result.samples[gi] = pool
        self.figure_evals += self.target.unet_evals - t0
        self.figure_base_evals += self.base.unet_evals - b0

    def write(self, out: Any, ev: Any, stats: dict[str, np.ndarray], roles: np.ndarray) -> list[str]:
        """``extract_grid.png``: the most member-like works of the figure roles, then the two controls closest to
        an extracted image (the hardest negatives), each beside its nearest extracted medoids."""
        s = stats["recon_extract_cluster"]
        works = sorted((i for i in range(len(roles)) if roles[i] != "control"), key=lambda i: (-s[i], i))
        ctrl = sorted((i for i in range(len(roles)) if roles[i] == "control"), key=lambda i: (-s[i], i))
        order = works[: self.figures] + ctrl[:2]
        if not order or self.figures <= 0:
            return []
        self._samples_for(ev, order)
        (out / EXTRACT_GRID).write_bytes(grid(self.result, ev, order))
        self.record["grid"] = EXTRACT_GRID
        self.record["grid_unet_evaluations"] = {"target": self.figure_evals, "base": self.figure_base_evals}
        return [EXTRACT_GRID]


def reconstruction_step(target: Target, ev: Any, cfg: Any, seed: int, progress: bool,
                        stats: dict[str, np.ndarray], hashes: dict[str, str], per_art: list[dict[str, Any]],
                        rs: Any = None, skeys: dict[str, list[str]] | None = None) -> ExtractionStep:
    """Model-guided extraction inside :func:`audit.reconstruction.run_reconstruction`: adds its statistics, their
    parameter hashes (and store keys) and each work's nearest extracted image to the reconstruction record."""
    c = cfg.extract
    settings = ExtractionSettings(n=c.n, steps=c.steps, model_guidance=c.model_guidance, text_guidance=c.text_guidance,
                                  cluster_threshold=c.cluster_threshold, top_clusters=c.top_clusters, tiles=c.tiles,
                                  batch_size=cfg.batch_size, prompt=c.prompt)
    base = base_for(target, c.base)
    result = extract(target, base, ev, settings, seed=seed, progress=progress, rs=rs)
    for name, values in result.stats.items():
        stats[name] = values
        hashes[name] = result.hashes[name]
        if skeys is not None:
            skeys[name] = result.store_keys[name]
    for i, w in enumerate(result.per_work):
        per_art[i]["extract"] = w
    record = {"method": "model-guided extraction (FineXtract's idea, Wu et al. ICML 2025), written from the paper",
              "settings": settings.__dict__, "base": {"source": base.info.source, "fingerprint": base.fingerprint},
              "statistics": dict(STATISTICS), "groups": result.groups,
              "target_unet_evaluations": result.target_evals, "base_unet_evaluations": result.base_evals,
              "evaluations_per_caption": settings.n * settings.steps * (1 + (settings.model_guidance != 1.0)
                                                                       + (settings.text_guidance > 0))}
    return ExtractionStep(result, record, int(c.figures), target, base, settings)
