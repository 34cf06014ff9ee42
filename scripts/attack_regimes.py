"""Measure loss / PIA / PIAN on small DDPMs with a known member split, across memorisation regimes.

Trains pixel DDPMs on procedural artworks and records AUC (member vs held-out, bootstrap CI) and
TPR at 1% FPR for each attack after several training budgets. Writes
``results/attack_regimes/attack_regimes.{json,md}``.

    python scripts/attack_regimes.py                # both regimes, ~10 min on 2 CPU cores
    python scripts/attack_regimes.py --quick        # fewer checkpoints

Two regimes:
- ``overfit``: 256 members at 8×8, a (32, 64) UNet — the model generalises somewhat but fits its
  training set better, the setting of the published DDPM/CIFAR benchmarks;
- ``memorized``: 16 members at 16×16, a (16, 32, 32) UNet trained on the same few images for hundreds
  of epochs — the model collapses onto its training set, as a tiny fine-tuning set can.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from audit.attacks import PIA, PIAN, LossAttack, score_evidence  # noqa: E402
from audit.groundtruth.synthetic import render_artwork  # noqa: E402
from audit.groundtruth.ddpm import build_ddpm, train_ddpm  # noqa: E402
from audit.stats import auc_with_ci, tpr_at_fpr  # noqa: E402
from audit.targets.base import TargetInfo  # noqa: E402
from audit.targets.models import PixelTarget  # noqa: E402
from audit.types import EvidenceSet, ImageRecord  # noqa: E402

ARTISTS = ["stripes", "circles", "grid", "waves"]
REGIMES = {
    "overfit": dict(res=8, n=256, channels=(32, 64), batch=128, lr=1e-3, chunk=250, chunks=4),
    "memorized": dict(res=16, n=16, channels=(16, 32, 32), batch=16, lr=1e-3, chunk=200, chunks=4),
}


def render(res: int, offset: int, n: int) -> torch.Tensor:
    arr = np.stack([render_artwork(ARTISTS[i % 4], offset + i, size=res, seed=5) for i in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def evidence(members: torch.Tensor, held_out: torch.Tensor) -> EvidenceSet:
    px = torch.cat([members, held_out]).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    roles = ["member"] * len(members) + ["nonmember"] * len(held_out)
    recs = [ImageRecord(hashlib.sha256(p.numpy().tobytes()).hexdigest(), f"mem://{i}", r)
            for i, (p, r) in enumerate(zip(px, roles))]
    return EvidenceSet(recs, px)


def run_regime(name: str, spec: dict, chunks: int) -> list[dict]:
    members = render(spec["res"], 0, spec["n"])
    held_out = render(spec["res"], 10_000, max(spec["n"], 32))
    ev = evidence(members, held_out)
    unet, sched = build_ddpm(spec["res"], channels=spec["channels"], seed=0)
    attacks = {
        "loss": LossAttack(timesteps=[20, 50, 100], n_noise=2),
        "pia_t50": PIA(t=50),
        "pia_t200": PIA(t=200),
        "pian_t50": PIAN(t=50),
    }
    rows, steps, train_s = [], 0, 0.0
    for c in range(chunks):
        stats = train_ddpm(unet, sched, members, steps=spec["chunk"], batch_size=spec["batch"], lr=spec["lr"],
                           seed=c, progress=False)
        steps += spec["chunk"]
        train_s += stats["seconds"]
        info = TargetInfo("pixel", name, spec["res"], False, "epsilon", 1000, "n/a")
        target = PixelTarget(unet, sched, info, torch.device("cpu"), torch.float32)
        table = score_evidence(target, ev, attacks, batch_size=128, seed=0, progress=False)
        for a, attack in attacks.items():
            pos, neg = table.scores(a, "member"), table.scores(a, "nonmember")
            auc = auc_with_ci(pos, neg, n_boot=1000, seed=0)
            tpr = tpr_at_fpr(pos, neg, 0.01, n_boot=200, seed=0)
            rows.append({"regime": name, "steps": steps, "epochs": round(steps * spec["batch"] / spec["n"]),
                         "train_s": round(train_s, 1), "attack": a, "evals_per_image": attack.evaluations_per_image(),
                         "auc": auc.auc, "auc_lo": auc.lo, "auc_hi": auc.hi, "tpr_at_1pct_fpr": tpr.tpr,
                         "n_member": len(pos), "n_nonmember": len(neg)})
        print(name, steps, {r["attack"]: round(r["auc"], 3) for r in rows[-len(attacks):]}, flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| regime | steps | epochs | attack | evals/img | AUC [95% CI] | TPR@1%FPR |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['regime']} | {r['steps']} | {r['epochs']} | {r['attack']} | {r['evals_per_image']} | "
                     f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] | {r['tpr_at_1pct_fpr']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two checkpoints per regime instead of four")
    ap.add_argument("--out", type=Path, default=Path("results/attack_regimes"))
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    for name, spec in REGIMES.items():
        rows += run_regime(name, spec, 2 if args.quick else spec["chunks"])
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python scripts/attack_regimes.py" + (" --quick" if args.quick else ""),
            "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
            "wall_s": round(time.time() - t0, 1), "regimes": {k: {**v, "channels": list(v["channels"])} for k, v in REGIMES.items()}}
    (args.out / "attack_regimes.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# Loss vs PIA vs PIAN across memorisation regimes (pixel DDPMs, known member split)", "",
          f"Command: `{meta['command']}` — {meta['machine']}, {meta['wall_s']} s.", "",
          "Members vs held-out works of the same procedural artists; AUC with stratified bootstrap CI.", "",
          to_markdown(rows)]
    (args.out / "attack_regimes.md").write_text("\n".join(md))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
