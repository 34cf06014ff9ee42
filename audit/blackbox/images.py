"""Images as a black-box service sees them: PNG bytes in and out, compared as uint8 arrays in float64.

Every statistic here is a pure function of the image bytes (the artwork sent, the images received), so
``audit-verify`` recomputes it from the request log exactly as the run computed it.
"""
from __future__ import annotations

import base64
import hashlib
import io
from typing import Sequence

import numpy as np
from PIL import Image

from audit.blackbox.errors import BadResponseError

MAX_RESPONSE_PIXELS = 64_000_000  # a decompression bomb in a response is refused before decoding


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png_bytes(arr: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` → PNG bytes (fixed settings, so the same pixels give the same bytes and hash)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_image(data: bytes, resolution: int | None = None) -> np.ndarray:
    """Image bytes (any format PIL reads) → uint8 ``[H, W, 3]``, resized to ``resolution`` if it differs.

    Raises :class:`BadResponseError` for bytes that are not an image or are too large to decode safely."""
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_RESPONSE_PIXELS:
            raise BadResponseError(f"bad response: image of {w}x{h} pixels exceeds the {MAX_RESPONSE_PIXELS} limit")
        img.load()
    except BadResponseError:
        raise
    except Exception as e:
        raise BadResponseError(f"bad response: the returned bytes are not a readable image ({type(e).__name__})")
    img = img.convert("RGB")
    if resolution is not None and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _unit(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) / 255.0


def _bounds(size: int, n: int) -> list[tuple[int, int]]:
    edges = [round(i * size / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def tiled_l2(a: np.ndarray, b: np.ndarray, tiles: int = 4) -> float:
    """Carlini et al.'s tiled ℓ2 between two uint8 ``[H, W, 3]`` images in [0, 1] units: the maximum over a
    ``tiles × tiles`` grid of the per-tile RMS difference (the same definition as
    :func:`audit.reconstruction.metrics.tiled_l2`)."""
    d = (_unit(a) - _unit(b)) ** 2
    h, w = d.shape[:2]
    return float(max(np.sqrt(d[y0:y1, x0:x1].mean()) for y0, y1 in _bounds(h, tiles) for x0, x1 in _bounds(w, tiles)))


# ---------------------------------------------------------------- the black-box statistics (higher = member-like)
def variation_score(reference: np.ndarray, variations: Sequence[np.ndarray]) -> float:
    """ReDiffuse-style: −MSE (in [0, 1] units) between the mean of the variations and the artwork."""
    mean = np.mean([_unit(v) for v in variations], axis=0)
    return -float(np.mean((mean - _unit(reference)) ** 2))


def reconstruction_score(reference: np.ndarray, reconstructions: Sequence[np.ndarray], tiles: int) -> float:
    """img2img reconstruction: −(mean tiled ℓ2 of the reconstructions to the artwork)."""
    return -float(np.mean([tiled_l2(r, reference, tiles) for r in reconstructions]))


def match_score(reference: np.ndarray, generations: Sequence[np.ndarray], tiles: int) -> float:
    """Generate-and-match: −(tiled ℓ2 of the nearest generation to the artwork)."""
    return -float(min(tiled_l2(g, reference, tiles) for g in generations))


STATISTICS = {
    "variation_mse": lambda ref, imgs, tiles: variation_score(ref, imgs),
    "mean_tiled_l2": reconstruction_score,
    "min_tiled_l2": match_score,
}


def statistic(kind: str, reference: np.ndarray, images: Sequence[np.ndarray], tiles: int) -> float:
    if kind not in STATISTICS:
        raise ValueError(f"unknown black-box statistic {kind!r}; known: {', '.join(STATISTICS)}")
    if not images:
        raise ValueError(f"{kind}: no images to compare")
    return STATISTICS[kind](reference, images, int(tiles))
