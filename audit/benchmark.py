"""Benchmark: every configured attack on a ground-truth target (known member split), power and cost.

For one target trained by ``scripts/train_target.py`` (its ``membership.json`` + ``evidence.csv``) and a
set of attacks, measures per attack:

- AUC, TPR at 1% and 0.1% FPR, members vs non-members, with stratified bootstrap CIs and the number of
  non-members behind each threshold (a TPR at 0.1% FPR needs ≥ 1,000 non-members to mean anything);
- model evaluations per image (counted), images per second, peak memory (CUDA allocator peak on a GPU,
  resident-set growth sampled during the attack on a CPU);
- framework overhead: the attack's wall time ÷ the wall time of a bare loop making the same UNet calls
  on the same model and batch size, measured in the same run;
- the set-level test (one-sided Mann–Whitney U, suspects vs controls): its p-value against the number of
  suspect works (members mixed in at several fractions, controls = held-out non-members) and its
  false-positive rate over many null draws (suspects that are all non-members), with a Clopper–Pearson CI.

Pure functions over a loaded target and evidence; :mod:`scripts/benchmark.py` is the Hydra entry point.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.attacks import Attack, AttackSetupError, score_evidence
from audit.stats import auc_with_ci, tpr_at_fpr
from audit.stats.core import clopper_pearson
from audit.stats.tests import mann_whitney
from audit.targets.base import Target
from audit.types import EvidenceSet

__all__ = ["BenchmarkSettings", "benchmark_attack", "bare_loop_seconds", "set_level_power", "null_fpr",
           "load_ground_truth"]


@dataclass(frozen=True)
class BenchmarkSettings:
    batch_size: int = 64
    seed: int = 0
    n_bootstrap: int = 1000
    suspect_sizes: tuple[int, ...] = (5, 10, 20, 50)
    member_fractions: tuple[float, ...] = (1.0, 0.5, 0.2)
    n_draws: int = 200  # draws per (suspect size, member fraction)
    n_null_draws: int = 1000
    null_size: int = 20  # suspect works per null draw
    alpha: float = 0.01
    max_controls: int = 500  # controls per draw (held-out non-members not used as suspects)


def load_ground_truth(target_dir: str | Path, resolution: int, progress: bool = False) -> EvidenceSet:
    """The members and non-members a target was trained / held out with (``evidence.csv``)."""
    from audit.data import load_evidence, read_manifest

    manifest = Path(target_dir) / "evidence.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: train the target with scripts/train_target.py first")
    ev = load_evidence(read_manifest(manifest), resolution, progress=progress)
    if ev.rejected:
        raise ValueError(f"{len(ev.rejected)} ground-truth files could not be loaded, e.g. "
                         f"{ev.rejected[0].path}: {ev.rejected[0].reason}")
    return ev


class _PeakRSS:
    """Peak resident-set size of this process while the block runs, sampled every 20 ms (CPU memory)."""

    def __enter__(self) -> "_PeakRSS":
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def _unet_call(target: Target):
    """The bare denoiser call the framework wraps: the family adapter's own call of its network (UNet or
    transformer), with no noise bookkeeping, no conversion to ε̂ and no counting."""
    cond = target.encode_text([""]) if target.conditional else None

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return target._model_output(x, t, None if cond is None else cond.expand(x.shape[0], *cond.shape[1:]))
    return call


def bare_loop_seconds(target: Target, n_images: int, evals_per_image: int, batch_size: int,
                      latent_shape: tuple[int, ...]) -> float:
    """Wall time of a plain loop making the same number of UNet calls at the same batch sizes."""
    call = _unet_call(target)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n_images, batch_size):
            b = min(batch_size, n_images - start)
            x = torch.randn((b, *latent_shape), generator=g).to(target.device, target.dtype)
            t = torch.full((b,), 100, device=target.device, dtype=torch.long)
            for _ in range(evals_per_image):
                call(x, t)
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def benchmark_attack(target: Target, ev: EvidenceSet, name: str, attack: Attack, settings: BenchmarkSettings,
                     overhead: bool = True) -> dict[str, Any]:
    """Score ``ev`` with one attack alone and measure its power and cost."""
    try:
        attack.check_target(target)
    except AttackSetupError as e:
        return {"attack": name, "status": f"n/a: {e}"}
    cuda = target.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = target.unet_evals
    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        table = score_evidence(target, ev, {name: attack}, batch_size=settings.batch_size, seed=settings.seed,
                               progress=False)
        if cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    evals = target.unet_evals - before
    pos, neg = table.scores(name, "member"), table.scores(name, "nonmember")
    auc = auc_with_ci(pos, neg, n_boot=settings.n_bootstrap, seed=settings.seed)
    row: dict[str, Any] = {
        "attack": name, "status": "ok", "access": attack.access, "params": attack.params(),
        "n_member": int(len(pos)), "n_nonmember": int(len(neg)),
        "auc": auc.auc, "auc_ci": [auc.lo, auc.hi],
        "evals_per_image": evals / len(ev), "evals_per_image_declared": attack.evaluations_per_image(),
        "seconds": secs, "images_per_s": len(ev) / secs,
        "peak_memory_mb": (torch.cuda.max_memory_allocated() if cuda else mem.peak - mem.base) / 2**20,
        "peak_memory_kind": "CUDA allocator peak" if cuda else "process RSS growth during the attack",
    }
    for fpr in (0.01, 0.001):
        tp = tpr_at_fpr(pos, neg, fpr, n_boot=settings.n_bootstrap, seed=settings.seed)
        row[f"tpr_at_{fpr:g}_fpr"] = {"tpr": tp.tpr, "ci": [tp.lo, tp.hi], "n_nonmember": int(len(neg)),
                                      "achievable": bool(len(neg) >= math.ceil(1 / fpr))}
    if overhead and evals > 0:
        x = ev.batch(0, 1).to(target.device, target.dtype)
        shape = tuple(target.encode(x).shape[1:])
        per_image = int(round(evals / len(ev)))
        bare = bare_loop_seconds(target, len(ev), per_image, settings.batch_size, shape)
        row["bare_loop_seconds"] = bare
        row["overhead_ratio"] = secs / bare if bare > 0 else float("nan")
    row["scores"] = {"member": pos.tolist(), "nonmember": neg.tolist()}
    return row


def _draw(rng: np.random.Generator, pos: np.ndarray, neg: np.ndarray, n: int, frac: float,
          max_controls: int) -> tuple[np.ndarray, np.ndarray] | None:
    k = int(round(n * frac))
    if k > len(pos) or n - k >= len(neg):
        return None
    s_pos = rng.choice(len(pos), size=k, replace=False)
    perm = rng.permutation(len(neg))
    s_neg, ctrl = perm[: n - k], perm[n - k:][:max_controls]
    if len(ctrl) < 2:
        return None
    return np.concatenate([pos[s_pos], neg[s_neg]]), neg[ctrl]


def set_level_power(pos: np.ndarray, neg: np.ndarray, settings: BenchmarkSettings) -> list[dict[str, Any]]:
    """p-value of the one-sided Mann–Whitney test vs suspect-set size and member fraction.

    Each draw: ``round(n·fraction)`` members and the rest non-members as suspects; the controls are other
    non-members (at most ``max_controls``). Reports median p, quartiles and the power at ``alpha``.
    Combinations the data cannot supply (too few members or non-members) are listed as unavailable."""
    rng = np.random.default_rng(settings.seed)
    rows = []
    for frac in settings.member_fractions:
        for n in settings.suspect_sizes:
            ps, n_ctrl = [], 0
            for _ in range(settings.n_draws):
                d = _draw(rng, pos, neg, n, frac, settings.max_controls)
                if d is None:
                    break
                ps.append(mann_whitney(d[0], d[1]).p_value)
                n_ctrl = len(d[1])
            if not ps:
                rows.append({"n_suspect": n, "member_fraction": frac, "available": False})
                continue
            p = np.array(ps)
            rows.append({"n_suspect": n, "member_fraction": frac, "available": True, "n_members_in_suspects":
                         int(round(n * frac)), "n_control": n_ctrl, "n_draws": len(ps), "median_p": float(np.median(p)),
                         "p_q25": float(np.quantile(p, 0.25)), "p_q75": float(np.quantile(p, 0.75)),
                         "power": float(np.mean(p <= settings.alpha))})
    return rows


def null_fpr(neg: np.ndarray, settings: BenchmarkSettings) -> dict[str, Any]:
    """False-positive rate of the set-level test at ``alpha`` when every suspect is a non-member."""
    rng = np.random.default_rng(settings.seed + 1)
    n = min(settings.null_size, len(neg) // 2)
    rejections = 0
    ps = []
    for _ in range(settings.n_null_draws):
        d = _draw(rng, neg[:0], neg, n, 0.0, settings.max_controls)
        assert d is not None
        p = mann_whitney(d[0], d[1]).p_value
        ps.append(p)
        rejections += p <= settings.alpha
    lo, hi = clopper_pearson(rejections, settings.n_null_draws, 0.95)
    return {"n_suspect": n, "n_control": min(settings.max_controls, len(neg) - n), "n_draws": settings.n_null_draws,
            "alpha": settings.alpha, "rejections": int(rejections), "fpr": rejections / settings.n_null_draws,
            "fpr_ci": [lo, hi],
            "p_uniform_ks": float(_ks_uniform(np.array(ps)))}


def _ks_uniform(p: np.ndarray) -> float:
    """KS p-value of the null p-values against U(0, 1) (a rough check: MWU p-values are discrete)."""
    from scipy.stats import kstest

    return kstest(p, "uniform").pvalue


def smallest_n(power_rows: list[dict[str, Any]], fraction: float = 1.0, level: float = 0.8) -> int | None:
    """Fewest suspect works for which the test reaches ``level`` power at ``alpha`` (None: never)."""
    ok = [r["n_suspect"] for r in power_rows if r.get("available") and r["member_fraction"] == fraction
          and r["power"] >= level]
    return min(ok) if ok else None


# --------------------------------------------------------------------------------------------------
# one benchmark run: a target × its attacks → results/benchmarks/<name>/
# --------------------------------------------------------------------------------------------------
def run_benchmark(cfg: Any, progress: bool = True) -> dict[str, Any]:
    """Benchmark the target of ``cfg.bench`` with every attack of ``cfg.attack`` (see configs/benchmark.yaml)."""
    import json

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from audit.targets import load_target

    b = cfg.bench
    settings = BenchmarkSettings(**{k: (tuple(v) if isinstance(v, (list, tuple)) or OmegaConf.is_list(v) else v)
                                    for k, v in OmegaConf.to_container(cfg.settings, resolve=True).items()},
                                 seed=int(cfg.seed))
    t_start = time.time()
    target = load_target(str(b.source), lora=b.get("lora"), local_files_only=True, device=cfg.runtime.device,
                         dtype=cfg.runtime.dtype)
    ev = load_ground_truth(b.target_dir, target.info.resolution, progress=progress)
    membership = json.loads((Path(b.target_dir) / "membership.json").read_text())
    attacks: dict[str, Attack] = {}
    for name, spec in (cfg.get("attack") or {}).items():
        spec = OmegaConf.to_container(spec, resolve=False)
        if "reference" in spec:
            if not b.get("reference"):
                continue  # calibrated configs need a reference; added below when the bench has one
            spec["reference"] = {**{k: v for k, v in spec["reference"].items() if not str(v).startswith("${")},
                                 "source": str(b.reference), "local_files_only": True}
        attacks[str(name)] = instantiate(spec, _convert_="all")
    if b.get("reference") and cfg.get("calibrate", True):
        from audit.attacks.calibrated import Calibrated

        ref = {"source": str(b.reference), "local_files_only": True, "device": cfg.runtime.device,
               "dtype": cfg.runtime.dtype}
        for name in [n for n, a in list(attacks.items()) if a.access == "gray" and not isinstance(a, Calibrated)]:
            attacks.setdefault(f"{name}_calibrated", Calibrated(attack=attacks[name], reference=ref))
    rows = []
    for name, attack in attacks.items():
        row = benchmark_attack(target, ev, name, attack, settings)
        if row["status"] == "ok":
            pos, neg = np.array(row["scores"]["member"]), np.array(row["scores"]["nonmember"])
            row["set_level"] = set_level_power(pos, neg, settings)
            row["null"] = null_fpr(neg, settings)
            row["smallest_n_power80_all_members"] = smallest_n(row["set_level"], 1.0)
        rows.append(row)
        if progress:
            print(f"{name}: " + (f"AUC {row['auc']:.3f}, {row['evals_per_image']:.0f} evals/img, "
                                 f"{row['images_per_s']:.1f} img/s" if row["status"] == "ok" else row["status"]),
                  flush=True)
    return {
        "name": str(cfg.name), "target_dir": str(b.target_dir), "target": target.info.to_dict(),
        "lora": b.get("lora"), "reference": b.get("reference"), "n_member": sum(r.role == "member" for r in ev.records),
        "n_nonmember": sum(r.role == "nonmember" for r in ev.records), "training": membership.get("training"),
        "settings": settings.__dict__, "machine": _machine_line(target), "wall_s": time.time() - t_start,
        "command": "python scripts/benchmark.py " + " ".join(_overrides()), "attacks": rows,
    }


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:
        return []


def _machine_line(target: Target) -> str:
    if target.device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(target.device)}"
    return f"CPU only, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _fmt_ci(x: float, ci: list[float]) -> str:
    return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def write_benchmark(result: dict[str, Any], out: str | Path) -> Path:
    """``benchmark.json`` (scores included), ``benchmark.md`` and the plots, in ``out``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from audit.stats.metrics import roc_points

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=1, default=float))
    ok = [r for r in result["attacks"] if r["status"] == "ok"]
    s = result["settings"]
    md = [f"# Benchmark: {result['name']}", "",
          f"Target `{result['target_dir']}`" + (" + LoRA, reference (base) model for `_calibrated` rows"
                                                 if result.get("lora") else "") +
          f": {result['n_member']} members, {result['n_nonmember']} non-members (known split). "
          f"{result['machine']}; {result['wall_s']:.0f} s in all.", "",
          f"Command: `{result['command']}`", ""]
    tr = result.get("training") or {}
    if tr:
        md += ["Training: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                        for k, v in tr.items() if not isinstance(v, (dict, list))), ""]
    md += ["## Membership inference, members vs non-members", "",
           "AUC and TPR with stratified bootstrap 95% CIs; `n` = non-members behind each threshold (a TPR at "
           "0.1% FPR needs ≥ 1,000). Overhead = attack wall time ÷ a bare loop making the same UNet calls.", "",
           "| attack | access | AUC | TPR@1%FPR | TPR@0.1%FPR | evals/img | img/s | peak mem (MB) | overhead |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in result["attacks"]:
        if r["status"] != "ok":
            md.append(f"| {r['attack']} | | {r['status']} | | | | | | |")
            continue
        t1, t01 = r["tpr_at_0.01_fpr"], r["tpr_at_0.001_fpr"]
        t01s = _fmt_ci(t01["tpr"], t01["ci"]) + f" (n={t01['n_nonmember']})"
        if not t01["achievable"]:
            t01s += " not measurable"
        md.append(f"| {r['attack']} | {r['access']} | {_fmt_ci(r['auc'], r['auc_ci'])} | "
                  f"{_fmt_ci(t1['tpr'], t1['ci'])} (n={t1['n_nonmember']}) | {t01s} | {r['evals_per_image']:.0f} | "
                  f"{r['images_per_s']:.1f} | {r['peak_memory_mb']:.0f} | {r.get('overhead_ratio', float('nan')):.2f} |")
    if any(r.get("access") == "white" for r in ok):
        md += ["", "White-box attacks (GSA) also make backward passes (`backward_passes_per_image` in their params); "
               "the bare loop makes the forward calls only, so their overhead ratio mostly measures the backward "
               "passes and GSA's per-image gradients, not framework cost."]
    md += ["", f"## Set-level test (one-sided Mann–Whitney U) vs number of suspect works, α = {s['alpha']}", "",
           f"Median p-value over {s['n_draws']} draws [quartiles] and power (share of draws with p ≤ α); suspects "
           "mix members at the given fraction with held-out non-members; controls are other held-out non-members.", ""]
    for r in ok:
        md += [f"**{r['attack']}** — fewest suspects for 80% power with all suspects members: "
               f"{r['smallest_n_power80_all_members'] or 'not reached'}", "",
               "| members among suspects | " + " | ".join(f"n = {n}" for n in s["suspect_sizes"]) + " |",
               "|---|" + "---|" * len(s["suspect_sizes"])]
        for frac in s["member_fractions"]:
            cells = []
            for n in s["suspect_sizes"]:
                c = next(x for x in r["set_level"] if x["n_suspect"] == n and x["member_fraction"] == frac)
                cells.append(f"{c['median_p']:.2g} [{c['p_q25']:.2g}, {c['p_q75']:.2g}], power {c['power']:.2f}"
                             if c["available"] else "n/a (too few works)")
            md.append(f"| {frac:.0%} | " + " | ".join(cells) + " |")
        nl = r["null"]
        md += ["", f"Null (all {nl['n_suspect']} suspects non-members, {nl['n_control']} controls, {nl['n_draws']} "
               f"draws): false-positive rate at α = {nl['alpha']}: **{nl['fpr']:.4f}** "
               f"[{nl['fpr_ci'][0]:.4f}, {nl['fpr_ci'][1]:.4f}] (Clopper–Pearson 95%).", ""]
    (out / "benchmark.md").write_text("\n".join(md) + "\n")

    if ok:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for r in ok:
            roc = roc_points(np.array(r["scores"]["member"]), np.array(r["scores"]["nonmember"]))
            axes[0].plot(roc.fpr, roc.tpr, label=f"{r['attack']} ({r['auc']:.2f})")
            axes[1].loglog(np.maximum(roc.fpr, 1e-4), np.maximum(roc.tpr, 1e-4), label=r["attack"])
        axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
        axes[0].set(xlabel="FPR", ylabel="TPR", title=f"ROC, {result['name']}")
        axes[1].set(xlabel="FPR", ylabel="TPR", title="ROC (log-log)", xlim=(1e-3, 1), ylim=(1e-3, 1))
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "roc.png", dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for r in ok:
            for frac, style in zip(s["member_fractions"], ["-", "--", ":"]):
                pts = [(x["n_suspect"], x["median_p"]) for x in r["set_level"]
                       if x["member_fraction"] == frac and x["available"]]
                if pts:
                    ax.semilogy(*zip(*pts), style, marker="o", label=f"{r['attack']}, {frac:.0%} members")
        ax.axhline(s["alpha"], color="k", lw=0.8, ls=":")
        ax.set(xlabel="suspect works", ylabel="median p-value", title="set-level test: p vs suspects")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "pvalue_vs_n.png", dpi=110)
        plt.close(fig)
    return out
