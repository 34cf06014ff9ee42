"""Reference analyses: the statistics must give value-for-value the committed ``analysis.json`` of several plans.

The references (``tests/data/reference_analysis/<plan>.json``) were written by this file's ``make_references()``
(``python tests/test_stats_reference.py``) before the statistics were reorganised into registries; any later
change to a number is then either a bug or a deliberate change that re-makes the references in the same commit
and says which values changed and why. Numbers are compared as ``audit-verify`` compares them
(:data:`audit.verify.FLOAT_REL_TOL`): the logistic fits' coefficients differ in their ninth digit between
OpenBLAS's AVX2 and AVX-512 kernels (``OPENBLAS_CORETYPE=Haswell`` reproduces the references on an AVX-512 CPU).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.stats import AnalysisPlan, analyze
from audit.verify import numbers_agree
from audit.types import ScoreTable

REF = Path(__file__).parent / "data" / "reference_analysis"
ATTACKS = ("loss", "pia", "pian")

PLANS: dict[str, dict] = {
    "mann_whitney": dict(primary_attack="loss", auto_strata=False),
    "permutation": dict(primary_attack="loss", test="permutation", auto_strata=False),
    "two_sided": dict(primary_attack="pia", alternative="two-sided", auto_strata=False),
    "crossfit": dict(features=list(ATTACKS), auto_strata=False),
    "stratified_van_elteren": dict(primary_attack="loss", strata=["artist"]),
    "stratified_crossfit": dict(features=list(ATTACKS), strata=["artist"]),
    "waived_blind_gate": dict(primary_attack="loss", gates=["placebo", "positive_control", "power"], auto_strata=False),
    "adjusted": dict(primary_attack="loss", adjust="features", auto_strata=False),
}
COMMON = dict(n_permutations=499, crossfit_permutations=99, n_bootstrap=100, n_placebo=200, n_power_resamples=100)


def _data() -> tuple[ScoreTable, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(20261202)
    rows, imgs, feats = [], [], []
    artists = ["a", "b", "c"]
    for role, n, shift in (("suspect", 12, 0.7), ("control", 90, 0.0), ("member", 20, 0.9), ("nonmember", 30, 0.0)):
        for i in range(n):
            iid = f"{role}{i:04d}".ljust(64, "0")
            art = artists[i % 3]
            f = rng.normal(size=3)
            base = {"a": -0.3, "b": 0.0, "c": 0.4}[art] + 0.5 * f[0]
            for j, atk in enumerate(ATTACKS):
                rows.append(dict(image_id=iid, role=role, attack=atk, attack_params_hash="p", target_fingerprint="fp",
                                 seed=0, score=float(np.round(base + shift * (1.0 - 0.3 * j) + rng.normal(0, 1), 3))))
            imgs.append(dict(image_id=iid, role=role, artist=art))
            feats.append(dict(image_id=iid, role=role, px_a=float(f[0]), px_b=float(f[1]), px_c=float(f[2])))
    return ScoreTable(pd.DataFrame(rows)), pd.DataFrame(imgs), pd.DataFrame(feats)


def _result(name: str) -> dict:
    table, imgs, feats = _data()
    plan = AnalysisPlan(**{**COMMON, **PLANS[name]})
    return analyze(table, imgs, plan, feats, recorded_plan_sha256=plan.sha256()).to_dict()


def _strip(d):
    """Prose is compared elsewhere (the report tests); these references pin the numbers and decisions."""
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k not in ("summary", "sentence", "notes", "method", "purpose",
                                                                   "how", "power_how")}
    if isinstance(d, list):
        return [_strip(v) for v in d]
    return d


def _compare(a, b, where=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _compare(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            _compare(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert numbers_agree(a, b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def make_references() -> None:
    REF.mkdir(parents=True, exist_ok=True)
    for name in PLANS:
        (REF / f"{name}.json").write_text(json.dumps(_strip(_result(name)), indent=0, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", list(PLANS))
def test_analysis_equals_its_committed_reference(name):
    ref = json.loads((REF / f"{name}.json").read_text())
    _compare(ref, json.loads(json.dumps(_strip(_result(name)))), name)


if __name__ == "__main__":
    make_references()
