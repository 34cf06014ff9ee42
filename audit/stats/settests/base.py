"""The registry entry every set-level test provides (one file per test under :mod:`audit.stats.settests`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["SetTest"]


@dataclass(frozen=True)
class SetTest:
    """A set-level test as the analysis, the gates and the report use it.

    ``run(plan, s, c, names, seed, s_ids, c_ids, s_strata, c_strata) -> (TestResult, CrossfitResult | None)``:
    the test of suspects ``s`` vs controls ``c`` as the plan configures it. ``batch(plan, S, C, seed, s_strata,
    c_strata) -> p-values``: the same test on many rows at once, each row's p-value exactly what ``run`` gives it
    (None: no batched form; the gates then use their own path). ``method(plan)``: the sentence the report's
    Methods section prints. ``needs_strata``: runs only for a stratified plan. ``feature_set``: combines several
    attacks (test of a declared feature set). ``per_attack``: computed for every attack as an exploratory table.
    """

    name: str
    label: str
    run: Callable[..., Any]
    batch: Callable[..., Any] | None
    method: Callable[[Any], str]
    needs_strata: bool = False
    feature_set: bool = False
    per_attack: bool = True
