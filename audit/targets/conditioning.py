"""Text conditioning of families whose denoiser takes more than one tensor (SDXL, SD3, Flux, PixArt).

A :class:`Conditioning` behaves like the single embedding tensor of SD 1.x where attacks and samplers
handle conditioning: ``len``, ``shape`` (of the main embedding), slicing rows, ``expand`` to a batch,
``clone``, ``to`` and ``torch.cat`` along the batch. ``batched`` tensors have the batch as their first
dimension; ``shared`` ones (Flux's ``txt_ids``) are the same for every row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Conditioning:
    batched: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor] = field(default_factory=dict)
    main: str = "encoder_hidden_states"

    def __len__(self) -> int:
        return int(self.batched[self.main].shape[0])

    @property
    def shape(self) -> torch.Size:
        return self.batched[self.main].shape

    def _map(self, fn) -> "Conditioning":
        return Conditioning({k: fn(v) for k, v in self.batched.items()}, dict(self.shared), self.main)

    def __getitem__(self, index: Any) -> "Conditioning":
        return self._map(lambda v: v[index])

    def expand(self, n: int, *_: Any) -> "Conditioning":
        return self._map(lambda v: v.expand(int(n), *v.shape[1:]))

    def clone(self) -> "Conditioning":
        return self._map(lambda v: v.clone())

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "Conditioning":
        def move(v: torch.Tensor) -> torch.Tensor:
            return v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)

        out = self._map(move)
        out.shared = {k: move(v) for k, v in self.shared.items()}
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.cat:
            parts = list(args[0])
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim != 0 or not all(isinstance(p, Conditioning) for p in parts):
                raise TypeError("Conditioning supports torch.cat of Conditionings along the batch (dim 0) only")
            first = parts[0]
            return Conditioning({k: torch.cat([p.batched[k] for p in parts]) for k in first.batched},
                                dict(first.shared), first.main)
        raise TypeError(f"{func.__name__} is not defined for Conditioning")
