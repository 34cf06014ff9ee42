"""Reconstruction tests: show the model reproducing the artwork, calibrated against controls.

Generate-and-match (Carlini et al., USENIX Security 2023), inpainting (RePaint) and img2img
reconstruction, each turned into per-artwork statistics in the ordinary ScoreTable format (higher = more
member-like) so the analysis compares them with the controls like any membership score; plus evidence
figures and the seeds to regenerate every image. Entry point: :func:`run_reconstruction`.
"""
from audit.reconstruction.config import (
    MASK_KINDS,
    FigureConfig,
    GenerateConfig,
    Img2ImgConfig,
    InpaintConfig,
    ReconstructionConfig,
)
from audit.reconstruction.inpaint import latent_mask, make_masks, repaint
from audit.reconstruction.metrics import masked_rms, max_clique, ssim, tiled_l2, tiled_l2_pairwise, to_unit
from audit.reconstruction.report import reconstruction_context, write_fragment
from audit.reconstruction.runner import STATISTICS, ReconstructionOutput, run_reconstruction
from audit.reconstruction.sampling import GenerationRecord, generate, regenerate

__all__ = [
    "MASK_KINDS",
    "FigureConfig",
    "GenerateConfig",
    "Img2ImgConfig",
    "InpaintConfig",
    "ReconstructionConfig",
    "ReconstructionOutput",
    "GenerationRecord",
    "STATISTICS",
    "generate",
    "latent_mask",
    "make_masks",
    "masked_rms",
    "max_clique",
    "reconstruction_context",
    "regenerate",
    "repaint",
    "run_reconstruction",
    "ssim",
    "tiled_l2",
    "tiled_l2_pairwise",
    "to_unit",
    "write_fragment",
]
