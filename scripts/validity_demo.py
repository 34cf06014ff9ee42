"""Validity figures on the demo scenario's ground truth: verdicts, placebo FPR, blind-baseline gate.

    python scripts/validity_demo.py [RESULTS_FOLDER] [--out results/validity] [--repeats 200] [--gate-repeats 20]

RESULTS_FOLDER is a results folder of the default audit (`audit-run`; default: results/demo). The demo
model was trained on 48 known works; every scored work is therefore a known member (roles suspect and
member in the demo) or a known non-member (roles control and nonmember). This script re-assigns those
roles to build audits whose truth is known — no model is needed, only the stored scores and model-free
features — and runs the full analysis (primary test + every validity gate) on each:

* positive: the demo's own split (16 members as suspects vs 360 held-out controls);
* mixed: a few members hidden among many non-member suspects;
* null: non-member suspects only;
* shifted controls: non-member suspects of one artist against controls by another artist — a false
  accusation waiting to happen, which the blind baseline must catch (verdict withheld);
* matched controls: the same suspects against controls by the same artist (the gate must stay quiet).

It also measures the placebo false-positive rate at α = 0.01 and repeats the mixed/null/shifted/matched
draws many times (seeded) to give rates with Clopper–Pearson intervals. Writes validity.json and
validity.md into --out.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import io  # noqa: E402
from audit.stats import AnalysisPlan, analyze, clopper_pearson  # noqa: E402
from audit.stats import gates as G  # noqa: E402
from audit.stats.tests import mann_whitney_batch, storey_pi0, conformal_pvalues  # noqa: E402
from audit.types import ScoreTable  # noqa: E402

ATTACK = "loss"  # the demo's primary attack (first configured)


def _truth(images: pd.DataFrame) -> pd.Series:
    return images.set_index("image_id")["role"].isin(["suspect", "member"])


def _relabel(run: io.RunData, roles: dict[str, str]) -> tuple[ScoreTable, pd.DataFrame]:
    """Score table and feature table with the given roles; works without a role are left out."""
    df = run.scores.df[run.scores.df["image_id"].isin(roles)].copy()
    df["role"] = df["image_id"].map(roles)
    feats = run.features[run.features["image_id"].isin(roles)].copy()
    feats["role"] = feats["image_id"].map(roles)
    return ScoreTable(df.reset_index(drop=True)), feats.reset_index(drop=True)


def _summary(res, truth_members: int | None, n_suspect: int) -> dict:
    a = res.attack(res.primary_attack)
    out = {
        "decision": res.verdict.decision,
        "p_value": res.verdict.p_value,
        "sentence": res.verdict.sentence,
        "suspect_members_true": truth_members,
        "n_suspect": n_suspect,
        "n_control": res.primary_test.n_control if res.primary_test else None,
        "auc_suspect_control": res.primary_auc,
        "storey_members": None if a.storey is None else {"estimate": a.storey.n_members, "lo": a.storey.lo,
                                                            "hi": a.storey.hi},
        "holm_flagged": a.n_flagged_holm,
        "gates": {g.name: {"status": g.status, "summary": g.summary} for g in res.gates},
    }
    bb = res.gate("blind_baseline")
    if bb is not None and bb.status in ("pass", "fail"):
        out["blind_baseline"] = {"auc": bb.details["auc"], "p_value": bb.details["p_value"],
                                 "top_features": [f["feature"] for f in bb.details["per_feature"][:3]]}
    pl = res.gate("placebo")
    if pl is not None and pl.status in ("pass", "fail"):
        out["placebo_at_alpha"] = pl.details["at_alpha"]
    return out


def _rate(k: int, n: int) -> dict:
    lo, hi = clopper_pearson(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n, "lo": lo, "hi": hi}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", type=Path, default=Path("results/demo"))
    ap.add_argument("--out", type=Path, default=Path("results/validity"))
    ap.add_argument("--repeats", type=int, default=500, help="seeded draws of the mixed and null scenarios")
    ap.add_argument("--gate-repeats", type=int, default=20, help="seeded draws of the shifted/matched scenarios")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", nargs="*", default=None,
                    help="primary statistic = these attacks cross-fitted (the default plan of the default attack "
                         "list: loss pia pian); without it the primary statistic is the loss attack alone")
    ap.add_argument("--cf-permutations", type=int, default=199,
                    help="label permutations per cross-fitted test in the repeated draws (the audit uses 999)")
    args = ap.parse_args(argv)
    t0 = time.time()
    run = io.read_run(args.results)
    if run.features is None:
        raise SystemExit(f"{args.results} has no features.parquet: run `audit-run` (default config) first")
    images = run.images.set_index("image_id")
    truth = _truth(run.images)
    members = sorted(truth[truth].index)
    held_out = sorted(truth[~truth].index)
    artist = images["artist"]
    # the default analysis plan (configs/stats/default.yaml), with the default primary statistic of the default
    # attack list when --features is given (audit.defaults.choose_default_primary)
    plan = AnalysisPlan(seed=args.seed, features=tuple(args.features) if args.features else None)
    rng = np.random.default_rng(args.seed)
    out: dict = {"source": str(args.results), "attack": ATTACK, "plan": plan.to_dict(),
                 "truth": {"members": len(members), "non_members": len(held_out)}, "scenarios": {}}

    def run_scenario(name: str, desc: str, roles: dict[str, str], plan_: AnalysisPlan = plan) -> dict:
        scores, feats = _relabel(run, roles)
        res = analyze(scores, None, plan_, features=feats)
        sus = [i for i, r in roles.items() if r == "suspect"]
        s = {"description": desc, **_summary(res, int(truth[sus].sum()), len(sus))}
        out["scenarios"][name] = s
        print(f"[{time.time() - t0:6.1f}s] {name}: {s['decision']} (p = {s['p_value']:.3g})")
        return s

    # 1. positive: the demo's own roles
    run_scenario("positive", "the demo audit: 16 training works as suspects vs 360 held-out controls",
                 dict(zip(run.images["image_id"], run.images["role"])))

    # 2. mixed: 6 members among 60 suspects
    mem = list(rng.permutation(members))
    non = list(rng.permutation(held_out))
    roles = {i: "suspect" for i in mem[:6] + non[:54]}
    roles.update({i: "control" for i in non[54:354]})
    roles.update({i: "member" for i in mem[6:]})
    roles.update({i: "nonmember" for i in non[354:]})
    run_scenario("mixed", "6 training works hidden among 60 suspects (54 held-out works); 300 held-out controls; "
                 "the other 42 training works as known members", roles)

    # 3. null: non-member suspects only
    roles = {i: "suspect" for i in non[:60]}
    roles.update({i: "control" for i in non[60:360]})
    roles.update({i: "member" for i in mem})
    roles.update({i: "nonmember" for i in non[360:]})
    run_scenario("null", "60 held-out works as suspects (none trained on) vs 300 held-out controls; "
                 "all 48 training works as known members", roles)

    # 4./5. shifted vs matched controls: suspects = held-out works of one artist
    by_artist = {a: [i for i in held_out if artist[i] == a] for a in sorted(artist.unique())}
    # the artist whose held-out works score most member-like, and the one scoring least (the worst case)
    loss = run.scores.df[run.scores.df["attack"] == ATTACK].groupby("image_id")["score"].mean()
    means = {a: float(loss[ids].mean()) for a, ids in by_artist.items()}
    hi_a, lo_a = max(means, key=means.get), min(means, key=means.get)
    own = list(rng.permutation(by_artist[hi_a]))
    roles = {i: "suspect" for i in own[:40]}
    roles.update({i: "control" for i in by_artist[lo_a]})
    roles.update({i: "member" for i in mem})
    s = run_scenario("shifted_controls", f"40 held-out works by '{hi_a}' as suspects (none trained on) vs "
                     f"{len(by_artist[lo_a])} held-out controls by '{lo_a}'", roles)
    roles = {i: "suspect" for i in own[:40]}
    roles.update({i: "control" for i in own[40:]})
    roles.update({i: "member" for i in mem})
    run_scenario("matched_controls", f"the same 40 held-out works by '{hi_a}' vs the other {len(own) - 40} "
                 f"held-out works by '{hi_a}'", roles)
    del s

    # Placebo FPR at α = 0.01 on the demo's controls (5000 splits for a tight interval)
    demo_roles = dict(zip(run.images["image_id"], run.images["role"]))
    scores, _ = _relabel(run, demo_roles)
    placebo = {}
    for alpha in (0.01, 0.05):
        p_ = replace(plan, alpha=alpha, n_placebo=5000)
        df = scores.df[scores.df["attack"] == ATTACK].groupby(["image_id", "role"], as_index=False)["score"].mean()
        data = G.PrimaryData(ATTACK, (ATTACK,), {r: df.loc[df["role"] == r, "score"].to_numpy(float)
                                                 for r in ("suspect", "control", "member", "nonmember")}, {})
        g = G.placebo_gate(data, p_)
        placebo[str(alpha)] = {"status": g.status, **g.details["at_alpha"], "n_pseudo_suspect": g.details["n_pseudo_suspect"],
                               "n_pseudo_control": g.details["n_pseudo_control"]}
    out["placebo"] = placebo
    print(f"[{time.time() - t0:6.1f}s] placebo FPR at 0.01: {placebo['0.01']['rate']:.4f}")

    # Repeated draws: primary-test rejection rates (mixed: power; null: false-positive rate) and Storey.
    sc = loss
    if plan.features:
        wide = run.scores.df.pivot_table(index="image_id", columns="attack", values="score", aggfunc="mean")[
            list(plan.features)]
    rates = {}
    for name, n_mem in (("null_0_of_60", 0), ("mixed_3_of_60", 3), ("mixed_6_of_60", 6), ("mixed_12_of_60", 12),
                        ("mixed_24_of_60", 24)):
        S, C, est, SI, CI = [], [], [], [], []
        for _ in range(args.repeats):
            m_ = list(rng.choice(members, n_mem, replace=False)) if n_mem else []
            perm = list(rng.permutation(held_out))
            sus = m_ + perm[: 60 - n_mem]
            ctl = perm[60 - n_mem: 360 - n_mem]
            S.append(sc[sus].to_numpy())
            C.append(sc[ctl].to_numpy())
            SI.append(sus)
            CI.append(ctl)
            est.append(60 * (1 - storey_pi0(conformal_pvalues(S[-1], C[-1]), plan.storey_lambda)))
        if plan.features:  # the cross-fitted test on the feature set, draw by draw
            from audit.stats.tests import crossfit_test

            p = np.array([crossfit_test(wide.loc[list(s_ids)].to_numpy(float), wide.loc[list(c_ids)].to_numpy(float),
                                        n_permutations=args.cf_permutations, folds=plan.crossfit_folds,
                                        seed=args.seed + k, suspect_ids=list(s_ids), control_ids=list(c_ids)
                                        ).test.p_value for k, (s_ids, c_ids) in enumerate(zip(SI, CI))])
        else:
            p = mann_whitney_batch(np.array(S), np.array(C), plan.alternative)
        est = np.array(est)
        rates[name] = {"reject_at_0.05": _rate(int((p <= 0.05).sum()), len(p)),
                       "reject_at_0.01": _rate(int((p <= 0.01).sum()), len(p)),
                       "storey_members_mean": float(est.mean()), "storey_members_sd": float(est.std()),
                       "true_members": n_mem}
    # Shifted vs matched: how often the raw test rejects (a false accusation) and how often the blind gate fires.
    gplan = replace(plan, crossfit_permutations=199)
    feats = run.features.set_index("image_id")
    cols = [c for c in feats.columns if c != "role"]
    for name in ("shifted", "matched"):
        fired = raw = 0
        for r in range(args.gate_repeats):
            own = list(rng.permutation(by_artist[hi_a]))
            sus = own[:40]
            ctl = list(rng.permutation(by_artist[lo_a]))[:75] if name == "shifted" else own[40:]
            raw += bool(mann_whitney_batch(sc[sus].to_numpy()[None], sc[ctl].to_numpy())[0] <= plan.alpha)
            f = feats.loc[sus + ctl, cols].reset_index()
            g = G.blind_baseline_gate(f, sus, ctl, replace(gplan, seed=args.seed + r))
            fired += g.status == "fail"
        rates[f"{name}_controls"] = {"raw_test_rejects": _rate(raw, args.gate_repeats),
                                     "blind_gate_fires": _rate(fired, args.gate_repeats),
                                     "suspect_artist": hi_a, "control_artist": lo_a if name == "shifted" else hi_a}
        print(f"[{time.time() - t0:6.1f}s] {name}: raw rejects {raw}/{args.gate_repeats}, gate fires "
              f"{fired}/{args.gate_repeats}")
    out["repeats"] = rates
    out["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validity.json").write_text(json.dumps(out, indent=2, default=float))
    (args.out / "validity.md").write_text(_markdown(out, args))
    print(f"wrote {args.out / 'validity.json'} and {args.out / 'validity.md'}")
    return out


def _pct(r: dict) -> str:
    return f"{r['rate'] * 100:.1f}% [{r['lo'] * 100:.1f}, {r['hi'] * 100:.1f}] ({r['k']}/{r['n']})"


def _markdown(out: dict, args) -> str:
    lines = [
        "# Validity of the audit's verdicts on the demo scenario (known truth)",
        "",
        f"Source: `{out['source']}` (scores of the demo DDPM trained on {out['truth']['members']} known works; "
        f"{out['truth']['non_members']} held-out works). "
        + (f"Primary statistic: the feature set {', '.join(out['plan']['features'])} cross-fitted (the default of the "
           f"default attack list; per-work p-values and Storey from `{out['attack']}`; the repeated draws use "
           f"{args.cf_permutations} label permutations per test; the placebo rows and the shifted/matched raw test "
           f"use `{out['attack']}` alone)" if out['plan']['features'] else
           f"Primary attack `{out['attack']}`, one-sided Mann–Whitney U")
        + f", the default analysis plan otherwise (α = {out['plan']['alpha']}, {out['plan']['n_placebo']} placebo "
        f"splits, {out['plan']['crossfit_permutations']} permutations for the blind baseline). Produced by "
        f"`python scripts/validity_demo.py {out['source']} --repeats {args.repeats} --gate-repeats {args.gate_repeats}"
        + (f" --features {' '.join(out['plan']['features'])}" if out['plan']['features'] else "")
        + f"` in {out['seconds']:.0f} s.",
        "",
        "## Verdicts (full analysis, every gate)",
        "",
        "| scenario | suspects (of which trained on) | controls | verdict | p | blind baseline | placebo FPR at α | positive control | Storey: est. members [CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in out["scenarios"].items():
        bb = s.get("blind_baseline")
        bb_txt = f"{s['gates']['blind_baseline']['status']} (AUC {bb['auc']:.2f}, p = {bb['p_value']:.3g})" if bb else \
            s["gates"]["blind_baseline"]["status"]
        pl = s.get("placebo_at_alpha")
        st = s["storey_members"]
        lines.append(
            f"| {name} | {s['n_suspect']} ({s['suspect_members_true']}) | {s['n_control']} | **{s['decision']}** | "
            f"{s['p_value']:.3g} | {bb_txt} | {pl['rate']:.3f} [{pl['lo']:.3f}, {pl['hi']:.3f}] | "
            f"{s['gates']['positive_control']['status']} | "
            f"{st['estimate']:.1f} [{st['lo']:.1f}, {st['hi']:.1f}] |")
    lines += ["", "Scenarios:", ""]
    lines += [f"- **{n}**: {s['description']}." for n, s in out["scenarios"].items()]
    lines += ["", "Verdict sentences:", ""]
    lines += [f"- **{n}**: {s['sentence']}" for n, s in out["scenarios"].items()]
    pl = out["placebo"]
    lines += [
        "",
        "## Placebo false-positive rate (demo controls, 5000 random splits, 16 pseudo-suspects vs 344)",
        "",
        "| α | empirical FPR [95% Clopper–Pearson CI] | gate |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {_pct(r)} | {r['status']} |" for a, r in pl.items()]
    rp = out["repeats"]
    lines += [
        "",
        f"## Repeated draws ({args.repeats} seeded draws each; rates with 95% Clopper–Pearson CIs)",
        "",
        "60 suspects of which k were trained on (the rest held-out works), 300 held-out controls, primary test only "
        + (f"(the cross-fitted test on {', '.join(out['plan']['features'])}, {args.cf_permutations} label permutations)"
           if out['plan']['features'] else "(one-sided Mann–Whitney U on the loss attack)")
        + ". k = 0 is the false-positive rate; k > 0 the power for a mixed suspect set.",
        "",
        "| scenario | primary test rejects at α = 0.05 | at α = 0.01 | Storey: mean est. members (sd) | true members |",
        "|---|---|---|---|---|",
    ]
    for n in ("null_0_of_60", "mixed_3_of_60", "mixed_6_of_60", "mixed_12_of_60", "mixed_24_of_60"):
        r = rp[n]
        lines.append(f"| {n} | {_pct(r['reject_at_0.05'])} | {_pct(r['reject_at_0.01'])} | "
                     f"{r['storey_members_mean']:.1f} ({r['storey_members_sd']:.1f}) | {r['true_members']} |")
    lines += [
        "",
        f"Blind baseline ({args.gate_repeats} seeded draws of 40 non-member suspects by "
        f"'{rp['shifted_controls']['suspect_artist']}'; 199 permutations per gate):",
        "",
        "| controls | raw primary test rejects (a false accusation) | blind-baseline gate fires (verdict withheld) |",
        "|---|---|---|",
    ]
    for n in ("shifted_controls", "matched_controls"):
        r = rp[n]
        lines.append(f"| {n.replace('_', ' ')} (by '{r['control_artist']}') | {_pct(r['raw_test_rejects'])} | "
                     f"{_pct(r['blind_gate_fires'])} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
