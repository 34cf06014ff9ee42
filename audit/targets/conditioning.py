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


# ---------------------------------------------------------------------------------------------- scoring as trained
#: the conditioning options every family takes (target.<name>); null = decided by the model / its metadata
CONDITIONING_OPTIONS = ("resolution", "max_sequence_length", "t5_attention_mask", "guidance", "caption_template")


@dataclass(frozen=True)
class Choice:
    """One conditioning decision: the value used, where it came from and why."""

    value: Any
    source: str  # "option" | "training metadata" | "model config" | "family default" | "not applicable"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "reason": self.reason}


class ConditioningChoices:
    """Collects a family's conditioning decisions: a value given (by the user, or by the training metadata) wins
    over the family's default from the model's config. A user option that does not apply to the family is
    refused in one line; a metadata value that does not apply is recorded as not applied."""

    def __init__(self, family: str, given: dict[str, Choice] | None = None) -> None:
        self.family = family
        self.given = dict(given or {})
        self.chosen: dict[str, Choice] = {}

    def pick(self, key: str, default: Any, source: str, reason: str, check: Any = None) -> Any:
        c = self.given.get(key)
        if c is None or c.value is None:
            c = Choice(default, source, reason)
        elif check is not None:
            problem = check(c.value)
            if problem:
                if c.source == "option":
                    raise ValueError(f"target.{key}={c.value!r}: {problem}")
                self.chosen[key] = Choice(default, source, f"{reason}; {c.reason} not applied: {problem}")
                return default
        self.chosen[key] = c
        return c.value

    def not_applicable(self, key: str, why: str) -> None:
        c = self.given.get(key)
        if c is not None and c.value is not None and c.source == "option":
            raise ValueError(f"target.{key} does not apply to {self.family} models: {why}")
        note = f"; {c.reason} not applied" if c is not None and c.value is not None else ""
        self.chosen[key] = Choice(None, "not applicable", why + note)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: self.chosen[k].to_dict() for k in CONDITIONING_OPTIONS if k in self.chosen}


def check_caption_template(template: Any) -> str:
    """'' when ``template`` is a usable caption template (text with exactly the field ``{caption}``)."""
    import string

    if not isinstance(template, str):
        return "must be a string such as 'sks style, {caption}'"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return f"not a template ({e})"
    if fields != ["caption"]:
        return "must contain the field {caption} exactly once and no other field ({artist} is a reconstruction prompt field)"
    return ""


def apply_caption_template(template: str | None, captions: Any) -> list[str]:
    """The prompts as trained: each non-empty caption put into ``template``; the empty prompt (the unconditional
    branch of guidance-based attacks) stays empty."""
    caps = [str(c) for c in captions]
    if not template or template == "{caption}":
        return caps
    return [template.format(caption=c) if c else c for c in caps]
