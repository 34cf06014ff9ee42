"""Choose the default primary statistic by measurement (issue 12): which pre-declared default needs the
fewest suspect works for p ≤ 0.01 while its false-positive rate stays ≤ α over ≥ 1000 null draws.

Reads the per-image member / non-member scores the committed ground-truth benchmarks already hold
(``results/benchmarks/<target>/benchmark.json``, made by ``scripts/benchmark.py``; every attack there scored
the same works in the same order, so per-work feature vectors line up; ``demo``: the committed demo audit's
``results/demo/scores.parquet``, its suspects and known members being the members) and, for each candidate default,
simulates audits:

- **power**: ``n`` suspects drawn from the known members, controls drawn from the known non-members; the share
  of draws with p ≤ α, for n in ``--sizes``; "suspects needed" = the fewest n with power ≥ 0.8;
- **null**: 20 suspects and the controls both drawn from the non-members (disjoint), ``--null-draws`` draws;
  the false-positive rate at α with its Clopper–Pearson 95% interval.

Candidates (each only where its attacks ran on the target):

- ``loss``: the plain loss attack, one-sided Mann–Whitney U (the old default);
- ``pia``: PIA alone, Mann–Whitney U (a cheap single alternative);
- ``suite``: the default attack list (loss, pia, pian; those the target supports) combined by the cross-fitted
  non-negative logistic test (``test=crossfit``);
- ``loss_calibrated``: loss calibrated against the base model (LoRA targets), Mann–Whitney U;
- ``suite_calibrated``: the calibrated versions of the suite, cross-fitted (LoRA targets);
- ``suite_plus_calibrated``: ``loss_calibrated`` and the suite together, cross-fitted (LoRA targets: exactly
  the scores a default LoRA run computes).

The cross-fitted test uses fewer label permutations here than an audit (``--perm-power`` for the power draws,
``--perm-null`` for the null draws; an audit uses 999): a permutation p-value is valid for any number of
permutations, and fewer only makes the measured power a slight underestimate.

    OMP_NUM_THREADS=1 python scripts/default_primary.py           # -> results/default_primary/
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.stats.tests import clopper_pearson, crossfit_test, mann_whitney_batch  # noqa: E402

SUITE = ["loss", "pia", "pian"]
TARGETS = ["ddpm_openclipart", "demo", "lora_synthetic", "lora_flow_synthetic"]


def load_scores(name: str) -> dict[str, dict[str, np.ndarray]]:
    if name == "demo":  # the committed demo audit: suspects + known members are members, the rest are not
        import pandas as pd

        df = pd.read_parquet(ROOT / "results" / "demo" / "scores.parquet")
        df["truth"] = df["role"].map({"suspect": "member", "member": "member", "control": "nonmember",
                                      "nonmember": "nonmember"})
        wide = df.pivot_table(index=["image_id", "truth"], columns="attack", values="score").reset_index()
        return {a: {t: wide.loc[wide["truth"] == t, a].to_numpy(float) for t in ("member", "nonmember")}
                for a in df["attack"].unique()}
    d = json.loads((ROOT / "results" / "benchmarks" / name / "benchmark.json").read_text())
    return {a["attack"]: {r: np.asarray(v, dtype=float) for r, v in a["scores"].items()}
            for a in d["attacks"] if a.get("status") == "ok"}


def candidates(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, list[str]]:
    """candidate name -> its attacks (one attack: Mann–Whitney U; several: cross-fitted)."""
    out: dict[str, list[str]] = {}
    for single in ("loss", "pia"):
        if single in scores:
            out[single] = [single]
    suite = [a for a in SUITE if a in scores]
    if len(suite) >= 2:
        out["suite"] = suite
    if "loss_calibrated" in scores:
        out["loss_calibrated"] = ["loss_calibrated"]
    cal = [f"{a}_calibrated" for a in SUITE if f"{a}_calibrated" in scores]
    if len(cal) >= 2:
        out["suite_calibrated"] = cal
    if "loss_calibrated" in scores and len(suite) >= 2:
        out["suite_plus_calibrated"] = ["loss_calibrated", *suite]  # what a default LoRA run has scored anyway
    return out


def matrix(scores: dict[str, dict[str, np.ndarray]], attacks: list[str], role: str) -> np.ndarray:
    return np.column_stack([scores[a][role] for a in attacks])


def pvalues(S: np.ndarray, C: np.ndarray, n_perm: int, seed: int) -> float:
    """p of the audit's test: Mann–Whitney U for one column, the cross-fitted test for several."""
    if S.shape[1] == 1:
        return float(mann_whitney_batch(S[:, 0][None], C[:, 0], n_resamples=999, seed=seed)[0])
    return crossfit_test(S, C, n_permutations=n_perm, folds=5, seed=seed).test.p_value


def simulate(pos: np.ndarray, neg: np.ndarray, sizes: list[int], draws: int, null_draws: int, null_size: int,
             max_controls: int, alpha: float, perm_power: int, perm_null: int, seed: int,
             fraction: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    power = []
    for n in sizes:
        hits, ps = 0, []
        k = int(round(n * fraction))
        if k > len(pos) or n - k + 2 > len(neg):
            power.append({"n_suspect": n, "available": False})
            continue
        for i in range(draws):
            perm = rng.permutation(len(neg))
            s = np.vstack([pos[rng.choice(len(pos), k, replace=False)], neg[perm[:n - k]]])
            c = neg[perm[n - k:][:max_controls]]
            p = pvalues(s, c, perm_power, seed + i)
            ps.append(p)
            hits += p <= alpha
        power.append({"n_suspect": n, "available": True, "n_control": int(min(max_controls, len(neg))),
                      "draws": draws, "power": hits / draws, "median_p": float(np.median(ps))})
    rej = 0
    n_c = min(max_controls, len(neg) - null_size)
    for i in range(null_draws):
        perm = rng.permutation(len(neg))
        p = pvalues(neg[perm[:null_size]], neg[perm[null_size:null_size + n_c]], perm_null, seed + 10_000 + i)
        rej += p <= alpha
    lo, hi = clopper_pearson(rej, null_draws)
    needed = [r["n_suspect"] for r in power if r.get("available") and r["power"] >= 0.8]
    return {"power": power, "needed_power80": min(needed) if needed else None,
            "null": {"n_suspect": null_size, "n_control": n_c, "draws": null_draws, "rejections": int(rej),
                     "fpr": rej / null_draws, "fpr_ci": [lo, hi]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[5, 10, 15, 20, 30])
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--null-draws", type=int, default=1000)
    ap.add_argument("--null-size", type=int, default=20)
    ap.add_argument("--max-controls", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--perm-power", type=int, default=199)
    ap.add_argument("--perm-null", type=int, default=99)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--candidates", nargs="*", default=None, help="only these candidates (default: all)")
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="share of members among the suspects in the power draws (the rest are non-members)")
    ap.add_argument("--merge", action="store_true", help="add to an existing default_primary.json in --out")
    ap.add_argument("--out", default=str(ROOT / "results" / "default_primary"))
    a = ap.parse_args()
    t0 = time.time()
    out = Path(a.out)
    command = "python scripts/default_primary.py " + " ".join(sys.argv[1:])
    result = {"command": command, "settings": vars(a), "targets": {}}
    if a.merge and (out / "default_primary.json").is_file():
        result = json.loads((out / "default_primary.json").read_text())
        result["command"] = result["command"] + "; then " + command
    for name in a.targets:
        scores = load_scores(name)
        rows = result["targets"].get(name, {}).get("candidates", {})
        for cand, attacks in candidates(scores).items():
            if a.candidates and cand not in a.candidates:
                continue
            t = time.time()
            sim = simulate(matrix(scores, attacks, "member"), matrix(scores, attacks, "nonmember"), a.sizes,
                           a.draws, a.null_draws, a.null_size, a.max_controls, a.alpha, a.perm_power,
                           a.perm_null, a.seed, a.fraction)
            rows[cand] = {"attacks": attacks, "test": "mann_whitney" if len(attacks) == 1 else "crossfit", **sim,
                          "seconds": time.time() - t}
            print(f"{name} {cand}: needed {sim['needed_power80']}, null FPR {sim['null']['fpr']:.4f} "
                  f"({time.time() - t:.0f} s)", flush=True)
        n_mem = len(next(iter(scores.values()))["member"])
        n_non = len(next(iter(scores.values()))["nonmember"])
        result["targets"][name] = {"n_member": n_mem, "n_nonmember": n_non, "candidates": rows}
    result["wall_s"] = result.get("wall_s", 0.0) + time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "default_primary.json").write_text(json.dumps(result, indent=1))
    (out / "default_primary.md").write_text(render(result))
    print(f"wrote {out / 'default_primary.md'}")


def render(r: dict) -> str:
    s = r["settings"]
    lines = ["# Default primary statistic, chosen by measurement (issue 12)", "",
             f"Made by `{r['command'].strip()}` ({r['wall_s']:.0f} s, 1 CPU thread), from the per-image scores in "
             "the committed `results/benchmarks/<target>/benchmark.json`.", "",
             f"Power: suspects drawn from the known members, ≤ {s['max_controls']} controls from the non-members, "
             f"{s['draws']} draws per size; *needed* = fewest suspects with power ≥ 0.8 at α = {s['alpha']} "
             f"(sizes tried: {', '.join(map(str, s['sizes']))}). Null: {s['null_size']} suspects and the controls "
             f"both non-members, {s['null_draws']} draws; false-positive rate at α with its Clopper–Pearson 95% "
             f"interval. Cross-fitted candidates use {s['perm_power']} label permutations in the power draws and "
             f"{s['perm_null']} in the null draws (an audit uses 999; fewer only lowers the measured power).", ""]
    for name, t in r["targets"].items():
        lines += [f"## {name} ({t['n_member']} members, {t['n_nonmember']} non-members)", "",
                  "| candidate | attacks | test | " + " | ".join(f"power n={n}" for n in s["sizes"])
                  + " | needed | null FPR [95% CI] |",
                  "|---|---|---|" + "---|" * len(s["sizes"]) + "---|---|"]
        for cand, c in t["candidates"].items():
            pw = [f"{p['power']:.2f}" if p.get("available") else "–" for p in c["power"]]
            nl = c["null"]
            lines.append(f"| {cand} | {', '.join(c['attacks'])} | {c['test']} | " + " | ".join(pw)
                         + f" | {c['needed_power80'] if c['needed_power80'] is not None else '> ' + str(max(s['sizes']))}"
                         f" | {nl['fpr']:.4f} [{nl['fpr_ci'][0]:.4f}, {nl['fpr_ci'][1]:.4f}] ({nl['rejections']}/"
                         f"{nl['draws']}) |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
