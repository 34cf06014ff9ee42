"""Core records shared by every stage of an audit.

The flow is one-directional: evidence (``ImageRecord`` + preprocessed pixels) and a target go into
attacks, attacks produce a :class:`ScoreTable`, and everything after scoring (statistics, report) reads
only the ScoreTable plus the image table, so a report can be regenerated without the model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

ROLES: tuple[str, ...] = ("suspect", "control", "member", "nonmember")

SCORE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "role",
    "attack",
    "attack_params_hash",
    "target_fingerprint",
    "seed",
    "score",
)


@dataclass(frozen=True)
class ImageRecord:
    """One accepted artwork. ``image_id`` is the SHA-256 of the file's bytes."""

    image_id: str
    path: str
    role: str
    caption: str = ""
    artist: str = ""
    created: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    resolved_path: str = ""  # the file actually read: a symbolic link's target (else the path itself)
    # the basis of the comparison (optional manifest columns, audit.data.manifest): why a work is known (not) to
    # be in training (post_cutoff / unpublished / held_out / free text), when it was first published, where from
    basis: str = ""
    published: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rejection:
    """A manifest entry that could not be used, with the reason kept for the report."""

    path: str
    role: str
    reason: str
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvidenceSet:
    """Accepted records, their preprocessed pixels and the rejected entries.

    ``pixels`` is uint8 ``[N, 3, H, W]`` at the target's resolution (kept as uint8 to save memory);
    :meth:`batch` converts a slice to float in [-1, 1], the range diffusion models are trained on.
    """

    records: list[ImageRecord]
    pixels: torch.Tensor
    rejected: list[Rejection] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.records) != int(self.pixels.shape[0]):
            raise ValueError(
                f"{len(self.records)} records but {int(self.pixels.shape[0])} images in the pixel tensor"
            )

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return self.pixels[start:stop].float().div(127.5).sub(1.0)

    def image_table(self) -> pd.DataFrame:
        cols = list(ImageRecord.__dataclass_fields__)
        return pd.DataFrame([r.to_dict() for r in self.records], columns=cols)

    def select(self, roles: Iterable[str]) -> "EvidenceSet":
        keep = set(roles)
        idx = [i for i, r in enumerate(self.records) if r.role in keep]
        return EvidenceSet([self.records[i] for i in idx], self.pixels[idx], list(self.rejected))


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of an attack's parameters (sorted JSON)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class ScoreTable:
    """Long-format scores: one row per (image, attack, target). Higher score = more member-like."""

    df: pd.DataFrame

    def __post_init__(self) -> None:
        missing = [c for c in SCORE_COLUMNS if c not in self.df.columns]
        if missing:
            raise ValueError(f"ScoreTable is missing columns {missing}")

    @classmethod
    def empty(cls) -> "ScoreTable":
        return cls(pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in SCORE_COLUMNS}))

    @classmethod
    def concat(cls, tables: Iterable["ScoreTable"]) -> "ScoreTable":
        frames = [t.df for t in tables if len(t.df)]
        if not frames:
            return cls.empty()
        return cls(pd.concat(frames, ignore_index=True))

    @property
    def attacks(self) -> list[str]:
        return list(dict.fromkeys(self.df["attack"].tolist()))

    def scores(self, attack: str, role: str | Iterable[str]) -> np.ndarray:
        roles = [role] if isinstance(role, str) else list(role)
        sel = self.df[(self.df["attack"] == attack) & (self.df["role"].isin(roles))]
        return sel["score"].to_numpy(dtype=float)

    def wide(self) -> pd.DataFrame:
        """image_id × attack matrix of scores (plus role), for multi-feature analysis."""
        w = self.df.pivot_table(index=["image_id", "role"], columns="attack", values="score", aggfunc="mean")
        return w.reset_index()


def _dtype(col: str) -> str:
    return {"seed": "int64", "score": "float64"}.get(col, "object")
