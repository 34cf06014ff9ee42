"""Sensitivity of the verdict to choices an opposing expert could question (exploratory, never confirmatory).

One row per variant of the primary analysis: the other attacks tested the same way, the pooled versus the
stratified comparison, and the primary test with each stratum (e.g. artist) left out in turn. Each row gives
the p-value and the counts; the report prints them beside the levels α = 0.1, 0.05, 0.01, 0.001 so a reader can
see whether the conclusion hangs on one attack, one artist or the choice of α. Only the plan's primary
statistic is confirmatory; these rows are not corrected for multiplicity.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.stats.tests import mann_whitney, van_elteren_test

__all__ = ["sensitivity_rows", "SENSITIVITY_ALPHAS"]

SENSITIVITY_ALPHAS: tuple[float, ...] = (0.1, 0.05, 0.01, 0.001)
MAX_LEFT_OUT = 20  # leave-one-stratum-out rows for at most this many (the largest) strata


def _single(plan: Any, s: np.ndarray, c: np.ndarray, s_st: list[str] | None, c_st: list[str] | None,
            stratified: bool) -> tuple[float, int, int, str]:
    if stratified:
        t = van_elteren_test(s, c, s_st, c_st, plan.n_permutations, plan.seed, plan.alternative)
        return t.p_value, t.n_suspect, t.n_control, "van Elteren (within strata)"
    t = mann_whitney(s, c, plan.alternative, n_resamples=plan.n_permutations, seed=plan.seed)
    return t.p_value, t.n_suspect, t.n_control, "Mann–Whitney (pooled controls)"


def sensitivity_rows(scores_by_attack: dict[str, pd.DataFrame], plan: Any, primary: str,
                     strata: dict[str, str] | None, stratum_column: str | None) -> list[dict[str, Any]]:
    """``scores_by_attack``: attack → one score per image (columns image_id, role, score). ``strata``: image id
    → stratum for every work when a stratum column exists (whether or not the plan is stratified)."""
    rows: list[dict[str, Any]] = []
    stratified = bool(plan.strata) and strata is not None
    cr = plan.control_role

    def split(df: pd.DataFrame, drop: str | None = None):
        s_df, c_df = df[df["role"] == "suspect"], df[df["role"] == cr]
        if drop is not None and strata is not None:
            s_df = s_df[s_df["image_id"].map(strata) != drop]
            c_df = c_df[c_df["image_id"].map(strata) != drop]
        s_st = [strata.get(i, "") for i in s_df["image_id"]] if strata is not None else None
        c_st = [strata.get(i, "") for i in c_df["image_id"]] if strata is not None else None
        return s_df["score"].to_numpy(float), c_df["score"].to_numpy(float), s_st, c_st

    def add(variant: str, attack: str, df: pd.DataFrame, strat: bool, drop: str | None = None) -> None:
        s, c, s_st, c_st = split(df, drop)
        if s.size == 0 or c.size == 0:
            return
        try:
            p, n_s, n_c, test = _single(plan, s, c, s_st, c_st, strat)
        except ValueError:  # e.g. no stratum with both sides left
            return
        rows.append({"variant": variant, "attack": attack, "test": test, "p_value": float(p), "n_suspect": n_s,
                     "n_control": n_c, "significant": {str(a): bool(p <= a) for a in SENSITIVITY_ALPHAS}})

    if primary in scores_by_attack:
        add("as planned" if not plan.features else "primary attack alone", primary, scores_by_attack[primary],
            stratified)
        if strata is not None:
            add("pooled controls" if stratified else f"within {stratum_column} strata", primary,
                scores_by_attack[primary], not stratified)
            sizes = pd.Series([strata.get(i, "") for i in scores_by_attack[primary]["image_id"]]).value_counts()
            groups = [g for g in sizes.index if g != ""][:MAX_LEFT_OUT]  # the largest strata first
            if len(groups) >= 2:
                for g in sorted(groups):
                    add(f"without {stratum_column} {g}", primary, scores_by_attack[primary], stratified, drop=g)
    for attack, df in scores_by_attack.items():
        if attack != primary:
            add("other attack", attack, df, stratified)
    return rows
