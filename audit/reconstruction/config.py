"""Typed configuration of the reconstruction tests (the ``reconstruction`` Hydra group).

The Hydra files in ``configs/reconstruction/`` are plain mappings read by
:meth:`ReconstructionConfig.from_any`; unknown keys are an error (a typo must not silently fall back
to a default in an audit).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from audit.types import ROLES

__all__ = ["GenerateConfig", "InpaintConfig", "Img2ImgConfig", "ExtractConfig", "FigureConfig", "ReconstructionConfig",
           "MASK_KINDS"]

MASK_KINDS: tuple[str, ...] = ("half", "centre", "blocks")


@dataclass
class GenerateConfig:
    """Generate-and-match (Carlini et al., USENIX Security 2023).

    n: generations per prompt (text-conditional targets: per distinct prompt; unconditional targets: one
        shared pool of ``n`` generations every artwork is matched against). Carlini et al. used 500.
    steps: deterministic DDIM steps per generation.
    prompt: template for the prompt of each artwork; ``{caption}`` and ``{artist}`` are filled in from the
        manifest (e.g. ``"a painting in the style of {artist}"``). Ignored by unconditional targets.
    guidance_scale: classifier-free guidance (text-conditional targets; 1 = conditional branch only).
    eta: DDIM η (0 = deterministic; > 0 draws step noise from each image's own seed).
    tiles: tile grid per side of Carlini's tiled ℓ2 (4 → 16 tiles, as in their Stable Diffusion setting).
    clique_threshold: tiled-ℓ2 distance (images in [0, 1]) under which two images count as near-identical
        (edges of Carlini's clique graph). Calibrate it for the model; the statistics below do not depend
        on it, only the clique count does.
    min_clique: clique size from which an artwork is flagged (Carlini et al.: 10 of 500 generations).
    ssim_top_k: SSIM is computed against this many nearest generations (by tiled ℓ2); null = all.
    embedding: optional local folder of a CLIP or DINOv2 image encoder (transformers layout); adds the
        maximum cosine similarity of embeddings as a statistic.
    """

    enabled: bool = True
    n: int = 64
    steps: int = 25
    prompt: str = "{caption}"
    guidance_scale: float = 7.5
    eta: float = 0.0
    tiles: int = 4
    clique_threshold: float = 0.15
    min_clique: int = 10
    ssim_top_k: int | None = 16
    embedding: str | None = None
    embedding_allow_pickle: bool = False


@dataclass
class InpaintConfig:
    """Inpainting reconstruction: RePaint (Lugmayr et al., CVPR 2022) on the target's own denoiser.

    masks: which parts to hide — ``half`` (right half), ``centre`` (central square, ``centre_size`` of
        the side), ``blocks`` (``n_blocks`` random squares of ``block_size`` of the side, placed from the
        run seed and the image hash).
    steps: denoising steps from pure noise; resample: RePaint's U (1 = no resampling, i.e. plain
        known-region replacement); n: independent repeats averaged per image and mask.
    """

    enabled: bool = True
    masks: list[str] = field(default_factory=lambda: ["half", "centre", "blocks"])
    steps: int = 25
    resample: int = 2
    n: int = 1
    eta: float = 0.0
    guidance_scale: float = 1.0
    centre_size: float = 0.5
    n_blocks: int = 4
    block_size: float = 0.25


@dataclass
class Img2ImgConfig:
    """img2img reconstruction (SDEdit-style): noise the artwork to ``strength`` · T, denoise with ``steps``
    DDIM steps (the same :func:`audit.attacks.rediffuse.img2img` the ReDiffuse attack uses), ``n``
    variations; statistic = −mean tiled ℓ2 of the variations to the artwork."""

    enabled: bool = True
    strength: float = 0.5
    steps: int = 10
    n: int = 2


@dataclass
class ExtractConfig:
    """Model-guided extraction (FineXtract's idea; :mod:`audit.reconstruction.extract`): ``n`` samples per distinct
    caption guided along (fine-tune − base) with weight ``model_guidance``, clustered, matched to every work.
    ``base``: load_target arguments of the fine-tune's base (null / no ``source``: a LoRA target's own source
    without the LoRA; a full fine-tune needs ``base.source``, e.g. ``${target.base}``). Off by default."""

    enabled: bool = False
    n: int = 16
    steps: int = 20
    model_guidance: float = 3.0
    text_guidance: float = 0.0
    cluster_threshold: float = 0.12
    top_clusters: int = 8
    tiles: int = 4
    prompt: str = "{caption}"
    base: dict[str, Any] | None = None
    figures: int = 8  # works in extract_grid.png (most member-like suspects, + 2 controls)


@dataclass
class FigureConfig:
    """Evidence figures: which artworks get a row (``roles``; when none of them is present the first
    non-control role present is used), at most ``max_items`` (most member-like first), plus the
    ``controls`` most member-like controls for contrast (the hardest negatives, not typical ones), each
    with its ``top_k`` closest generations; ``scale`` = pixels per displayed image side
    (nearest-neighbour upscaling)."""

    enabled: bool = True
    roles: list[str] = field(default_factory=lambda: ["suspect"])
    max_items: int = 16
    controls: int = 2
    top_k: int = 4
    scale: int = 96


@dataclass
class ReconstructionConfig:
    enabled: bool = False
    roles: list[str] = field(default_factory=lambda: list(ROLES))
    batch_size: int = 32
    calibration_fpr: float = 0.05  # "reconstructed" = beyond the controls' (1 − this) quantile (JSON summary)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    img2img: Img2ImgConfig = field(default_factory=Img2ImgConfig)
    figures: FigureConfig = field(default_factory=FigureConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def __post_init__(self) -> None:
        bad = sorted(set(self.roles) - set(ROLES))
        if bad:
            raise ValueError(f"reconstruction.roles: unknown roles {bad}; choose from {list(ROLES)}")
        bad = sorted(set(self.inpaint.masks) - set(MASK_KINDS))
        if bad:
            raise ValueError(f"reconstruction.inpaint.masks: unknown masks {bad}; choose from {list(MASK_KINDS)}")
        if self.generate.n < 1 or self.generate.steps < 1:
            raise ValueError("reconstruction.generate: n and steps must be ≥ 1")
        if not 0.0 < self.img2img.strength <= 1.0:
            raise ValueError(f"reconstruction.img2img.strength must be in (0, 1], got {self.img2img.strength}")
        if not 0.0 < self.calibration_fpr < 1.0:
            raise ValueError(f"reconstruction.calibration_fpr must be in (0, 1), got {self.calibration_fpr}")
        if self.inpaint.resample < 1 or self.inpaint.n < 1 or self.img2img.n < 1:
            raise ValueError("reconstruction: inpaint.resample, inpaint.n and img2img.n must be ≥ 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_any(cls, cfg: Any) -> "ReconstructionConfig":
        """From a ReconstructionConfig, a dict or an OmegaConf DictConfig (``_target_`` keys ignored)."""
        if isinstance(cfg, cls):
            return cfg
        if cfg is None:
            return cls()
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        d = {k: v for k, v in dict(cfg).items() if k != "_target_"}
        subs = {"generate": GenerateConfig, "inpaint": InpaintConfig, "img2img": Img2ImgConfig, "figures": FigureConfig,
                "extract": ExtractConfig}
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in subs:
                kw[k] = _build(subs[k], v or {}, f"reconstruction.{k}")
            else:
                kw[k] = v
        return _build(cls, kw, "reconstruction", nested=True)


def _build(klass: type, d: dict[str, Any], where: str, nested: bool = False) -> Any:
    names = {f.name for f in fields(klass)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    return klass(**({k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()} if not nested else d))
