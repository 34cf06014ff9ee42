"""Benchmark attacks on ground-truth targets: power (AUC, TPR at low FPR, set-level p vs suspects, null
false-positive rate) and cost (evaluations, images/s, peak memory, framework overhead).

    python scripts/train_target.py                      # first: the targets (see configs/train_target.yaml)
    python scripts/benchmark.py                         # bench=ddpm_openclipart, every attack
    python scripts/benchmark.py -m bench=ddpm_openclipart,lora_synthetic

Writes ``results/benchmarks/<name>/`` (benchmark.json, benchmark.md, roc.png, pvalue_vs_n.png) and
refreshes the index ``results/benchmarks/README.md``. See :mod:`audit.benchmark`.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from audit.cli import CONFIG_DIR  # noqa: E402


def write_index(root: Path) -> None:
    import json

    lines = ["# Benchmarks", "", "Each folder: `benchmark.md` (tables), `benchmark.json` (every number and score), "
             "`roc.png`, `pvalue_vs_n.png`. Made by `scripts/benchmark.py` on targets from `scripts/train_target.py`.",
             "", "| benchmark | machine | members / non-members | attack: AUC |", "|---|---|---|---|"]
    for f in sorted(root.glob("*/benchmark.json")):
        r = json.loads(f.read_text())
        aucs = ", ".join(f"{a['attack']} {a['auc']:.2f}" for a in r["attacks"] if a["status"] == "ok")
        lines.append(f"| [{r['name']}]({f.parent.name}/benchmark.md) | {r['machine']} | {r['n_member']} / "
                     f"{r['n_nonmember']} | {aucs} |")
    (root / "README.md").write_text("\n".join(lines) + "\n")


@hydra.main(config_path=str(CONFIG_DIR), config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from audit.benchmark import run_benchmark, write_benchmark

    if cfg.runtime.get("num_threads"):
        torch.set_num_threads(int(cfg.runtime.num_threads))
    result = run_benchmark(cfg, progress=bool(cfg.progress))
    out = write_benchmark(result, cfg.out)
    write_index(Path(cfg.out).parent)
    print(f"benchmark: {out / 'benchmark.md'}")


if __name__ == "__main__":
    main()
