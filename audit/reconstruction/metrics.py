"""Image distances for reconstruction evidence: Carlini's tiled L2, SSIM, masked error, cliques.

All functions take images as float tensors in **[0, 1]** (``[N, C, H, W]``), the range in which
Carlini et al. state their thresholds; :func:`to_unit` converts from the models' [-1, 1] or from uint8.

Distances follow Carlini et al., "Extracting Training Data from Diffusion Models" (USENIX Security 2023):
the normalised Euclidean distance ``ℓ2(a, b) = sqrt(Σ (a_i − b_i)² / d)`` (the root-mean-square
pixel difference, so 0 = identical and 1 = black vs white everywhere), and for image comparisons its
*tiled* variant: split both images into a grid of non-overlapping tiles (their Stable Diffusion setting:
16 tiles of 128×128 on 512×512 images, i.e. a 4×4 grid) and take the **maximum** over tiles of the
per-tile ℓ2. A generation that copies the artwork everywhere but one region is then still far from it,
and a generation that only shares the background is not counted as a copy.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "to_unit",
    "tiled_l2",
    "tiled_l2_pairwise",
    "ssim",
    "masked_rms",
    "max_clique",
]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images → float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    return images.float().add(1.0).mul(0.5).clamp(0.0, 1.0)


def _tile_bounds(size: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous, non-overlapping ranges covering ``0..size`` (equal when ``n`` divides ``size``)."""
    if not 1 <= n <= size:
        raise ValueError(f"cannot split {size} pixels into {n} tiles")
    edges = [round(i * size / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _tile_sq_means(diff_sq: torch.Tensor, tiles: int) -> torch.Tensor:
    """Mean of ``diff_sq`` (``[..., C, H, W]``) over each tile → ``[..., tiles*tiles]``."""
    h, w = diff_sq.shape[-2:]
    out = []
    for y0, y1 in _tile_bounds(h, tiles):
        for x0, x1 in _tile_bounds(w, tiles):
            out.append(diff_sq[..., y0:y1, x0:x1].mean(dim=(-3, -2, -1)))
    return torch.stack(out, dim=-1)


def tiled_l2(a: torch.Tensor, b: torch.Tensor, tiles: int = 4) -> torch.Tensor:
    """Carlini's tiled ℓ2 between matching images ``a[i]`` and ``b[i]`` (both ``[N, C, H, W]`` in [0, 1]).

    ``max over tiles t of sqrt(mean over the tile's pixels and channels of (a − b)²)`` with a
    ``tiles × tiles`` grid. ``tiles=1`` is the plain normalised ℓ2 (RMS difference).
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    d = (a.double() - b.double()).pow(2)
    return _tile_sq_means(d, tiles).amax(dim=-1).sqrt().float()


def tiled_l2_pairwise(
    a: torch.Tensor, b: torch.Tensor, tiles: int = 4, max_elements: int = 1 << 25
) -> torch.Tensor:
    """``[len(a), len(b)]`` matrix of :func:`tiled_l2` between every ``a[i]`` and ``b[j]``.

    Differences are taken directly (not through ``|a|² + |b|² − 2ab``, which cancels catastrophically
    for near-copies, exactly the case that matters), in chunks of at most ``max_elements`` values.
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    n, m = a.shape[0], b.shape[0]
    out = torch.empty(n, m, dtype=torch.float32, device=a.device)
    per_pair = max(1, a[0].numel())
    cb = max(1, min(m, max_elements // per_pair))
    ca = max(1, min(n, max_elements // (per_pair * cb)))
    for i in range(0, n, ca):
        ai = a[i:i + ca].double().unsqueeze(1)
        for j in range(0, m, cb):
            bj = b[j:j + cb].to(a.device).double().unsqueeze(0)
            d = (ai - bj).pow(2)
            out[i:i + ca, j:j + cb] = _tile_sq_means(d, tiles).amax(dim=-1).sqrt().float()
    return out


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM (Wang et al., 2004) between matching images, ``[N]``; images ``[N, C, H, W]`` in [0, 1].

    The standard setting: Gaussian window (σ = 1.5, 11×11, truncated at 3.5σ), K1 = 0.01, K2 = 0.03,
    population covariances, statistics computed per channel and averaged over the window positions that
    lie fully inside the image and over channels. This equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=0)`` (checked in the tests). Images smaller
    than the window use the largest odd window that fits (scikit-image refuses them).
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    win = 2 * int(3.5 * sigma + 0.5) + 1
    side = min(a.shape[-2:])
    if side < win:
        win = side if side % 2 == 1 else side - 1
    if win < 1:
        raise ValueError("images too small for SSIM")
    g = _gaussian_window(win, sigma, a.device)
    c = a.shape[1]
    kh = g.view(1, 1, win, 1).expand(c, 1, win, 1)
    kw = g.view(1, 1, 1, win).expand(c, 1, 1, win)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)

    x, y = a.double(), b.double()
    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx * mx
    vy = filt(y * y) - my * my
    cxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).float()


def masked_rms(pred: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMS difference in [0, 1] units over the masked pixels only, ``[N]``.

    ``mask`` is ``[N, 1, H, W]`` (or broadcastable), 1 where the model had to fill in the image. Pixels
    outside the mask do not enter the value at all, so a reconstruction cannot look good by copying the
    part of the artwork it was shown.
    """
    m = mask.to(pred.dtype).expand_as(pred)
    n = m.flatten(1).sum(1)
    if bool((n == 0).any()):
        raise ValueError("empty mask: nothing was reconstructed")
    err = ((pred.double() - reference.double()).pow(2) * m.double()).flatten(1).sum(1)
    return (err / n.double()).sqrt().float()


def max_clique(adjacency: torch.Tensor | Sequence[Sequence[bool]]) -> list[int]:
    """Indices of a maximum clique of an undirected graph given as a boolean adjacency matrix.

    Exact (``networkx.max_weight_clique``, branch and bound, unit weights). Carlini et al. flag a prompt
    as memorised when the generations within the distance threshold of each other form a large clique;
    exactness matters less than determinism here, and branch and bound is fast on the dense graphs that
    memorised prompts produce and on the sparse ones that others produce.
    """
    import networkx as nx

    adj = torch.as_tensor(adjacency, dtype=torch.bool)
    n = int(adj.shape[0])
    if n == 0:
        return []
    g = nx.Graph()
    g.add_nodes_from(range(n))
    iu = torch.triu_indices(n, n, offset=1)
    keep = adj[iu[0], iu[1]] & adj[iu[1], iu[0]]
    g.add_edges_from(zip(iu[0][keep].tolist(), iu[1][keep].tolist()))
    clique, _ = nx.max_weight_clique(g, weight=None)
    return sorted(int(i) for i in clique)

