"""Model-free ("blind") features of the evidence, for the blind-baseline validity gate.

If suspects and controls can be told apart *without the model* — by colour, texture, size, file format
or other metadata — then a membership score that separates them may only be picking up that shift, and
the controls are not a valid null (the failure mode of many published membership results on Stable
Diffusion, where members and non-members came from different sources or years). The gate runs the same
set-level test as the verdict on these features (see :mod:`audit.stats.gates`).

The features are computed at scoring time from the preprocessed evidence pixels (the exact pixels the
attacks saw) and the accepted-file records, and stored as ``features.parquet`` in the results folder,
so the gate can be re-run from the results folder alone. The artwork's creation date is deliberately
*not* a feature: controls are usually chosen by date (made after the training cutoff), so it differs
by design and says nothing about whether the pictures themselves differ. What the date *can* show is whether
the score moves with it among the works known not to be in training: :func:`date_trend` measures that, and the
report shows it whenever the works are dated (the first confound to rule out when controls are chosen by date).
"""
from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np
import pandas as pd

from audit.types import EvidenceSet, ImageRecord

__all__ = ["blind_features", "pixel_features", "metadata_features", "FEATURE_DESCRIPTIONS", "decimal_years", "date_trend"]

# Column → what it measures (shown in the report's methods section).
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "px_mean_r": "mean red", "px_mean_g": "mean green", "px_mean_b": "mean blue",
    "px_std_r": "std. dev. red", "px_std_g": "std. dev. green", "px_std_b": "std. dev. blue",
    "px_lum_mean": "mean luminance", "px_lum_std": "luminance contrast (std. dev.)",
    "px_saturation": "mean HSV saturation", "px_colourfulness": "colourfulness (Hasler & Süsstrunk 2003)",
    "px_lum_entropy": "entropy of the 32-bin luminance histogram",
    "px_gradient": "mean gradient magnitude (texture)", "px_edge_density": "share of pixels with gradient > 0.1",
    "px_laplacian_var": "variance of the Laplacian (fine detail / sharpness)",
    "px_highfreq": "share of spectral energy above half the Nyquist frequency",
    "meta_log_width": "log original width", "meta_log_height": "log original height",
    "meta_log_aspect": "log aspect ratio (width / height)",
    "meta_log_bytes_per_pixel": "log file size per original pixel (compression)",
    "meta_caption_chars": "caption length (characters)",
    "meta_format_*": "file format indicator (one column per format present)",
}


def _luminance(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def pixel_features(pixels: np.ndarray) -> pd.DataFrame:
    """Colour and texture statistics of uint8 images ``[N, 3, H, W]`` (one row per image)."""
    x = np.asarray(pixels, dtype=np.float32) / 255.0
    n = x.shape[0]
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in FEATURE_DESCRIPTIONS if c.startswith("px_")})
    flat = x.reshape(n, 3, -1)
    lum = _luminance(x)  # [N, H, W]
    mx, mn = x.max(axis=1), x.min(axis=1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-8), 0.0)
    rg = x[:, 0] - x[:, 1]
    yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    colourful = np.sqrt(rg.reshape(n, -1).std(1) ** 2 + yb.reshape(n, -1).std(1) ** 2) + 0.3 * np.sqrt(
        rg.reshape(n, -1).mean(1) ** 2 + yb.reshape(n, -1).mean(1) ** 2
    )
    gx = np.diff(lum, axis=2)[:, :-1, :]
    gy = np.diff(lum, axis=1)[:, :, :-1]
    grad = np.sqrt(gx ** 2 + gy ** 2)
    lap = (
        lum[:, 1:-1, 1:-1] * 4 - lum[:, :-2, 1:-1] - lum[:, 2:, 1:-1] - lum[:, 1:-1, :-2] - lum[:, 1:-1, 2:]
    ) if min(lum.shape[1:]) > 2 else np.zeros((n, 1, 1), dtype=np.float32)
    hist = np.stack([np.histogram(lum[i], bins=32, range=(0.0, 1.0))[0] for i in range(n)]).astype(float)
    prob = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    entropy = -(np.where(prob > 0, prob * np.log2(np.where(prob > 0, prob, 1.0)), 0.0)).sum(axis=1)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(lum - lum.mean(axis=(1, 2), keepdims=True)), axes=(1, 2))) ** 2
    h, w = lum.shape[1:]
    fy = (np.arange(h) - h // 2) / max(h / 2.0, 1.0)
    fx = (np.arange(w) - w // 2) / max(w / 2.0, 1.0)
    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    total = spec.sum(axis=(1, 2))
    high = spec[:, radius > 0.5].sum(axis=1)
    return pd.DataFrame({
        "px_mean_r": flat[:, 0].mean(1), "px_mean_g": flat[:, 1].mean(1), "px_mean_b": flat[:, 2].mean(1),
        "px_std_r": flat[:, 0].std(1), "px_std_g": flat[:, 1].std(1), "px_std_b": flat[:, 2].std(1),
        "px_lum_mean": lum.reshape(n, -1).mean(1), "px_lum_std": lum.reshape(n, -1).std(1),
        "px_saturation": sat.reshape(n, -1).mean(1), "px_colourfulness": colourful,
        "px_lum_entropy": entropy,
        "px_gradient": grad.reshape(n, -1).mean(1), "px_edge_density": (grad > 0.1).reshape(n, -1).mean(1),
        "px_laplacian_var": lap.reshape(n, -1).var(1),
        "px_highfreq": np.where(total > 0, high / np.maximum(total, 1e-20), 0.0),
    }).astype(float)


def _file_size(path: str) -> float:
    try:
        return float(os.stat(path).st_size)
    except OSError:
        return math.nan


def metadata_features(records: Iterable[ImageRecord]) -> pd.DataFrame:
    """Size, format, compression and caption features from the accepted-file records."""
    recs = list(records)
    rows = []
    for r in recs:
        w, h = max(int(r.width), 1), max(int(r.height), 1)
        size = _file_size(r.path)
        rows.append({
            "meta_log_width": math.log(w), "meta_log_height": math.log(h), "meta_log_aspect": math.log(w / h),
            "meta_log_bytes_per_pixel": math.log(size / (w * h)) if size == size and size > 0 else math.nan,
            "meta_caption_chars": float(len(r.caption or "")),
        })
    df = pd.DataFrame(rows, columns=["meta_log_width", "meta_log_height", "meta_log_aspect",
                                     "meta_log_bytes_per_pixel", "meta_caption_chars"])
    for fmt in sorted({(r.format or "unknown").upper() for r in recs}):
        df[f"meta_format_{fmt}"] = [float((r.format or "unknown").upper() == fmt) for r in recs]
    return df.astype(float)


def blind_features(evidence: EvidenceSet, chunk: int = 256) -> pd.DataFrame:
    """Model-free features of every accepted artwork: ``image_id``, ``role`` and one float column per feature.

    Pixel statistics come from the preprocessed pixels the attacks scored (``evidence.pixels``), in chunks
    of ``chunk`` images; size/format/compression/caption features from the records.
    """
    parts = [pixel_features(evidence.pixels[i:i + chunk].numpy()) for i in range(0, len(evidence), chunk)]
    px = pd.concat(parts, ignore_index=True) if parts else pixel_features(np.zeros((0, 3, 2, 2), np.uint8))
    meta = metadata_features(evidence.records)
    ids = pd.DataFrame({"image_id": [r.image_id for r in evidence.records],
                        "role": [r.role for r in evidence.records]})
    return pd.concat([ids, px, meta], axis=1)


def decimal_years(dates: Iterable[str]) -> np.ndarray:
    """Each date (YYYY, YYYY-MM or YYYY-MM-DD, as in a manifest) as a decimal year, NaN when empty or unreadable;
    a partial date is taken at the middle of the period it names."""
    from datetime import date

    out = []
    for text in dates:
        parts = str(text or "").strip()[:10].split("-")
        try:
            y = int(parts[0])
            if len(parts) == 1:
                out.append(y + 0.5)
                continue
            m = int(parts[1])
            d = int(parts[2]) if len(parts) > 2 else 15
            day = date(y, m, d)
        except (ValueError, IndexError):
            out.append(math.nan)
            continue
        start = date(y, 1, 1).toordinal()
        length = date(y + 1, 1, 1).toordinal() - start
        out.append(y + (day.toordinal() - start) / length)
    return np.asarray(out, dtype=float)


def date_trend(years_s: np.ndarray, scores_s: np.ndarray, years_c: np.ndarray, scores_c: np.ndarray,
               strata_s: Iterable[str] | None = None, strata_c: Iterable[str] | None = None) -> dict | None:
    """How much of the suspects-vs-controls score gap the works' dates alone could explain.

    When controls are chosen by date (published after the model's data cutoff), the date separates the groups by
    design, so it cannot enter the separability test of the blind baseline (that would fire on every such audit);
    what can be checked is whether the *score* moves with the date among the works known not to be in training.
    Among the controls: Spearman's rank correlation of score and date (two-sided p), and a least-squares line of
    score on date; that line, evaluated at the suspects' dates, gives the gap in mean score that the date trend
    alone predicts, beside the observed gap. With strata (e.g. artists) both are taken within strata: years and
    scores are centred on the controls of each stratum, and a suspect counts against the controls of its own
    (suspects of a stratum without dated controls are left out). ``extrapolated``: share of suspects dated outside
    their controls' range. None when fewer than 3 dated works of either group.
    """
    from scipy import stats as st

    ys, ss = np.asarray(years_s, float), np.asarray(scores_s, float)
    yc, sc = np.asarray(years_c, float), np.asarray(scores_c, float)
    gs = np.asarray(list(strata_s) if strata_s is not None else [""] * len(ys), dtype=object)
    gc = np.asarray(list(strata_c) if strata_c is not None else [""] * len(yc), dtype=object)
    ks, kc = np.isfinite(ys) & np.isfinite(ss), np.isfinite(yc) & np.isfinite(sc)
    ys, ss, gs, yc, sc, gc = ys[ks], ss[ks], gs[ks], yc[kc], sc[kc], gc[kc]
    keep = np.isin(gs, np.unique(gc))
    ys, ss, gs = ys[keep], ss[keep], gs[keep]
    if len(ys) < 3 or len(yc) < 3:
        return None
    my = {g: yc[gc == g].mean() for g in np.unique(gc)}
    ms = {g: sc[gc == g].mean() for g in np.unique(gc)}
    lo = {g: yc[gc == g].min() for g in np.unique(gc)}
    hi = {g: yc[gc == g].max() for g in np.unique(gc)}
    yc0 = yc - np.array([my[g] for g in gc])
    sc0 = sc - np.array([ms[g] for g in gc])
    if np.ptp(yc0) == 0 or np.ptp(sc0) == 0:
        return None
    rho, p = st.spearmanr(yc0, sc0)
    slope = float(np.polyfit(yc0, sc0, 1)[0])
    predicted_gap = float(slope * np.mean(ys - np.array([my[g] for g in gs])))
    observed_gap = float(np.mean(ss - np.array([ms[g] for g in gs])))
    outside = float(np.mean([(y < lo[g]) or (y > hi[g]) for y, g in zip(ys, gs)]))
    return {"n_suspect": int(len(ys)), "n_control": int(len(yc)), "rho": float(rho), "p_value": float(p),
            "slope_per_year": slope, "predicted_gap": predicted_gap, "observed_gap": observed_gap,
            "share_explained": float(predicted_gap / observed_gap) if observed_gap != 0 else None,
            "extrapolated": outside, "within_strata": strata_c is not None,
            "suspect_years": [float(ys.min()), float(ys.max())], "control_years": [float(yc.min()), float(yc.max())]}
