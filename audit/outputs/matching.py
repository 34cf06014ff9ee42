"""Model-free matching of an artwork against collected outputs (screenshots included). Pure functions over arrays.

- :func:`find_image_region`: the generated picture inside a phone or browser screenshot. UI bars, captions and
  buttons sit on a flat background; the picture is the longest run of rows (then columns) in which most pixels
  differ from that background. The whole frame is always kept as a second candidate, so a miss costs nothing.
- :func:`normalise`: what undoes re-encoding before comparing — both images are brought to one small size with
  area averaging and a light blur, which removes JPEG blocking and ringing and resampling differences.
- Perceptual hash (:func:`phash_distance`, ImageHash's DCT pHash): near-copies of the whole picture.
- Local features (:func:`match_features`): ORB or SIFT keypoints, Lowe's ratio test, then RANSAC on a similarity
  transform (rotation, scale, translation) — the inlier count finds *partial* copies under crop, scale, rotation
  and re-drawing of other parts. The transform is returned for alignment and for the exhibit.
- Aligned comparison (:func:`aligned_similarity`): the output warped into the work's frame by that transform
  (or, without one, the detected picture region resized onto the work), then SSIM and Carlini's tiled ℓ2 on
  the overlap.
- Style (:func:`style_descriptor`): colour and edge-orientation histograms — *circumstantial*: a shared style or
  palette is what an imitation shows as well as a trained model (ArtistAuditor's level, not a copy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["find_image_region", "normalise", "phash", "phash_distance", "Keypoints", "keypoints", "match_features",
           "FeatureMatch", "aligned_similarity", "style_descriptor", "style_similarity", "to_working"]


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - the extra is installed with .[outputs] / .[test]
        raise ImportError("the outputs target needs OpenCV: pip install 'diffusion-membership-audit[outputs]' "
                          "(opencv-python-headless)") from e
    cv2.setNumThreads(1)
    return cv2


def to_working(arr: np.ndarray, side: int) -> np.ndarray:
    """Resize so the longest side is ``side`` (area averaging down, bicubic up)."""
    cv2 = _cv2()
    h, w = arr.shape[:2]
    s = side / max(h, w)
    if abs(s - 1.0) < 1e-6:
        return arr
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    best, start = (0, 0), None
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def find_image_region(arr: np.ndarray, *, tol: int = 18, fill: float = 0.6, min_frac: float = 0.2
                      ) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of the picture inside a screenshot, or None when no region stands out (the file is
    the picture itself, or the background is not flat)."""
    h, w = arr.shape[:2]
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3), arr[:, :2].reshape(-1, 3),
                             arr[:, -2:].reshape(-1, 3)]).astype(np.int16)
    q = (border // 8).astype(np.int32)
    codes, counts = np.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2], return_counts=True)
    if counts.max() < 0.5 * len(border):
        return None  # the edges are not one flat colour: no UI frame to remove
    sel = (q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2]) == codes[counts.argmax()]
    bg = np.median(border[sel], axis=0)
    differs = np.abs(arr.astype(np.int16) - bg).max(axis=2) > tol
    y0, y1 = _longest_run(differs.mean(axis=1) > fill)
    if y1 - y0 < min_frac * h:
        return None
    x0, x1 = _longest_run(differs[y0:y1].mean(axis=0) > fill)
    if x1 - x0 < min_frac * w:
        return None
    if (x1 - x0) * (y1 - y0) > 0.97 * h * w:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def normalise(arr: np.ndarray, size: int, *, blur: float = 0.6) -> np.ndarray:
    """float32 ``[size, size, 3]`` in [0, 1]: area-resized and lightly blurred (undoes JPEG blocking/ringing)."""
    cv2 = _cv2()
    out = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    return out


def phash(arr: np.ndarray, hash_size: int = 16):
    """ImageHash's DCT perceptual hash (``hash_size``² bits) of an RGB array."""
    import imagehash
    from PIL import Image

    return imagehash.phash(Image.fromarray(arr), hash_size=hash_size)


def phash_distance(a, b) -> float:
    """Normalised Hamming distance of two hashes, in [0, 1]."""
    return float(a - b) / float(a.hash.size)


@dataclass
class Keypoints:
    """Keypoints (x, y in the array they were found in) and descriptors of one image at working size."""

    xy: np.ndarray  # float32 [K, 2]
    descriptors: np.ndarray | None
    scale: float  # working size / original size: original xy = xy / scale
    shape: tuple[int, int]  # (h, w) of the working image
    binary: bool = False


def keypoints(arr: np.ndarray, detector: str = "sift", *, side: int = 512, n_features: int = 1500) -> Keypoints:
    """ORB (binary, fast) or SIFT (float, more robust to blur and rescaling) on the grey image at working size."""
    cv2 = _cv2()
    h, w = arr.shape[:2]
    work = to_working(arr, side)
    grey = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)
    if detector == "orb":
        det = cv2.ORB_create(nfeatures=n_features, scaleFactor=1.2, nlevels=8, edgeThreshold=15, patchSize=15,
                             fastThreshold=7)
    elif detector == "sift":
        det = cv2.SIFT_create(nfeatures=n_features, contrastThreshold=0.02)
    else:
        raise ValueError(f"detector must be 'orb' or 'sift', got {detector!r}")
    kps, desc = det.detectAndCompute(grey, None)
    xy = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
    return Keypoints(xy, desc, work.shape[1] / w, work.shape[:2], binary=detector == "orb")


@dataclass
class FeatureMatch:
    """The geometric check between a work and an output: RANSAC inliers of a similarity transform."""

    inliers: int
    matches: int
    transform: np.ndarray | None = None  # 2×3, work (original px) → output (original px)
    work_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # inlier points, original px
    output_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def to_dict(self, max_points: int = 200) -> dict[str, Any]:
        return {"inliers": int(self.inliers), "matches": int(self.matches),
                "transform": None if self.transform is None else np.round(self.transform, 5).tolist(),
                "work_xy": np.round(self.work_xy[:max_points], 2).tolist(),
                "output_xy": np.round(self.output_xy[:max_points], 2).tolist()}


def match_features(a: Keypoints, b: Keypoints, *, ratio: float = 0.8, reproj: float = 4.0, min_matches: int = 4,
                   max_scale_ratio: float = 12.0) -> FeatureMatch:
    """Ratio-test matches of ``a`` (the work) to ``b`` (the output), then RANSAC (similarity transform); the
    transform maps the work's original pixel coordinates to the output's. Degenerate transforms (a scale
    beyond ``max_scale_ratio`` either way, a reflection) count as no match."""
    cv2 = _cv2()
    if a.descriptors is None or b.descriptors is None or len(a.xy) < 2 or len(b.xy) < 2:
        return FeatureMatch(0, 0)
    norm = cv2.NORM_HAMMING if a.binary else cv2.NORM_L2
    pairs = cv2.BFMatcher(norm).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < min_matches:
        return FeatureMatch(0, len(good))
    src = np.float32([a.xy[m.queryIdx] for m in good]) / a.scale
    dst = np.float32([b.xy[m.trainIdx] for m in good]) / b.scale
    # RANSAC threshold in the output's original pixels, as reproj px at its working size
    M, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=reproj / b.scale,
                                          maxIters=2000, confidence=0.995, refineIters=10)
    if M is None or mask is None:
        return FeatureMatch(0, len(good))
    s = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
    if not (1.0 / max_scale_ratio < s < max_scale_ratio):
        return FeatureMatch(0, len(good))
    keep = mask.ravel().astype(bool)
    # several matches onto one output point are one piece of evidence, not many
    pts = {tuple(np.round(p, 0)) for p in dst[keep]}
    n = min(int(keep.sum()), len(pts))
    return FeatureMatch(n, len(good), M, src[keep], dst[keep])


def _ssim_grey(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (Gaussian window σ 1.5, data range 1) of two grey images over ``mask``."""
    cv2 = _cv2()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    va = blur(a * a) - mu_a ** 2
    vb = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    m = mask > 0.5
    return float(s[m].mean()) if m.any() else float("nan")


def _tiled_l2(a: np.ndarray, b: np.ndarray, mask: np.ndarray, tiles: int) -> float:
    """Carlini et al.'s tiled ℓ2: the largest per-tile RMS difference over tiles mostly inside ``mask``."""
    h, w = a.shape[:2]
    worst = 0.0
    seen = False
    for i in range(tiles):
        for j in range(tiles):
            ys, xs = slice(i * h // tiles, (i + 1) * h // tiles), slice(j * w // tiles, (j + 1) * w // tiles)
            m = mask[ys, xs] > 0.5
            if m.mean() < 0.5:
                continue
            d = (a[ys, xs][m] - b[ys, xs][m]) ** 2
            worst = max(worst, float(np.sqrt(d.mean())))
            seen = True
    return worst if seen else float("nan")


def aligned_similarity(work: np.ndarray, output: np.ndarray, *, transform: np.ndarray | None,
                       region: tuple[int, int, int, int] | None, size: int = 64, tiles: int = 4,
                       min_overlap: float = 0.25) -> dict[str, float]:
    """SSIM and tiled ℓ2 of ``work`` against ``output`` after alignment, at ``size`` px (both in [0, 1]).

    With a ``transform`` (work px → output px, from :func:`match_features`) the output is warped into the work's
    frame and compared on the overlap (at least ``min_overlap`` of the work); otherwise the detected picture
    ``region`` of the output (or the whole output) is resized onto the work. Returns ``ssim``, ``tiled_l2``,
    ``overlap`` and ``aligned`` (1 when the transform was used)."""
    cv2 = _cv2()
    h, w = work.shape[:2]
    s = size / max(h, w)
    wh, ww = max(8, round(h * s)), max(8, round(w * s))
    work_n = cv2.GaussianBlur(cv2.resize(work, (ww, wh), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0,
                              (0, 0), 0.6)
    aligned = 0.0
    warped = mask = None
    if transform is not None:
        # work-at-size px → work px → output px
        S = np.array([[1 / s, 0, 0], [0, 1 / s, 0], [0, 0, 1]], dtype=np.float64)
        M = np.vstack([transform, [0, 0, 1]]) @ S
        # area-average the output down to the work's scale before sampling (no aliasing of a large screenshot)
        scale = float(np.sqrt(abs(np.linalg.det(M[:2, :2]))))
        src = output.astype(np.float32) / 255.0
        if scale > 1.5:
            k = scale / 2.0
            src = cv2.GaussianBlur(src, (0, 0), k)
        warped = cv2.warpAffine(src, M[:2], (ww, wh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        mask = cv2.warpAffine(np.ones(output.shape[:2], np.float32), M[:2], (ww, wh),
                              flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
        if float((mask > 0.5).mean()) >= min_overlap:
            warped = cv2.GaussianBlur(warped, (0, 0), 0.6)
            aligned = 1.0
        else:
            warped = mask = None
    if warped is None:
        x0, y0, x1, y1 = region if region is not None else (0, 0, output.shape[1], output.shape[0])
        crop = output[y0:y1, x0:x1]
        warped = cv2.GaussianBlur(cv2.resize(crop, (ww, wh), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0,
                                  (0, 0), 0.6)
        mask = np.ones((wh, ww), np.float32)
    grey = lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)  # noqa: E731
    return {"ssim": _ssim_grey(grey(work_n), grey(warped), mask),
            "tiled_l2": _tiled_l2(work_n, warped, mask, tiles),
            "overlap": float((mask > 0.5).mean()), "aligned": aligned}


def style_descriptor(arr: np.ndarray, size: int = 128) -> np.ndarray:
    """Colour (HSV 8×4×4) and edge-orientation (8 bins, magnitude-weighted) histograms, each summing to 1."""
    cv2 = _cv2()
    x = to_working(arr, size)
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
    col = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    g = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    mag, ang = cv2.cartToPolar(gx, gy)
    ori, _ = np.histogram((ang.ravel() % np.pi), bins=8, range=(0, np.pi), weights=mag.ravel())
    return np.concatenate([col / max(col.sum(), 1e-9), ori / max(ori.sum(), 1e-9)]).astype(np.float32)


def style_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the colour and orientation histogram intersections, in [0, 1]."""
    return float(0.5 * np.minimum(a[:128], b[:128]).sum() + 0.5 * np.minimum(a[128:], b[128:]).sum())
