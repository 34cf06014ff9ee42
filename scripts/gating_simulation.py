"""Gating policy and difficulty adjustment, measured by simulation (issue 20).

Simulated audits with a known truth, run through the real gate and test functions of :mod:`audit.stats`:

- every work has ``D`` model-free image features (standard normal); the first one *drives* the membership
  score (image difficulty): one attack scores ``0.8·f0 + 0.2·f1 + noise`` (R² ≈ 0.5), a feature set of three
  attacks scores ``c_j·f0 + noise_j``; a member adds ``delta`` to its scores;
- designs: ``valid`` (suspects and controls drawn alike, no member), ``members`` (the same with half the
  suspects members: valid controls, a true positive), ``confound`` (suspects' f0 shifted by 0.5 SD, no member:
  a model-free difference that drives the score);
- sizes n_suspect ∈ {4, 10, 30} × n_control ∈ {40, 85, 300}; one attack (Mann–Whitney) and a feature set
  (cross-fitted).

For each simulated audit it records the sub-test p-values once and applies both gating policies to them:

- **before** (the landed gates): blind baseline withholds when either sub-test has p ≤ α (0.05); the placebo's
  implementation check withholds when its Clopper–Pearson interval lies above α;
- **after**: blind baseline = one test, Bonferroni of the two sub-tests, withholding at ``gate_alpha`` (0.01 on
  difficulty-adjusted scores, the default; α on raw scores); the placebo check is a reported self-test (never
  withholds);

and the primary test on the raw scores and on the difficulty-adjusted scores (:mod:`audit.stats.adjust`). A
*false conviction* is a rejection at α that no gate withheld, in a design without members.

    OMP_NUM_THREADS=1 python scripts/gating_simulation.py --reps 20      # -> results/gating/
    python scripts/gating_simulation.py --table-only                      # re-make the table from the records

Records are appended per simulated audit to ``results/gating/records.jsonl`` (resumable: reruns skip what is
there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from audit.stats import AnalysisPlan
from audit.stats.adjust import difficulty_adjust
from audit.stats.core import clopper_pearson
from audit.stats.gates import (PrimaryData, _primary_score_1d, _score_aligned_blind_test, blind_baseline_gate,
                               placebo_gate, run_primary)
from audit.types import ScoreTable

OUT = Path("results/gating")
D = 6
SIZES_S = (4, 10, 30)
SIZES_C = (40, 85, 300)
DESIGNS = ("valid", "members", "confound")
PRIMARIES = ("single", "feature_set")
COEF = {"single": [(0.8, 0.2)], "feature_set": [(0.8, 0.0), (0.5, 0.0), (0.3, 0.0)]}
DELTA = {"single": [0.8], "feature_set": [0.8, 0.5, 0.4]}
NOISE = 0.8


def simulate(design: str, primary: str, n_s: int, n_c: int, rng: np.random.Generator):
    n = n_s + n_c
    F = rng.normal(size=(n, D))
    is_s = np.r_[np.ones(n_s, bool), np.zeros(n_c, bool)]
    member = np.zeros(n, bool)
    if design == "confound":
        F[:n_s, 0] += 0.5
    if design == "members":
        member[: max(1, n_s // 2)] = True
    scores = []
    for (a, b), d in zip(COEF[primary], DELTA[primary]):
        scores.append(a * F[:, 0] + b * F[:, 1] + NOISE * rng.normal(size=n) + d * member)
    ids = [f"{'s' if s else 'c'}{i:05d}".ljust(64, "0") for i, s in enumerate(is_s)]
    return F, np.stack(scores, axis=1), is_s, ids


def _data(Y: np.ndarray, is_s: np.ndarray, ids: list[str], names: tuple[str, ...]) -> PrimaryData:
    vals = Y if Y.shape[1] > 1 else Y[:, 0]
    return PrimaryData(names[0] if len(names) == 1 else "feature set", names,
                       {"suspect": vals[is_s], "control": vals[~is_s]},
                       {"suspect": [i for i, s in zip(ids, is_s) if s], "control": [i for i, s in zip(ids, is_s) if not s]})


def one_audit(design: str, primary: str, n_s: int, n_c: int, rep: int, args) -> dict:
    rng = np.random.default_rng([rep, n_s, n_c, DESIGNS.index(design), PRIMARIES.index(primary)])
    F, Y, is_s, ids = simulate(design, primary, n_s, n_c, rng)
    names = tuple(f"a{j}" for j in range(Y.shape[1]))
    feats = pd.DataFrame(F, columns=[f"px_f{j}" for j in range(D)])
    feats.insert(0, "image_id", ids)
    plan = AnalysisPlan(features=names if len(names) > 1 else None, primary_attack=None if len(names) > 1 else names[0],
                        n_permutations=args.perms_single, crossfit_permutations=args.perms_crossfit,
                        n_placebo=max(1, args.placebo), seed=rep, auto_strata=False)
    rec = dict(design=design, primary=primary, n_s=n_s, n_c=n_c, rep=rep)
    # adjusted scores (label-free cross-fitted ridge on the features), through the real ScoreTable path
    rows = [dict(image_id=i, role="suspect" if s else "control", attack=nm, attack_params_hash="p",
                 target_fingerprint="fp", seed=0, score=float(Y[k, j]))
            for k, (i, s) in enumerate(zip(ids, is_s)) for j, nm in enumerate(names)]
    adj_table, _, _ = difficulty_adjust(ScoreTable(pd.DataFrame(rows)), feats, plan.crossfit_folds)
    wide = adj_table.df.pivot(index="image_id", columns="attack", values="score").loc[ids, list(names)]
    Ya = wide.to_numpy(float)
    omni = None
    for arm, YY in (("raw", Y), ("adjusted", Ya)):
        data = _data(YY, is_s, ids, names)
        t, _ = run_primary(plan, data.values["suspect"], data.values["control"], names, s_ids=data.ids["suspect"],
                           c_ids=data.ids["control"])
        rec[f"p_{arm}"] = float(t.p_value)
        if omni is None:  # the real gate, once (its omnibus sub-test does not depend on the scores)
            g = blind_baseline_gate(feats, data.ids["suspect"], data.ids["control"], plan, data)
            omni, p_al = g.details["p_omnibus"], g.details.get("p_aligned")
            assert abs(g.details["p_gate"] - min(1.0, 2 * min(omni, p_al))) < 1e-12  # the rule applied below
        else:  # the score-aligned sub-test on this arm's primary score, exactly as the gate computes it
            X = feats[[c for c in feats.columns if c != "image_id"]].to_numpy(float)
            Fz = (X - X.mean(axis=0)) / X.std(axis=0)
            y = np.r_[_primary_score_1d(data, "suspect"), _primary_score_1d(data, "control")]
            order = np.r_[np.flatnonzero(is_s), np.flatnonzero(~is_s)]
            p_al, _, _ = _score_aligned_blind_test(Fz[order], y, n_s, plan.crossfit_folds, plan.seed + 103,
                                                   plan.seed + 104)
        rec[f"blind_omni_{arm}"] = omni
        rec[f"blind_aligned_{arm}"] = p_al
        rec[f"blind_gate_{arm}"] = min(1.0, 2 * min(omni, p_al))
    # the landed placebo implementation check (raw scores; its CP interval against alpha)
    if args.placebo and n_c - n_s >= 2:
        pg = placebo_gate(_data(Y, is_s, ids, names), replace(plan, crossfit_permutations=args.placebo_ref))
        a = pg.details["at_alpha"]
        rec.update(placebo_k=a["k"], placebo_n=a["n"], placebo_lo=a["lo"])
    return rec


def table(records: list[dict], alpha: float = 0.05, gate_alpha: float = 0.01) -> str:
    df = pd.DataFrame(records)

    def cp(k, n):
        lo, hi = clopper_pearson(int(k), int(n))
        return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}] ({int(k)}/{int(n)})" if n else "–"

    df["blind_before"] = (df["blind_omni_raw"] <= alpha) | (df["blind_aligned_raw"].fillna(1) <= alpha)
    has_placebo = "placebo_lo" in df.columns and df["placebo_lo"].notna().any()
    df["placebo_before"] = df["placebo_lo"].fillna(0) > alpha if has_placebo else False
    df["withheld_before"] = df["blind_before"] | df["placebo_before"]
    # the gate level follows the adjustment (AnalysisPlan.gate_alpha): 0.01 on adjusted scores, alpha on raw ones
    df["blind_after_raw"] = df["blind_gate_raw"] <= alpha
    df["blind_after_adj"] = df["blind_gate_adjusted"] <= gate_alpha
    df["reject_raw"] = df["p_raw"] <= alpha
    df["reject_adj"] = df["p_adjusted"] <= alpha
    df["conv_before"] = df["reject_raw"] & ~df["withheld_before"]
    df["conv_after_raw"] = df["reject_raw"] & ~df["blind_after_raw"]
    df["conv_after_adj"] = df["reject_adj"] & ~df["blind_after_adj"]
    out = ["# Gating policy and difficulty adjustment, by simulation (issue 20)", "",
           f"Made by `python scripts/gating_simulation.py` ({len(df)} simulated audits; see the script's docstring for "
           f"the model). α = {alpha}, gate level after = {gate_alpha}. Rates with Clopper–Pearson 95% intervals.", ""]
    for design in DESIGNS:
        d = df[df["design"] == design]
        if d.empty:
            continue
        out += [f"## {design}", ""]
        if design in ("valid", "members"):
            out += ["Valid controls: every withholding is a false withholding.", "",
                    "| primary | audits | blind before | placebo before | any gate before | blind after (raw scores, gate at α) | "
                    "blind after (adjusted, gate at 0.01: the default) | reject raw | reject adjusted |", "|---|---|---|---|---|---|---|---|---|"]
            for pr in PRIMARIES + ("all",):
                e = d if pr == "all" else d[d["primary"] == pr]
                n = len(e)
                if not n:
                    continue
                pl = cp(e.placebo_before.sum(), n) if has_placebo else "see below"
                out.append(f"| {pr} | {n} | {cp(e.blind_before.sum(), n)} | {pl} | "
                           f"{cp(e.withheld_before.sum(), n)} | {cp(e.blind_after_raw.sum(), n)} | "
                           f"{cp(e.blind_after_adj.sum(), n)} | {cp(e.reject_raw.sum(), n)} | {cp(e.reject_adj.sum(), n)} |")
        else:
            out += ["Suspects differ from controls by 0.5 SD in the feature that drives the score; no member. "
                    "A false conviction = rejected at α and not withheld.", "",
                    "| primary | audits | reject raw | caught by gates before | false conviction before | "
                    "false conviction after (raw scores, gate at α) | reject adjusted | false conviction after (adjusted, gate "
                    "at 0.01: the default) |", "|---|---|---|---|---|---|---|---|"]
            for pr in PRIMARIES + ("all",):
                e = d if pr == "all" else d[d["primary"] == pr]
                n = len(e)
                if not n:
                    continue
                rr = e[e.reject_raw]
                out.append(f"| {pr} | {n} | {cp(e.reject_raw.sum(), n)} | "
                           f"{cp(rr.withheld_before.sum(), len(rr)) if len(rr) else '–'} | {cp(e.conv_before.sum(), n)} | "
                           f"{cp(e.conv_after_raw.sum(), n)} | {cp(e.reject_adj.sum(), n)} | {cp(e.conv_after_adj.sum(), n)} |")
        out.append("")
        out += [f"### {design}: per size (n_suspect × n_control), all primaries", "",
                "| n_s | n_c | audits | withheld before | withheld after (adjusted) | reject raw | reject adjusted | "
                "false conviction before | after (adjusted) |", "|---|---|---|---|---|---|---|---|---|"]
        for (ns, nc), e in d.groupby(["n_s", "n_c"]):
            n = len(e)
            out.append(f"| {ns} | {nc} | {n} | {e.withheld_before.mean():.3f} | {e.blind_after_adj.mean():.3f} | "
                       f"{e.reject_raw.mean():.3f} | {e.reject_adj.mean():.3f} | {e.conv_before.mean():.3f} | "
                       f"{e.conv_after_adj.mean():.3f} |")
        out.append("")
    return "\n".join(out)


def placebo_table(records: list[dict], alpha: float = 0.05) -> str:
    """The landed placebo implementation check as a withholding gate, on valid designs (its own run)."""
    df = pd.DataFrame(records)
    if df.empty or "placebo_lo" not in df.columns:
        return ""
    out = ["## The placebo implementation check as a gate (the landed policy), valid designs", "",
           "Each audit: 1000 random splits of the controls tested as the suspects are; the landed gate withheld when "
           "the Clopper–Pearson interval of their rejection rate at α lay entirely above α (a feature set compares "
           "every split with one shared reference null of 999 relabellings). Now a reported self-test: it withholds "
           "nothing.", "", "| primary | n_s | n_c | audits | withheld by the landed check | mean split rejection rate |",
           "|---|---|---|---|---|---|"]
    for (pr, ns, nc), e in df.groupby(["primary", "n_s", "n_c"]):
        k = int((e["placebo_lo"] > alpha).sum())
        lo, hi = clopper_pearson(k, len(e))
        out.append(f"| {pr} | {ns} | {nc} | {len(e)} | {k / len(e):.3f} [{lo:.3f}, {hi:.3f}] ({k}/{len(e)}) | "
                   f"{(e['placebo_k'] / e['placebo_n']).mean():.4f} |")
    k = int((df["placebo_lo"] > alpha).sum())
    lo, hi = clopper_pearson(k, len(df))
    out += ["", f"All: {k}/{len(df)} = {k / len(df):.3f} [{lo:.3f}, {hi:.3f}] withheld by the landed check; 0 now.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20, help="simulated audits per design × primary × size cell")
    ap.add_argument("--perms-single", type=int, default=999)
    ap.add_argument("--perms-crossfit", type=int, default=199)
    ap.add_argument("--placebo", type=int, default=1000, help="placebo splits (the landed check); 0 = skip")
    ap.add_argument("--placebo-ref", type=int, default=999, help="reference-null relabellings of the landed check")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS))
    ap.add_argument("--records", default="records.jsonl", help="records file under results/gating/")
    ap.add_argument("--sizes", nargs="+", default=None, help="n_s:n_c pairs to run (default: the full grid)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / args.records
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    grid = ([tuple(int(x) for x in sz.split(":")) for sz in args.sizes] if args.sizes
            else [(a, b) for a in SIZES_S for b in SIZES_C])
    done = {(r["design"], r["primary"], r["n_s"], r["n_c"], r["rep"]) for r in records}
    t0 = time.time()
    if not args.table_only:
        with path.open("a") as fh:
            for rep in range(args.reps):
                for design in args.designs:
                    for primary in PRIMARIES:
                        for n_s, n_c in grid:
                            key = (design, primary, n_s, n_c, rep)
                            if key in done:
                                continue
                            rec = one_audit(design, primary, n_s, n_c, rep, args)
                            records.append(rec)
                            fh.write(json.dumps(rec) + "\n")
                            fh.flush()
                print(f"rep {rep + 1}/{args.reps} done, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    if args.records == "records.jsonl":
        pb = OUT / "placebo_before.jsonl"
        extra = placebo_table([json.loads(x) for x in pb.read_text().splitlines()]) if pb.exists() else ""
        (OUT / "gating.md").write_text(table(records) + "\n\n" + extra + "\n")
        print((OUT / "gating.md").read_text())
    else:
        (OUT / (Path(args.records).stem + ".md")).write_text(placebo_table(records) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
