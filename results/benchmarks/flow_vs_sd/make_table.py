"""Side-by-side table of the two LoRA ground-truth benchmarks: SD layout (VP, ε) vs SD3 layout (flow matching).

    python results/benchmarks/flow_vs_sd/make_table.py      # writes results/benchmarks/flow_vs_sd/table.md

Reads only the committed ``benchmark.json`` files of ``lora_synthetic`` and ``lora_flow_synthetic`` (made by
``scripts/benchmark.py``); computes nothing new except, from their set-level draws, the fewest suspects
(all members, 200 draws per size) whose median p-value is below α.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = (("lora_synthetic", "SD layout, VP (ε)"), ("lora_flow_synthetic", "SD3 layout, flow (velocity)"))


def _rows(name: str) -> dict[str, dict]:
    r = json.loads((ROOT / name / "benchmark.json").read_text())
    return {a["attack"]: a for a in r["attacks"]}, r


def _median_n(a: dict, alpha: float) -> str:
    pts = sorted((s["n_suspect"], s["median_p"]) for s in a["set_level"]
                 if s["member_fraction"] == 1.0 and s.get("available"))
    hit = [n for n, p in pts if p < alpha]
    return str(hit[0]) if hit else f"> {pts[-1][0]}" if pts else "n/a"


def _cell(a: dict | None, alpha: float) -> list[str]:
    if a is None:
        return ["not run", "–", "–", "–", "–"]
    if a["status"] != "ok":
        return ["refused", "–", "–", "–", "–"]
    lo, hi = a["auc_ci"]
    t, (tlo, thi) = a["tpr_at_0.01_fpr"]["tpr"], a["tpr_at_0.01_fpr"]["ci"]
    n80 = a.get("smallest_n_power80_all_members")
    return [f"{a['auc']:.2f} [{lo:.2f}, {hi:.2f}]", f"{t:.2f} [{tlo:.2f}, {thi:.2f}]", f"{a['evals_per_image']:.0f}",
            _median_n(a, alpha), str(n80) if n80 else "> 20"]


def main() -> None:
    (sd, sd_run), (fl, fl_run) = (_rows(n) for n, _ in CASES)
    alpha = float(fl_run["settings"]["alpha"])
    plain = ["loss", "pia", "pian", "sima", "secmi", "pfami", "gsa", "rediffuse", "clid", "wen"]
    names = set(sd) | set(fl)
    order = [n for n in plain + [f"{p}_calibrated" for p in plain] if n in names]
    order += sorted(names - set(order))
    md = [f"# LoRA ground truth: SD layout (VP) beside SD3 layout (flow matching)", "",
          f"Made by `python results/benchmarks/flow_vs_sd/make_table.py` from "
          f"[lora_synthetic](../lora_synthetic/benchmark.md) ({sd_run['n_member']} members / "
          f"{sd_run['n_nonmember']} non-members; {sd_run['machine']}) and "
          f"[lora_flow_synthetic](../lora_flow_synthetic/benchmark.md) ({fl_run['n_member']} / "
          f"{fl_run['n_nonmember']}; {fl_run['machine']}). CIs: stratified bootstrap. TPR at 1% FPR rests on "
          f"{fl_run['n_nonmember']} non-members (2 false positives allowed), so its CI is wide. Suspect columns: "
          "the fewest suspect works, all of them members, for which the one-sided Mann–Whitney test against the "
          "held-out non-members gives a median p (or 80% of 200 draws) below α; sizes tried 5, 10, 20 "
          f"(50 exceeds the {fl_run['n_member']} members). `_calibrated` = score minus the same attack on the "
          "base model (the LoRA's reference).", "",
          "| attack | AUC, SD (VP) | AUC, flow | TPR@1%FPR, SD | TPR@1%FPR, flow | evals/img SD / flow | "
          f"suspects for median p < {alpha:g}, SD / flow | suspects for 80% power, SD / flow |",
          "|---|---|---|---|---|---|---|---|"]
    for name in order:
        a, b = _cell(sd.get(name), alpha), _cell(fl.get(name), alpha)
        md.append(f"| {name} | {a[0]} | {b[0]} | {a[1]} | {b[1]} | {a[2]} / {b[2]} | {a[3]} / {b[3]} | {a[4]} / {b[4]} |")
    (Path(__file__).parent / "table.md").write_text("\n".join(md) + "\n")
    print(Path(__file__).parent / "table.md")


if __name__ == "__main__":
    main()
