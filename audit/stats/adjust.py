"""Difficulty adjustment: each work's membership score minus what its model-free image features predict.

Much of a per-image membership score is image *difficulty* — simple, flat, low-contrast images get low
denoising losses under any model — and that variance is noise for the membership question (measured here:
model-free features explain an out-of-fold R² of 0.31 of the loss on a DDPM kit and 0.78 on a Flux LoRA kit;
Rao & Moyer, arXiv 2603.13421, report large gains from a complexity-calibrated statistic). Worse, a suspect
set that differs from its controls in such a feature (brighter, busier, another period's style) shifts the
raw score without any membership, and the set-level test then "convicts".

:func:`difficulty_adjust` fits a ridge regression of the score on the standardised model-free features
(:mod:`audit.stats.blind`) **on all works without their roles**, cross-fitted: the works are split into folds by
their image id (a fixed function of the id, not of the role), each fold's prediction comes from a model fitted
on the other folds, and the adjusted score is score − prediction. Nothing in the adjustment looks at which
works are suspects, controls or members, so when suspects and controls are exchangeable their adjusted scores
are too: every permutation test on them stays exactly valid. A shift in the features that drives the score is
removed to the extent the linear model captures it; the blind baseline still checks what remains.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from audit.types import ScoreTable

__all__ = ["ADJUST_ALPHAS", "difficulty_adjust", "fold_of"]

ADJUST_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 4, 13))  # ridge penalties (RidgeCV)


def fold_of(image_id: str, folds: int) -> int:
    """Fold of a work: a fixed function of its image id (SHA-256), never of its role."""
    return int(hashlib.sha256(str(image_id).encode()).hexdigest()[:8], 16) % folds


def _design(features: pd.DataFrame, ids: list[str]) -> tuple[np.ndarray, list[str], list[str], dict[str, int]]:
    """Standardised feature matrix of ``ids``. A non-finite value is filled with its column's median over these
    works (label-free, like the rest); a column with no finite value, or a constant one, is dropped."""
    f = features.drop_duplicates("image_id").set_index("image_id")
    cols = [c for c in f.columns if c not in ("role",) and pd.api.types.is_numeric_dtype(f[c])]
    X = f.loc[ids, cols].to_numpy(dtype=float)
    filled: dict[str, int] = {}
    for j, c in enumerate(cols):
        bad = ~np.isfinite(X[:, j])
        if bad.any() and (~bad).any():
            X[bad, j] = np.median(X[~bad, j])
            filled[c] = int(bad.sum())
    finite = np.isfinite(X).all(axis=0)
    sd = np.where(finite, np.nan_to_num(X).std(axis=0), 0.0)
    keep = finite & (sd > 1e-12)
    Xk = X[:, keep]
    Xk = (Xk - Xk.mean(axis=0)) / Xk.std(axis=0) if Xk.shape[1] else Xk
    return Xk, [c for c, k in zip(cols, keep) if k], [c for c, k in zip(cols, keep) if not k], filled


def difficulty_adjust(scores: ScoreTable, features: pd.DataFrame | None, folds: int = 5
                      ) -> tuple[ScoreTable, dict[str, Any], list[str]]:
    """The ScoreTable with every score replaced by its difficulty-adjusted value, a record of the adjustment
    (per attack: works, out-of-fold R², ridge penalty, features used) and notes. Works without model-free
    features cannot be adjusted and are left out (said in the notes). Raises ``ValueError`` when no work has
    features."""
    from sklearn.linear_model import RidgeCV

    if features is None or features.empty or "image_id" not in features.columns:
        raise ValueError("stats.adjust=features needs the model-free image features (features.parquet), which this "
                         "run does not have; use stats.adjust=none")
    df = scores.df
    bad = df[~np.isfinite(df["score"].to_numpy(dtype=float))]
    if len(bad):
        a = bad["attack"].iloc[0]
        raise ValueError(f"attack {a!r} has {int((bad['attack'] == a).sum())} NaN/infinite scores; fix the scoring run "
                         "first")
    have = set(features["image_id"])
    missing = sorted(set(df["image_id"]) - have)
    notes: list[str] = []
    if missing:
        notes.append(f"{len(missing)} scored works have no model-free features, so their scores cannot be "
                     "difficulty-adjusted; they are left out of the analysis.")
        df = df[df["image_id"].isin(have)]
    if df.empty:
        raise ValueError("no scored work has model-free features, so stats.adjust=features cannot be applied")
    out = []
    record: dict[str, Any] = {"method": "cross-fitted ridge regression on the model-free image features, fitted on "
                              "all works without their roles; folds by image id", "folds": int(folds),
                              "n_left_out": len(missing), "attacks": {}}
    for attack, part in df.groupby("attack", sort=False):
        per_image = part.groupby("image_id", sort=True)["score"].mean()
        ids = per_image.index.tolist()
        y = per_image.to_numpy(dtype=float)
        X, used, dropped, filled = _design(features, ids)
        if filled:
            notes.append(f"Difficulty adjustment of {attack!r}: non-finite feature values filled with the column's "
                         "median over all works (label-free): " + ", ".join(f"{c} ({n})" for c, n in filled.items())
                         + ".")
        k = int(min(folds, len(ids)))
        pred = np.full(len(ids), float(y.mean()))
        alphas = []
        if X.shape[1] and k >= 2:
            fold = np.array([fold_of(i, k) for i in ids])
            for f in range(k):
                tr, te = fold != f, fold == f
                if te.any() and tr.sum() >= 3:
                    m = RidgeCV(alphas=ADJUST_ALPHAS).fit(X[tr], y[tr])
                    pred[te] = m.predict(X[te])
                    alphas.append(float(m.alpha_))
        ss = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 0.0
        p2 = part.copy()
        p2["score"] = p2["score"].to_numpy(dtype=float) - p2["image_id"].map(dict(zip(ids, pred))).to_numpy(float)
        out.append(p2)
        record["attacks"][str(attack)] = {"n_works": len(ids), "r2_out_of_fold": r2, "features": used,
                                          "dropped": dropped, "filled": filled, "ridge_alpha_median": float(np.median(alphas))
                                          if alphas else None}
    return ScoreTable(pd.concat(out, ignore_index=True)), record, notes
