"""Matching statistics of the outputs target: for each work, its best match among the collected outputs.

Each is an ordinary :class:`~audit.attacks.base.Attack` (registered in :data:`STATISTICS`, configured in
``configs/attack/out_*.yaml``): one ScoreTable row per work, **higher = more reproduced** (distances negated), so
the existing set tests, per-work conformal p-values, gates and report compare suspects with controls exactly as
for membership scores. A score is the best match over every output; it says how closely *some* output resembles
the work. Resemblance alone is not training — a genre, a motif or an imitation can be resembled — which is why a
suspect's score means something only against the controls' scores for the same outputs (the set-level test and
the per-work p-values), and why the blind baseline gate checks that suspects and controls are not separable
without the outputs.

============== ========================================================== =====================================
name           statistic (best over outputs)                              finds
============== ========================================================== =====================================
out_sift       RANSAC inliers of SIFT matches (similarity transform)      partial copies; crop, scale, rotation
out_orb        RANSAC inliers of ORB matches                              the same, binary features (faster)
out_phash      −normalised Hamming distance of 256-bit DCT pHashes        whole-picture near-copies
out_ssim       SSIM after alignment (SIFT transform, else picture region) close reproductions
out_tiled_l2   −tiled ℓ2 (Carlini et al. 2023) after the same alignment   close reproductions, worst tile
out_embed      cosine similarity of a local image encoder (opt-in)        semantic / re-drawn copies
out_style      mean of the top-k style similarities (circumstantial)      shared palette and brushwork only
============== ========================================================== =====================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from audit.attacks.base import Attack, AttackSetupError, Batch

__all__ = ["OutputStatistic", "SiftInliers", "OrbInliers", "PHashMatch", "AlignedSSIM", "AlignedTiledL2",
           "EmbeddingMatch", "StyleMatch", "STATISTICS", "OUTPUT_DEFAULTS"]


@dataclass
class OutputStatistic(Attack):
    """Base class: a model-free statistic over the outputs of an :class:`~audit.outputs.target.OutputsTarget`."""

    access: ClassVar[str] = "outputs"
    #: how the report qualifies the statistic ("direct": a copy of the work; "circumstantial": style only)
    evidence_kind: ClassVar[str] = "direct"

    def check_target(self, target: Any) -> None:
        if target.access != "outputs":
            raise AttackSetupError(f"{self.name} compares works with collected outputs; use target=outputs "
                                   "(target.outputs=<manifest or folder>)")

    def evaluations_per_image(self) -> int:
        return 0  # no model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "evidence_kind": self.evidence_kind}

    def best(self, target: Any, image_id: str) -> tuple[float, int | None, dict[str, Any]]:  # pragma: no cover
        """(score, index of the best output, details)."""
        raise NotImplementedError

    def score(self, target: Any, batch: Batch) -> torch.Tensor:
        name = target.attack_name(self)
        out = []
        for iid in batch.image_ids:
            s, j, details = self.best(target, iid)
            target.record_match(name, iid, s, j, details)
            out.append(s)
        return torch.tensor(out, dtype=torch.float64)


@dataclass
class SiftInliers(OutputStatistic):
    """Local features + geometric check (Lowe 2004; RANSAC, Fischler & Bolles 1981); copy detection as used by
    Somepalli et al., CVPR 2023, to find replication in diffusion outputs."""

    name = "out_sift"
    paper = "SIFT (Lowe 2004) + RANSAC (Fischler & Bolles 1981); replication search as in Somepalli et al., CVPR 2023"
    detector: ClassVar[str] = "sift"
    ratio: float = 0.8
    reproj: float = 4.0

    def best(self, target, image_id):
        best_i, best_m = None, None
        for i in range(target.n_outputs):
            m = target.feature_match(image_id, i, self.detector, ratio=self.ratio, reproj=self.reproj)
            if best_m is None or m.inliers > best_m.inliers:
                best_i, best_m = i, m
        if best_m is None:
            return 0.0, None, {}
        return float(best_m.inliers), best_i, best_m.to_dict()


@dataclass
class OrbInliers(SiftInliers):
    name = "out_orb"
    paper = "ORB (Rublee et al., ICCV 2011) + RANSAC (Fischler & Bolles 1981)"
    detector: ClassVar[str] = "orb"


@dataclass
class PHashMatch(OutputStatistic):
    """DCT perceptual hash (ImageHash's pHash) of the work vs each output's picture region and whole frame."""

    name = "out_phash"
    paper = "perceptual hashing (pHash; Zauner 2010), ImageHash implementation"
    hash_size: int = 16

    def best(self, target, image_id):
        wh = target.work_phash(image_id, self.hash_size)
        best = (float("inf"), None, "")
        for i in range(target.n_outputs):
            for label, h in target.output_phashes(i, self.hash_size):
                d = float(wh - h) / float(wh.hash.size)
                if d < best[0]:
                    best = (d, i, label)
        return -best[0], best[1], {"distance": best[0], "candidate": best[2]}


@dataclass
class AlignedSSIM(OutputStatistic):
    """SSIM (Wang et al. 2004) after alignment by the SIFT transform (else the detected picture region)."""

    name = "out_ssim"
    paper = "SSIM (Wang et al., IEEE TIP 2004) after SIFT/RANSAC alignment"
    size: int = 64
    tiles: int = 4
    min_inliers: int = 8
    key: ClassVar[str] = "ssim"
    sign: ClassVar[float] = 1.0

    def best(self, target, image_id):
        best = (-float("inf"), None, {})
        for i in range(target.n_outputs):
            sim = target.aligned(image_id, i, size=self.size, tiles=self.tiles, min_inliers=self.min_inliers)
            v = self.sign * sim[self.key]
            if np.isfinite(v) and v > best[0]:
                best = (v, i, sim)
        return (best[0] if np.isfinite(best[0]) else (-1.0 if self.sign > 0 else -1e3)), best[1], best[2]


@dataclass
class AlignedTiledL2(AlignedSSIM):
    name = "out_tiled_l2"
    paper = "tiled ℓ2 (Carlini et al., USENIX Security 2023) after SIFT/RANSAC alignment"
    key: ClassVar[str] = "tiled_l2"
    sign: ClassVar[float] = -1.0


@dataclass
class EmbeddingMatch(OutputStatistic):
    """Cosine similarity of a local image encoder (CLIP / DINOv2 / SSCD-style), loaded offline from ``model``
    (a folder; safetensors only, never remote code, never a download)."""

    name = "out_embed"
    paper = "embedding copy detection (SSCD, Pizzi et al., CVPR 2022; DINOv2 / CLIP as in Somepalli et al., CVPR 2023)"
    model: str | None = None

    def check_target(self, target: Any) -> None:
        super().check_target(target)
        from pathlib import Path

        if not self.model or not Path(str(self.model)).is_dir():
            raise AttackSetupError(f"out_embed needs attack.out_embed.model = a local folder with an image encoder "
                                   f"(nothing is downloaded); got {self.model!r}")

    def best(self, target, image_id):
        w = target.embedding(self.model, ("work", image_id))
        sims = [float(w @ target.embedding(self.model, ("output", i))) for i in range(target.n_outputs)]
        j = int(np.argmax(sims))
        return sims[j], j, {"cosine": sims[j]}


@dataclass
class StyleMatch(OutputStatistic):
    """ArtistAuditor's idea (WWW 2025) at its simplest: do the outputs share this work's style (palette, edge
    directions)? Circumstantial: style is not protected and is shared by imitations; with controls by *other*
    artists it asks whether the outputs resemble this artist more than others."""

    name = "out_style"
    paper = "style-level audit after ArtistAuditor (Du et al., WWW 2025); model-free colour/orientation histograms"
    evidence_kind: ClassVar[str] = "circumstantial"
    top_k: int = 3

    def best(self, target, image_id):
        w = target.work_style(image_id)
        sims = np.array([float(np.minimum(w[:128], o[:128]).sum() * 0.5 + np.minimum(w[128:], o[128:]).sum() * 0.5)
                         for o in target.output_styles()])
        k = max(1, min(int(self.top_k), len(sims)))
        top = np.sort(sims)[::-1][:k]
        return float(top.mean()), int(np.argmax(sims)), {"top_k": [round(float(x), 5) for x in top]}


#: every matching statistic by name (contract tests enumerate this registry)
STATISTICS: dict[str, type[OutputStatistic]] = {c.name: c for c in (SiftInliers, OrbInliers, PHashMatch, AlignedSSIM,
                                                                    AlignedTiledL2, EmbeddingMatch, StyleMatch)}

#: the statistics an outputs audit runs when the user chose none (configs/attack/<name>.yaml); the first is primary
OUTPUT_DEFAULTS = ("out_sift", "out_orb", "out_phash", "out_ssim", "out_tiled_l2", "out_style")
