"""Score a fine-tune as it was trained (issue 23): the Flux-layout LoRA ground truth trained at 32 px with T5 prompts
of 32 tokens, scored the old way (FluxPipeline's 512-token prompts; metadata not read) and the new default way (the
LoRA file's kohya metadata: ss_resolution, ss_t5xxl_max_token_length, ...).

    python scripts/train_flow_target.py --family flux --max-sequence-length 32 --t5-tokenizer-length 512 \
        --lora-steps 800 --out .cache/audit/targets/lora_flux_t5len32
    python scripts/conditioning_benchmark.py --target-dir .cache/audit/targets/lora_flux_t5len32 \
        --out results/benchmarks/conditioning_as_trained

Per setting: the base-calibrated loss (the LoRA default primary statistic) and the plain loss of the 32 members and
200 held-out works of the same artist: AUC with a score-type CI, and the one-sided Mann–Whitney p-value against
the number of all-member suspects (200 draws; controls = 100 other held-out works): median p, power at p ≤ 0.01, and
the fewest suspects reaching 80% power. Then two real ``run_audit`` runs (20 member suspects, 150 controls):
the old behaviour and the default run, whose plan.json says how it conditioned the model and why.
Scores are cached in the output folder (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

SETTINGS = {
    # what the tool did before issue 23 once the user had set the resolution by hand: 512-token prompts, no metadata
    "before: 512-token prompts (FluxPipeline default), metadata not read": {
        "resolution": 32, "max_sequence_length": 512, "use_training_metadata": False},
    # the default run now: every conditioning value from the LoRA's training metadata
    "after: default run (training metadata: 32 px, 32 tokens)": {},
}
SIZES = (5, 10, 20, 30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target-dir", default=".cache/audit/targets/lora_flux_t5len32")
    p.add_argument("--out", default="results/benchmarks/conditioning_as_trained")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--no-audit", action="store_true", help="skip the two run_audit runs")
    a = p.parse_args()
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    from audit.attacks import Calibrated, LossAttack, score_evidence
    from audit.data import load_evidence, read_manifest
    from audit.stats import auc_with_ci
    from audit.targets import load_target

    td = Path(a.target_dir)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "scores.json"
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    entries = read_manifest(td / "evidence.csv")
    results = {}
    for name, opts in SETTINGS.items():
        if name not in scores:
            t0 = time.time()
            target = load_target(str(td / "base"), lora=str(td / "lora"), local_files_only=True, device="cpu", **opts)
            ev = load_evidence(entries, target.info.resolution, progress=False)
            ref = {"source": str(td / "base"), "local_files_only": True, "device": "cpu",
                   **{k: v for k, v in opts.items() if k != "use_training_metadata"}}
            attacks = {"loss": LossAttack(), "loss_calibrated": Calibrated(attack=LossAttack(), reference=ref)}
            table = score_evidence(target, ev, attacks, batch_size=32, seed=0, progress=False)
            df = table.df
            scores[name] = {
                "conditioning": target.info.conditioning,
                "seconds": round(time.time() - t0, 1),
                "roles": {r.image_id: r.role for r in ev.records},
                **{att: dict(zip(df[df.attack == att].image_id, df[df.attack == att].score)) for att in attacks},
            }
            cache.write_text(json.dumps(scores, indent=1))
        s = scores[name]
        roles = s["roles"]
        res = {"conditioning": {k: {"value": v["value"], "source": v["source"]} for k, v in s["conditioning"].items()},
               "seconds": s["seconds"]}
        for att in ("loss_calibrated", "loss"):
            mem = np.array([v for k, v in s[att].items() if roles[k] == "member"])
            non = np.array([v for k, v in s[att].items() if roles[k] == "nonmember"])
            auc = auc_with_ci(mem, non)
            res[att] = {"auc": float(auc.auc), "ci": [float(auc.lo), float(auc.hi)],
                        "by_n": _power(mem, non, a.draws)}
        results[name] = res
    audits = {} if a.no_audit else _audits(td, out)
    (out / "conditioning.json").write_text(json.dumps({"settings": results, "audits": audits}, indent=1))
    (out / "conditioning.md").write_text(_markdown(results, audits, td))
    print((out / "conditioning.md").read_text())


def _power(mem: np.ndarray, non: np.ndarray, draws: int) -> dict[str, dict[str, float]]:
    from audit.stats.tests import mann_whitney_batch

    rng = np.random.default_rng(0)
    out = {}
    for n in SIZES:
        if n > len(mem):
            continue
        sus = np.stack([rng.choice(mem, n, replace=False) for _ in range(draws)])
        ctrl = np.stack([rng.choice(non, 100, replace=False) for _ in range(draws)])
        pv = mann_whitney_batch(sus, ctrl, n_resamples=999, seed=0)
        out[str(n)] = {"median_p": float(np.median(pv)), "power_at_0.01": float((pv <= 0.01).mean())}
    return out


def _audits(td: Path, out: Path) -> dict[str, dict]:
    """Two real audits: 20 member suspects vs 150 held-out controls, the old behaviour and the default run."""
    import csv

    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR
    from audit.pipeline import run_audit

    rows = list(csv.DictReader(open(td / "evidence.csv")))
    members = [r for r in rows if r["role"] == "member"][:20]
    non = [r for r in rows if r["role"] == "nonmember"][:150]
    manifest = out / "audit_manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "role", "caption", "artist", "created"])
        w.writeheader()
        for r in members:
            w.writerow({**{k: r[k] for k in ("path", "caption", "artist", "created")}, "role": "suspect"})
        for r in non:
            w.writerow({**{k: r[k] for k in ("path", "caption", "artist", "created")}, "role": "control"})
    common = ["experiment=own_model", f"target.source={td / 'base'}", f"target.lora={td / 'lora'}",
              "target.local_files_only=true", f"data.manifest={manifest}", "runtime.progress=false",
              "report=none", "score_store=null", "stats.n_placebo=200"]
    runs = {"before": ["target.resolution=32", "target.max_sequence_length=512",
                       "target.use_training_metadata=false"], "after (default)": []}
    res = {}
    for name, extra in runs.items():
        folder = out / "runs" / name.split()[0]
        if not (folder / "analysis.json").is_file():
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose(config_name="audit", overrides=common + extra)
            run_audit(cfg, folder)
        analysis = json.loads((folder / "analysis.json").read_text())
        plan = json.loads((folder / "plan.json").read_text())
        res[name] = {"overrides": extra, "primary": analysis.get("primary_attack"),
                     "p_value": analysis.get("verdict", {}).get("p_value", analysis.get("set_test", {}).get("p_value")),
                     "decision": analysis.get("verdict", {}).get("decision"),
                     "decisions": plan.get("decisions", "")}
    return res


def _markdown(results: dict, audits: dict, td: Path) -> str:
    lines = ["# Scoring a fine-tune as it was trained (issue 23)", "",
             f"Ground truth: `{td}` — tiny Flux-layout model (1 double + 1 single block, 32 px, VAE factor 2, T5 "
             "tokenizer of 512 tokens), base pre-trained on four synthetic artists, rank-8 LoRA on 32 works of "
             "\"circles\" trained with T5 prompts of **32 tokens**; 200 held-out works of the same artist are the "
             "non-members. The LoRA file carries kohya-style metadata (`ss_resolution=(32, 32)`, "
             "`ss_t5xxl_max_token_length=32`, …). CPU, 1 torch thread.", "",
             "Before issue 23 a default run scored this model at 1024 px (Flux's fixed default; on CPU it did not "
             "finish one batch in 10 minutes); the rows below compare the run a user got after setting "
             "`target.resolution=32` by hand (prompts still padded to 512 tokens) with today's default run.", "",
             "Command: `python scripts/conditioning_benchmark.py --target-dir " + str(td) + "`", "",
             "| setting | statistic | AUC [95% CI] | n=5: median p, power | n=10 | n=20 | n=30 | fewest suspects for 80% power at p ≤ 0.01 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for att in ("loss_calibrated", "loss"):
            x = r[att]
            cells = [f"{x['by_n'][str(n)]['median_p']:.3g}, {x['by_n'][str(n)]['power_at_0.01']:.2f}"
                     if str(n) in x["by_n"] else "n/a" for n in SIZES]
            need = next((n for n in SIZES if str(n) in x["by_n"] and x["by_n"][str(n)]["power_at_0.01"] >= 0.8),
                        None)
            lines.append(f"| {name} | {att} | {x['auc']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}] | "
                         + " | ".join(cells) + f" | {need if need else 'not reached (≤ 30)'} |")
    lines += ["", "Conditioning used (value, source):", ""]
    for name, r in results.items():
        lines.append(f"- {name}: " + "; ".join(f"{k} = {v['value']} ({v['source']})"
                                               for k, v in r["conditioning"].items()))
    if audits:
        lines += ["", "## Real audits (20 member suspects vs 150 held-out controls, default attacks)", "",
                  "| run | overrides | primary | p-value | decision |", "|---|---|---|---|---|"]
        for name, r in audits.items():
            pv = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
            over = " ".join(r["overrides"]) or "(none)"
            lines.append(f"| {name} | `{over}` | {r['primary']} | {pv} | {r['decision']} |")
        lines += ["", "plan.json `decisions` of the default run:", "", "> " + audits.get("after (default)", {}).get(
            "decisions", "")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
