"""Difficulty adjustment (audit.stats.adjust) over repeated draws: label-free (adjusted scores do not depend on the
roles or the row order), a feature-driven shift without membership is rejected at about α, a membership shift is
still detected (scripts/difficulty_benchmark.py measures the same on the ground-truth benchmarks)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.stats import AnalysisPlan
from audit.stats.adjust import difficulty_adjust
from audit.stats.gates import run_primary
from audit.types import ScoreTable

ALPHA = 0.05
DRAWS = 100
PLAN = AnalysisPlan(primary_attack="loss", gates=(), auto_strata=False)


def _design(rng: np.random.Generator, n_s: int, n_c: int, feature_shift: float, member_shift: float):
    ids = [f"{rng.integers(1 << 62):016x}".ljust(64, "0") for _ in range(n_s + n_c)]
    F = rng.normal(size=(n_s + n_c, 4))
    F[:n_s, 0] += feature_shift  # suspects differ in a model-free feature that drives the score
    score = 0.8 * F[:, 0] + 0.3 * F[:, 1] + 0.5 * rng.normal(size=n_s + n_c)
    score[:n_s] += member_shift  # membership: a shift the features do not explain
    roles = ["suspect"] * n_s + ["control"] * n_c
    df = pd.DataFrame({"image_id": ids, "role": roles, "attack": "loss", "attack_params_hash": "p",
                       "target_fingerprint": "fp", "seed": 0, "score": score})
    feats = pd.DataFrame(F, columns=[f"px_f{j}" for j in range(F.shape[1])])
    feats.insert(0, "image_id", ids)
    feats.insert(1, "role", roles)
    return ScoreTable(df), feats


def _p(table: ScoreTable, n_s: int) -> float:
    s = table.df["score"].to_numpy()
    return float(run_primary(PLAN, s[:n_s], s[n_s:])[0].p_value)


def _adjusted(table: ScoreTable, feats: pd.DataFrame) -> ScoreTable:
    adj, _, _ = difficulty_adjust(table, feats)
    return ScoreTable(adj.df.set_index("image_id").loc[table.df["image_id"]].reset_index())


def test_adjusted_scores_do_not_depend_on_roles_or_row_order():
    rng = np.random.default_rng(0)
    table, feats = _design(rng, 20, 120, 0.5, 0.5)
    base = _adjusted(table, feats).df["score"].to_numpy()
    for k in range(3):
        df = table.df.copy()
        df["role"] = rng.permutation(np.array(["suspect", "control", "member", "nonmember"] * 35))
        f2 = feats.copy()
        f2["role"] = df["role"].to_numpy()  # the features' own role column is ignored too
        shuffled = df.sample(frac=1.0, random_state=k)
        out = _adjusted(ScoreTable(shuffled), f2.sample(frac=1.0, random_state=k))
        got = out.df.set_index("image_id").loc[table.df["image_id"], "score"].to_numpy()
        np.testing.assert_array_equal(got, base)


def test_feature_driven_shift_is_not_a_conviction_but_membership_is_detected():
    rng = np.random.default_rng(1)
    n_s, n_c = 20, 200
    confound = {"raw": [], "adj": []}
    members = {"raw": [], "adj": []}
    for _ in range(DRAWS):
        table, feats = _design(rng, n_s, n_c, feature_shift=0.5, member_shift=0.0)
        confound["raw"].append(_p(table, n_s))
        confound["adj"].append(_p(_adjusted(table, feats), n_s))
    for _ in range(30):
        table, feats = _design(rng, n_s, n_c, feature_shift=0.0, member_shift=0.6)
        members["raw"].append(_p(table, n_s))
        members["adj"].append(_p(_adjusted(table, feats), n_s))
    rate = {k: float(np.mean(np.array(v) <= ALPHA)) for k, v in confound.items()}
    power = {k: float(np.mean(np.array(v) <= ALPHA)) for k, v in members.items()}
    # raw scores convict the confound often; adjusted ones at about α (binomial 3-SE allowance over DRAWS draws)
    assert rate["raw"] > 0.25  # 0.43 measured (issue 20: 36-44%)
    assert rate["adj"] <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / DRAWS)
    # the membership shift stands out more once the difficulty variance is removed
    assert power["adj"] >= 0.8 and power["adj"] >= power["raw"]
