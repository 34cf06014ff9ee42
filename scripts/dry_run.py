"""Dry run: load the model of an audit config, time one batch, and estimate the whole audit before it starts.

    python scripts/dry_run.py experiment=own_model target.source=/models/FLUX.1-dev target.resolution=1024 \
        data.manifest=works.csv 'attack=[loss,pia,loss_calibrated]' runtime=gpu

Takes the same overrides as ``audit-run``. It reads the manifest (count only), loads the target and
every attack (a calibrated attack loads its reference), checks each attack against the model (the same
one-line refusals as a run), scores the first ``runtime.batch_size`` works, and prints per attack the
declared denoiser evaluations per image, the counted evaluations of the batch (shared calls make a suite
cheaper than its parts), the batch's wall time, and the estimate for all works; then peak memory (CUDA
allocator peak on a GPU, the process's peak resident set on a CPU). Nothing is written. Reconstruction
tests are not included in the estimate. The run's throughput settings (``runtime.attention``, ``channels_last``,
``compile``) are applied as a run applies them; ``--probe-batch=N`` also finds the largest batch (≤ N) of the
whole suite that fits in memory (:func:`audit.parallel.speed.probe_batch_size`; on a CPU nothing runs out of
memory, so it reports N).
"""
from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/dry_run.py` from a checkout

import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def dry_run(cfg: DictConfig, probe_limit: int = 0) -> dict:
    from hydra.utils import instantiate

    from audit.parallel.speed import apply_speed_settings, attack_batch_runner, probe_batch_size

    from audit.attacks import score_evidence
    from audit.pipeline import build_attacks, load_evidence_from_config, read_entries_from_config, validate_config

    validate_config(cfg)
    if cfg.runtime.get("num_threads"):
        torch.set_num_threads(int(cfg.runtime.num_threads))
    entries = read_entries_from_config(cfg.data)
    t0 = time.time()
    target = instantiate(cfg.target)
    speed = apply_speed_settings(target, cfg.runtime)  # runtime.attention / channels_last / compile, as a run applies them
    load_s = time.time() - t0
    attacks = build_attacks(cfg)
    for attack in attacks.values():
        attack.check_target(target)
    bs = int(cfg.runtime.batch_size)
    ev = load_evidence_from_config(cfg.data, target.info.resolution, progress=False, entries=entries[:bs])
    if len(ev) == 0:
        raise ValueError("dry run: none of the first batch's works could be loaded")
    if target.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target.device)
    rows = []
    for name, attack in attacks.items():
        before = target.unet_evals
        t0 = time.time()
        score_evidence(target, ev, {name: attack}, batch_size=bs, seed=int(cfg.seed), progress=False)
        secs = time.time() - t0
        rows.append({"attack": name, "declared": attack.evaluations_per_image(),
                     "counted": (target.unet_evals - before) / len(ev), "batch_s": secs,
                     "estimate_s": secs / len(ev) * len(entries)})
    before, t0 = target.unet_evals, time.time()
    score_evidence(target, ev, attacks, batch_size=bs, seed=int(cfg.seed), progress=False)
    suite = {"counted": (target.unet_evals - before) / len(ev), "batch_s": time.time() - t0}
    suite["estimate_s"] = suite["batch_s"] / len(ev) * len(entries)
    if target.device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(target.device) / 2**30:.2f} GiB (CUDA allocator peak)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (peak resident set)"
    probe = None
    if probe_limit:  # --probe-batch=N: the largest batch (<= N) of the whole suite that fits in memory
        probe = probe_batch_size(attack_batch_runner(target, attacks, ev.batch(0, len(ev)), seed=int(cfg.seed)),
                                 start=min(bs, probe_limit), limit=probe_limit)
    return {"family": target.family, "process": target.process.describe(), "load_s": load_s, "speed": speed,
            "probe": probe,
            "memory": dict(getattr(target.info, "memory", {}) or {}), "dtype": str(target.dtype).replace("torch.", ""),
            "n_works": len(entries), "batch": len(ev), "rows": rows, "suite": suite, "peak": peak}


def _print(r: dict) -> None:
    print(f"model: {r['family']} ({r['process']['kind']}), loaded in {r['load_s']:.1f} s; "
          f"{r['n_works']} works in the manifest; timed on a batch of {r['batch']}")
    print(f"{'attack':<24}{'evals/img declared':>20}{'counted':>10}{'batch s':>10}{'estimate':>12}")
    for row in r["rows"]:
        print(f"{row['attack']:<24}{row['declared']:>20}{row['counted']:>10.1f}{row['batch_s']:>10.2f}"
              f"{_hms(row['estimate_s']):>12}")
    s = r["suite"]
    print(f"{'whole suite (shared)':<24}{'':>20}{s['counted']:>10.1f}{s['batch_s']:>10.2f}{_hms(s['estimate_s']):>12}")
    opts = (", ".join(f"{k}={v}" for k, v in r.get("memory", {}).items())
            or "none (target.offload / vae_slicing / vae_tiling)")
    print(f"peak memory: {r['peak']}; weights {r.get('dtype', '?')}; memory options: {opts}")
    if r.get("probe"):
        pr = r["probe"]
        print(f"largest batch that fits (whole suite, limit {pr['limit']}): {pr['largest']}; tried: "
              + ", ".join(f"{b} {v}" for b, v in pr["tried"].items()))


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    args = list(sys.argv[1:] if argv is None else argv)
    probe_limit = 0
    for a in [a for a in args if a.startswith("--probe-batch")]:  # --probe-batch=N: find the largest batch <= N
        args.remove(a)
        probe_limit = int(a.split("=", 1)[1]) if "=" in a else 1024
    # compose, not @hydra.main: a dry run creates no run folder
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="audit", overrides=args)
    from audit.cli import run_reporting_user_errors

    # the same user errors audit-run reports in one line (exit status 2)
    _print(run_reporting_user_errors("dry run", dry_run, cfg, probe_limit))


if __name__ == "__main__":
    main()
