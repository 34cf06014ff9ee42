"""Deterministic procedural "artists" for tests, benchmarks and the demo (no downloads).

Each artist has a fixed style (a motif and a palette); each artwork draws its own composition from a
numpy ``Generator`` seeded by ``(seed, artist, index)``. Works by one artist therefore look alike,
while each work carries individual detail (positions, angles, colours, a few small marks) so that a
membership attack has something specific to memorise and tell apart.

Geometry is defined on the unit square, so the same ``(artist, index, seed)`` rendered at a different
``size`` is the same composition at another resolution. Rendering is vectorised numpy: hundreds of
32×32 works take well under a second.
"""
from __future__ import annotations

import os
import zlib
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

__all__ = ["ARTISTS", "PALETTES", "make_artwork_folder", "render_artwork"]

# Palettes as RGB in [0, 1]. They are chosen to differ between artists in hue and brightness, so the
# style (not just the motif) identifies the artist, as it would for a human painter.
PALETTES: dict[str, np.ndarray] = {
    # warm reds, oranges, yellows and a dark brown
    "stripes": np.array(
        [[0.85, 0.20, 0.15], [0.95, 0.55, 0.10], [0.98, 0.85, 0.30], [0.45, 0.15, 0.10], [0.90, 0.40, 0.35]]
    ),
    # blues and teals on a cream ground (first colour = background)
    "circles": np.array(
        [[0.96, 0.93, 0.82], [0.10, 0.30, 0.65], [0.20, 0.60, 0.75], [0.05, 0.45, 0.45], [0.45, 0.70, 0.95]]
    ),
    # Mondrian: mostly white, primary accents (black lines are drawn separately)
    "grid": np.array(
        [[0.97, 0.97, 0.95], [0.97, 0.97, 0.95], [0.85, 0.10, 0.10], [0.10, 0.20, 0.70], [0.95, 0.85, 0.10]]
    ),
    # greens and purples, smoothly blended
    "waves": np.array(
        [[0.15, 0.45, 0.25], [0.45, 0.75, 0.35], [0.40, 0.20, 0.55], [0.70, 0.55, 0.85], [0.10, 0.25, 0.30]]
    ),
    # magentas and pinks around a dark centre
    "rings": np.array(
        [[0.25, 0.05, 0.20], [0.75, 0.15, 0.50], [0.95, 0.55, 0.75], [0.55, 0.10, 0.35], [0.98, 0.85, 0.90]]
    ),
}

_CAPTION_FORMS = ("a painting", "an artwork", "a picture", "a canvas", "an abstract painting")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates on the unit square, shape [size, size] each (y, x)."""
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 0.06) -> np.ndarray:
    """A palette colour with a small per-work shift, as real paint mixes never repeat exactly."""
    return np.clip(colour + rng.normal(0.0, amount, size=3), 0.0, 1.0)


def _stripes(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, pal: np.ndarray) -> np.ndarray:
    # Bands at a characteristic diagonal (this artist favours ~30°), varying per work.
    theta = np.deg2rad(rng.normal(30.0, 20.0))
    period = rng.uniform(0.12, 0.3)
    phase = rng.uniform(0.0, 1.0)
    k = int(rng.integers(3, 6))
    colours = np.stack([_jitter(rng, pal[j]) for j in rng.choice(len(pal), size=k, replace=True)])
    # slightly wavy band edges make each work individual at fine scale
    wobble = rng.uniform(0.0, 0.04) * np.sin(2 * np.pi * (rng.uniform(1, 4) * (x - y) + rng.uniform()))
    u = (x * np.cos(theta) + y * np.sin(theta) + wobble) / period + phase
    return colours[np.floor(u).astype(np.int64) % k]


def _circles(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, pal: np.ndarray) -> np.ndarray:
    img = np.broadcast_to(_jitter(rng, pal[0], 0.03), y.shape + (3,)).copy()
    for _ in range(int(rng.integers(4, 9))):
        cy, cx = rng.uniform(0.05, 0.95, size=2)
        r = rng.uniform(0.07, 0.28)
        colour = _jitter(rng, pal[int(rng.integers(1, len(pal)))])
        alpha = rng.uniform(0.6, 1.0)  # translucent overlaps give each work its own mixed colours
        inside = ((y - cy) ** 2 + (x - cx) ** 2) < r * r
        img[inside] = (1 - alpha) * img[inside] + alpha * colour
    return img


def _grid_art(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, pal: np.ndarray) -> np.ndarray:
    size = y.shape[0]
    xs = np.sort(rng.uniform(0.1, 0.9, size=int(rng.integers(2, 5))))
    ys = np.sort(rng.uniform(0.1, 0.9, size=int(rng.integers(2, 5))))
    col = np.searchsorted(xs, x)
    row = np.searchsorted(ys, y)
    n_cells = (len(xs) + 1) * (len(ys) + 1)
    # mostly white cells with a few primary accents, as in the Mondrian compositions it imitates
    picks = rng.choice(len(pal), size=n_cells, p=[0.4, 0.35, 0.09, 0.08, 0.08])
    cell_colours = np.stack([_jitter(rng, pal[j], 0.03) for j in picks])
    img = cell_colours[row * (len(xs) + 1) + col]
    # black lines at least one pixel wide at any resolution
    half = max(0.5 / size, rng.uniform(0.008, 0.02))
    line = (np.abs(x[..., None] - xs).min(-1) < half) | (np.abs(y[..., None] - ys).min(-1) < half)
    img[line] = 0.05
    return img


def _waves(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, pal: np.ndarray) -> np.ndarray:
    field = np.zeros_like(x)
    for _ in range(3):
        angle = rng.uniform(0, 2 * np.pi)
        freq = rng.uniform(1.0, 4.0)
        field += rng.uniform(0.5, 1.0) * np.sin(
            2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi)
        )
    t = (field - field.min()) / max(float(np.ptp(field)), 1e-9)  # normalise to [0, 1]
    # a per-work colour ramp through 3 palette colours
    ramp = np.stack([_jitter(rng, pal[j]) for j in rng.choice(len(pal), size=3, replace=False)])
    pos = t * 2.0
    lo = np.minimum(pos.astype(np.int64), 1)
    frac = (pos - lo)[..., None]
    return (1 - frac) * ramp[lo] + frac * ramp[lo + 1]


def _rings(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, pal: np.ndarray) -> np.ndarray:
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    squash = rng.uniform(0.6, 1.4)  # elliptical rings, a different ellipse per work
    d = np.sqrt((y - cy) ** 2 * squash + (x - cx) ** 2 / squash)
    width = rng.uniform(0.05, 0.12)
    k = int(rng.integers(3, 6))
    colours = np.stack([_jitter(rng, pal[j]) for j in rng.choice(len(pal), size=k)])
    return colours[np.floor(d / width + rng.uniform()).astype(np.int64) % k]


_MOTIFS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "stripes": _stripes,
    "circles": _circles,
    "grid": _grid_art,
    "waves": _waves,
    "rings": _rings,
}

#: Names of the available procedural artists.
ARTISTS: tuple[str, ...] = tuple(_MOTIFS)


def _marks(rng: np.random.Generator, img: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
    """A few small random marks (dabs and ticks): the individual detail of each work."""
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(0.05, 0.95, size=2)
        hy, hx = rng.uniform(0.02, 0.06, size=2)
        colour = rng.uniform(0.0, 1.0, size=3)
        mask = (np.abs(y - cy) < hy) & (np.abs(x - cx) < hx)
        img[mask] = colour


def _rng(artist: str, index: int, seed: int) -> np.random.Generator:
    # crc32, not hash(): Python's string hash is randomised per process and would break determinism.
    return np.random.default_rng([int(seed), zlib.crc32(artist.encode("utf-8")), int(index)])


def _check_artist(artist: str) -> None:
    if artist not in _MOTIFS:
        raise ValueError(f"unknown synthetic artist {artist!r} (available: {', '.join(ARTISTS)})")


def render_artwork(artist: str, index: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Render work ``index`` of ``artist`` as uint8 ``[size, size, 3]``; same arguments ⇒ same bytes."""
    _check_artist(artist)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    rng = _rng(artist, index, seed)
    y, x = _grid(int(size))
    img = np.array(_MOTIFS[artist](rng, y, x, PALETTES[artist]), dtype=np.float64)
    _marks(rng, img, y, x)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _caption(rng: np.random.Generator, artist: str) -> str:
    return f"{_CAPTION_FORMS[int(rng.integers(len(_CAPTION_FORMS)))]} in the style of {artist}"


def _created(artist: str, index: int, seed: int) -> str:
    # Each artist works through consecutive weeks from an artist-specific start date; deterministic.
    start = date(2015, 1, 1) + timedelta(days=(zlib.crc32(f"{artist}:{seed}".encode()) % 1500))
    return (start + timedelta(days=7 * int(index))).isoformat()


def make_artwork_folder(
    root: str | os.PathLike[str],
    artists: list[str],
    per_artist: int,
    size: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Render ``per_artist`` works for each artist into ``root/<artist>_<index:04d>.png``.

    Returns manifest entries (``path`` absolute, ``role`` ``""`` for the caller to assign, ``caption``,
    ``artist``, ``created``) in artist-then-index order. PNG bytes are deterministic, so the SHA-256
    image ids are stable across runs.
    """
    for a in artists:
        _check_artist(a)
    if per_artist < 0:
        raise ValueError(f"per_artist must be non-negative, got {per_artist}")
    rootp = Path(root)
    rootp.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for artist in artists:
        for index in range(per_artist):
            arr = render_artwork(artist, index, size=size, seed=seed)
            path = rootp / f"{artist}_{index:04d}.png"
            Image.fromarray(arr).save(path, format="PNG")
            # A separate stream for metadata keeps captions from shifting the image's random draws.
            meta_rng = np.random.default_rng([int(seed), zlib.crc32(artist.encode()), int(index), 1])
            entries.append(
                {
                    "path": os.path.normpath(str(path.absolute())),
                    "role": "",
                    "caption": _caption(meta_rng, artist),
                    "artist": artist,
                    "created": _created(artist, index, seed),
                }
            )
    return entries
