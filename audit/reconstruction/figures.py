"""Evidence grids: the artwork beside what the model produced, with the numbers underneath.

Built on ``matplotlib.figure.Figure`` with an explicit Agg canvas (no pyplot global state), images
shown with nearest-neighbour upscaling so that no smoothing makes two images look more alike than they
are. PNG metadata is fixed so the bytes do not depend on the matplotlib version.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["Panel", "EvidenceRow", "row_png", "grid_png", "save_png_image", "masked_preview"]


@dataclass
class Panel:
    image: torch.Tensor  # uint8 [3, H, W]
    label: str
    title: str = ""
    highlight: bool = False  # the artwork itself


@dataclass
class EvidenceRow:
    title: str
    panels: list[Panel] = field(default_factory=list)


def _hwc(img: torch.Tensor) -> np.ndarray:
    return img.detach().cpu().permute(1, 2, 0).numpy()


def masked_preview(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The artwork as the model saw it: hidden pixels (mask = 1) painted mid-grey with a hatch."""
    img = image.clone()
    m = mask.bool().expand_as(img)
    h, w = img.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    hatch = (((yy + xx) // max(1, h // 8)) % 2 == 0).to(torch.uint8)
    grey = (96 + 64 * hatch).to(torch.uint8).expand_as(img)
    img[m] = grey[m]
    return img


def _draw_rows(rows: list[EvidenceRow], scale: int) -> Figure:
    ncols = max(len(r.panels) for r in rows)
    w_in = max(2.0, ncols * (scale / 72 + 0.35))
    h_row = scale / 72 + 0.95
    fig = Figure(figsize=(w_in, h_row * len(rows) + 0.1))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row.panels):
                ax.set_axis_off()
                continue
            p = row.panels[c]
            ax.imshow(_hwc(p.image), interpolation="nearest")
            for s in ax.spines.values():
                s.set_edgecolor("#d95f02" if p.highlight else "#999999")
                s.set_linewidth(2.5 if p.highlight else 0.6)
            if p.title:
                ax.set_title(p.title, fontsize=7, pad=2)
            ax.set_xlabel(p.label, fontsize=6.5, labelpad=2)
        axes[r][0].annotate(row.title, xy=(0, 1), xycoords="axes fraction", xytext=(0, 16),
                            textcoords="offset points", fontsize=7.5, ha="left", va="bottom", fontweight="bold",
                            annotation_clip=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.5 / (h_row * len(rows)), bottom=0.55 / (h_row * len(rows)),
                        wspace=0.12, hspace=0.95)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def row_png(row: EvidenceRow, scale: int = 96) -> bytes:
    """One artwork's evidence row as PNG bytes."""
    return _png(_draw_rows([row], scale))


def grid_png(rows: list[EvidenceRow], scale: int = 96) -> bytes:
    """Several rows stacked into one grid (the overview figure) as PNG bytes."""
    if not rows:
        raise ValueError("no rows to draw")
    return _png(_draw_rows(rows, scale))


def save_png_image(image: torch.Tensor, path: str | Path) -> Path:
    """Save a uint8 ``[3, H, W]`` image losslessly at its own resolution (for exact comparison)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_hwc(image.to(torch.uint8))).save(p, format="PNG")
    return p
