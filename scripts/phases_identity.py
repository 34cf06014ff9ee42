"""Scores before and after a refactor of the run's phases (issue 26): the same audits, same seeds, same numbers.

Runs three audits through the package's own ``run_audit`` on models built here (no download) and prints/writes one
SHA-256 per audit over its score table (image id, attack, parameter hash, score as exact float64 bits), plus the
headline p-value:

* ``demo`` — the default demo audit (``audit-run score_store=null report.enabled=false``; the demo scenario is built
  under ``paths.cache_dir`` on first use), compared also with the committed ``results/demo/scores.parquet``;
* ``lora`` — a tiny Stable-Diffusion-layout model with a random LoRA (``audit.groundtruth.sd``), default attacks
  plus the base-calibrated loss the defaults add to a LoRA target;
* ``sharded`` — a tiny untrained pixel DDPM scored as two shard jobs and a merge (``runtime.shards=2``,
  ``runtime.shard=0|1|merge``), and the same audit in one process; both hashes are written.

Usage: ``python scripts/phases_identity.py --work /tmp/ident --out results/phases/identity_after.json``; compare two
such files with ``--compare a.json b.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="audit", overrides=overrides)


def _table_sha(path: Path, with_params: bool) -> tuple[str, int]:
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(path).sort_values(["image_id", "attack", "attack_params_hash"]).reset_index(drop=True)
    h = hashlib.sha256()
    for i, a, p, s in zip(df["image_id"], df["attack"], df["attack_params_hash"], df["score"]):
        h.update((f"{i}|{a}|{p}|" if with_params else f"{i}|{a}|").encode()
                 + f"{np.float64(s).tobytes().hex()}\n".encode())
    return h.hexdigest(), len(df)


def scores_sha(path: Path) -> tuple[str, int]:
    """The score table: image id, attack, parameter hash, exact float64 bits of the score."""
    return _table_sha(path, with_params=True)


def values_sha(path: Path) -> str:
    """The scores alone (image id, attack, exact float64 bits), without the attack's parameter hash: equal when
    the same numbers were computed even if a parameter's *record* changed (the calibrated attacks' reference
    became a fingerprint instead of a path in 69a4189, which changes the LoRA audit's parameter hash)."""
    return _table_sha(path, with_params=False)[0]


def _p(folder: Path) -> float | None:
    a = json.loads((folder / "analysis.json").read_text()) if (folder / "analysis.json").exists() else {}
    return (a.get("verdict") or {}).get("p_value")


def run(overrides: list[str], out: Path) -> Path:
    from audit.pipeline import run_audit

    run_audit(_compose(overrides), out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/phases_identity"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--compare", nargs=2, type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=["demo", "lora", "sharded"])
    args = ap.parse_args(argv)
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        same = True
        for k in sorted(set(a) | set(b)):
            if k.startswith("_"):
                continue
            eq = a.get(k) == b.get(k)
            same &= eq
            print(f"{k:28s} {'identical' if eq else 'DIFFERENT'}  {a.get(k)}  {b.get(k)}")
        return 0 if same else 1

    import shutil
    import subprocess

    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    quick = ["runtime.progress=false", "report.enabled=false", "score_store=null"]
    result: dict[str, object] = {"_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                                           capture_output=True, text=True).stdout.strip()}
    if "demo" in args.only:
        out = run(quick + [f"paths.results_dir={work}/res"], work / "demo")
        result["demo"] = [*scores_sha(out / "scores.parquet"), _p(out)]
        committed = ROOT / "results" / "demo" / "scores.parquet"
        if committed.exists():
            result["demo_committed"] = [*scores_sha(committed), _p(ROOT / "results" / "demo")]
    if "lora" in args.only:
        from audit.data import write_manifest
        from audit.groundtruth.sd import build_tiny_sd, make_lora
        from audit.groundtruth.synthetic import render_artwork
        from PIL import Image

        model = build_tiny_sd(work / "sd" / "model", resolution=32, seed=0)
        lora = make_lora(model, work / "sd" / "lora", rank=4, seed=0, init_scale=0.5)
        rows = []
        (work / "sd" / "works").mkdir(parents=True)
        for i in range(24):
            p = work / "sd" / "works" / f"w{i:02d}.png"
            Image.fromarray(render_artwork(["stripes", "circles", "grid"][i % 3], i, size=32, seed=7)).save(p)
            rows.append({"path": str(p), "role": "suspect" if i < 8 else "control", "caption": "a painting",
                         "artist": "a"})
        manifest = write_manifest(rows, work / "sd" / "manifest.csv")
        out = run(quick + ["experiment=own_model", f"target.source={model}", f"target.lora={lora}",
                           "target.local_files_only=true", f"data.manifest={manifest}", "attack=[loss]",
                           "attack.loss.timesteps=[100,400]", "stats.n_permutations=199", "stats.n_bootstrap=50",
                           "stats.crossfit_permutations=49", "stats.n_placebo=20", "runtime.batch_size=8",
                           f"paths.results_dir={work}/res", "name=lora"], work / "lora")
        result["lora"] = [*scores_sha(out / "scores.parquet"), _p(out)]
        result["lora_values"] = values_sha(out / "scores.parquet")
    if "sharded" in args.only:
        from audit.data import write_manifest
        from audit.groundtruth.ddpm import build_ddpm, save_ddpm
        from audit.groundtruth.synthetic import render_artwork
        from PIL import Image

        unet, sched = build_ddpm(16, channels=(16, 32, 32), seed=1)
        model = save_ddpm(unet, sched, work / "ddpm")
        rows = []
        (work / "px").mkdir()
        for i in range(48):
            p = work / "px" / f"w{i:02d}.png"
            Image.fromarray(render_artwork(["stripes", "circles", "grid", "waves"][i % 4], i, size=16, seed=123)).save(p)
            rows.append({"path": str(p), "role": "suspect" if i < 16 else "control"})
        manifest = write_manifest(rows, work / "px" / "manifest.csv")
        base = ["experiment=own_model", f"target.source={model}", "target.local_files_only=true",
                f"data.manifest={manifest}", "attack=[loss,pia]", "attack.loss.timesteps=[100,400]",
                "attack.loss.n_noise=1", "runtime.batch_size=8", "runtime.progress=false", "report.enabled=false",
                "stats.n_permutations=100", "stats.n_bootstrap=50", "stats.n_placebo=20", "stats.gates=[placebo]",
                f"paths.results_dir={work}/res"]
        single = run(base + [f"score_store={work}/store_single", "name=single"], work / "single")
        shard = base + [f"score_store={work}/store_shards", "runtime.shards=2", f"runtime.shard_dir={work}/records"]
        for i in (0, 1):
            run(shard + [f"runtime.shard={i}", f"name=shard{i}"], work / f"shard{i}")
        merged = run(shard + ["runtime.shard=merge", "name=merge"], work / "merge")
        result["sharded_single"] = [*scores_sha(single / "scores.parquet"), _p(single)]
        result["sharded_merge"] = [*scores_sha(merged / "scores.parquet"), _p(merged)]
        result["sharded_single_values"] = values_sha(single / "scores.parquet")
    text = json.dumps(result, indent=1, sort_keys=True)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
