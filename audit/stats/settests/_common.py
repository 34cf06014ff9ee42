"""What every set-level test shares: input checks, the alternatives, relabelling within strata."""
from __future__ import annotations

import numpy as np

__all__ = ["Alternative", "ALTERNATIVES", "strata_permutations"]


def _as_scores(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        raise ValueError(f"no {what} scores")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} scores contain NaN or infinite values")
    return a

Alternative = str  # "greater" (suspects score higher) or "two-sided"

ALTERNATIVES: tuple[str, ...] = ("greater", "two-sided")

def _check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative

def strata_permutations(labels: np.ndarray, strata: np.ndarray, n_draws: int, rng: np.random.Generator
                        ) -> np.ndarray:
    """``[n_draws, N]`` relabellings of ``labels`` that permute them only among works of the same stratum."""
    labels = np.asarray(labels)
    codes = np.unique(np.asarray(strata), return_inverse=True)[1]
    grouped = np.argsort(codes, kind="stable")
    base = labels[grouped]
    out = np.empty((n_draws, labels.size), dtype=labels.dtype)
    chunk = max(1, int(2e6 // max(1, labels.size)))
    for a in range(0, n_draws, chunk):
        k = min(chunk, n_draws - a)
        # positions grouped by stratum (same group order and sizes in every row), random order within each
        perm = np.lexsort((rng.random((k, labels.size)), np.broadcast_to(codes, (k, labels.size))), axis=-1)
        rows = np.empty((k, labels.size), dtype=labels.dtype)
        np.put_along_axis(rows, perm, np.broadcast_to(base, (k, labels.size)), axis=1)
        out[a:a + k] = rows
    return out
