"""Registry of model families, keyed by the pipeline class named in a model folder's ``model_index.json``.

A family is one file in :mod:`audit.targets.families`: which pipeline classes it serves, which
components its folder must have, how diffusers loads it, and how its loaded pipeline becomes a
:class:`~audit.targets.base.Target` with neutral components (``denoiser``, ``encode`` / ``decode``,
``encode_text`` → conditioning, ``process``). Adding a family is adding one file that calls
:func:`register`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Family:
    name: str  # short registry name, e.g. "sdxl"
    title: str  # what an error message calls it, e.g. "Stable Diffusion XL"
    pipelines: tuple[str, ...]  # model_index.json `_class_name` values this family serves
    pipeline_class: str  # the diffusers class that loads the folder (or a single file)
    required: tuple[str, ...]  # components model_index.json must list
    #: (pipeline, device, dtype, info keyword arguments, options) -> Target
    build: Callable[[Any, torch.device, torch.dtype, dict[str, Any], dict[str, Any]], Any]
    load_kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained arguments
    single_file: bool = True  # diffusers' from_single_file supports this family


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def _load_all() -> None:
    import audit.targets.families  # noqa: F401  (each module registers itself)


def family_named(name: str) -> Family | None:
    _load_all()
    return FAMILIES.get(name)


def family_for_pipeline(class_name: str) -> Family | None:
    _load_all()
    for fam in FAMILIES.values():
        if class_name in fam.pipelines:
            return fam
    return None


def supported_families() -> str:
    """One line naming every family and the pipeline classes it serves (for refusals)."""
    _load_all()
    return "; ".join(f"{f.name} ({', '.join(f.pipelines)})" for f in FAMILIES.values())
