"""Throughput benchmark (issue 14): the framework against a bare diffusers loop, process scaling, dtypes and the
denoiser's speed settings; and, on a GPU, the largest batch that fits per model family.

    python scripts/throughput.py                         # CPU: writes results/throughput/throughput_cpu.{json,md}
    python scripts/throughput.py --device cuda           # GPU: throughput_cuda.{json,md}
    python scripts/throughput.py --processes 1 2 4       # process counts for the scaling rows

``results/throughput/README.md`` is rewritten from every ``throughput_*.json`` present. What is measured:

* **framework / bare ratio** — per attack and for the suite (loss, PIA, PIAN, SimA, SecMI together): images / s
  and denoiser evaluations / s of :func:`audit.attacks.score_evidence`, beside :func:`audit.benchmark.bare_loop_seconds`
  (the existing benchmark's bare loop: the family adapter's own network call, same number of calls at the same
  batch sizes, same process), timed alternately ``--repeats`` times; the median is reported. Ratio = bare time /
  framework time (1.0 = no overhead; the issue's goal ≥ 0.95).
* **processes** — the suite split into N shards exactly as a sharded audit splits it (:mod:`audit.parallel`:
  batches of the single-process run dealt by content), one process per shard (``--threads`` each), all started
  together after loading; throughput = all images / the slowest shard's time; the bare loop the same way.
* **dtypes** — scores in bfloat16 / float16 weights against float32: Spearman ρ of every attack's scores and the
  change in AUC (members vs held-out works of the ground-truth model), plus the suite's speed.
* **settings** — attention (the model's own SDPA processors vs the classic eager one), ``channels_last``,
  ``torch.compile``: the suite's evaluations / s with each, scores' largest difference to the default.
* **largest batch** (GPU) — :func:`audit.parallel.speed.probe_batch_size` on a denoiser forward of each family's
  real architecture (random weights: memory does not depend on their values) in float16.

The ground-truth model is a pixel DDPM (8×8, channels 32/64, attention at 4×4) trained on 256 synthetic works for
600 steps (256 held out), built once under ``.cache/audit/throughput`` — small enough for a CPU, so per-call
overhead shows as much as it can.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ATTACKS = ("loss", "pia", "pian", "sima", "secmi")


def make_attacks(names=ATTACKS) -> dict[str, Any]:
    from audit.attacks import PIA, PIAN, LossAttack, SecMI, SimA

    make = {"loss": lambda: LossAttack(), "pia": lambda: PIA(), "pian": lambda: PIAN(), "sima": lambda: SimA(),
            "secmi": lambda: SecMI()}
    return {n: make[n]() for n in names}


# ------------------------------------------------------------------------------------------- ground truth
def ground_truth(cache: Path, device: str) -> tuple[Path, Path]:
    """(model folder, evidence tensor file): the 8×8 DDPM and its 256 members + 256 held-out works."""
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm
    from audit.groundtruth.synthetic import render_artwork

    model, data = cache / "ddpm8", cache / "evidence8.pt"
    if (model / "model_index.json").is_file() and data.is_file():
        return model, data
    artists = ["stripes", "circles", "grid", "waves"]

    def render(offset: int, n: int) -> torch.Tensor:
        arr = np.stack([render_artwork(artists[i % 4], offset + i, size=8, seed=5) for i in range(n)])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    members, held = render(0, 256), render(10_000, 256)
    unet, sched = build_ddpm(8, channels=(32, 64), attention=True, seed=0)
    t0 = time.time()
    train_ddpm(unet, sched, members.float().div(127.5).sub(1), steps=600, batch_size=128, lr=1e-3, seed=0,
               progress=False, device=device)
    print(f"trained the ground-truth DDPM in {time.time() - t0:.0f} s")
    save_ddpm(unet.cpu(), sched, model)
    torch.save({"members": members, "held_out": held}, data)
    return model, data


def evidence(data: Path):
    import hashlib

    from audit.types import EvidenceSet, ImageRecord

    d = torch.load(data)
    pixels = torch.cat([d["members"], d["held_out"]])
    roles = ["member"] * len(d["members"]) + ["nonmember"] * len(d["held_out"])
    recs = [ImageRecord(image_id=hashlib.sha256(p.numpy().tobytes()).hexdigest(), path=f"mem://{i}", role=r)
            for i, (p, r) in enumerate(zip(pixels, roles))]
    return EvidenceSet(recs, pixels)


def load(model: Path, device: str, dtype: str = "float32", settings: dict | None = None):
    from audit.parallel.speed import apply_speed_settings
    from audit.targets import load_target

    t = load_target(str(model), local_files_only=True, device=device, dtype=dtype)
    applied = apply_speed_settings(t, settings or {})
    return t, applied


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------- measurements
def time_framework(target, ev, attacks, batch_size: int, device: str, batches=None) -> tuple[float, int, Any]:
    from audit.store import score_with_store

    before = target.unet_evals
    sync(device)
    t0 = time.perf_counter()
    table, _ = score_with_store(target, ev, attacks, None, batch_size=batch_size, seed=0, progress=False,
                                batches=batches)
    sync(device)
    return time.perf_counter() - t0, target.unet_evals - before, table


def time_bare(target, n_images: int, per_image: int, batch_size: int) -> float:
    from audit.benchmark import bare_loop_seconds

    shape = tuple(target.encode(torch.zeros(1, 3, target.info.resolution, target.info.resolution,
                                            device=target.device)).shape[1:])
    return bare_loop_seconds(target, n_images, per_image, batch_size, shape)


def framework_vs_bare(model, ev, device, batch_size, repeats) -> list[dict[str, Any]]:
    rows = []
    target, _ = load(model, device)
    for name in [*ATTACKS, "suite"]:
        attacks = make_attacks(ATTACKS if name == "suite" else (name,))
        time_framework(target, _head(ev, batch_size), attacks, batch_size, device)  # warm-up
        fw, bare, evals = [], [], 0
        for _ in range(repeats):
            secs, evals, _ = time_framework(target, ev, attacks, batch_size, device)
            fw.append(secs)
            bare.append(time_bare(target, len(ev), evals // len(ev), batch_size))
        f, b = statistics.median(fw), statistics.median(bare)
        rows.append({"attack": name, "images": len(ev), "evaluations": evals, "evals_per_image": evals / len(ev),
                     "framework_s": f, "bare_s": b, "framework_images_per_s": len(ev) / f,
                     "framework_evals_per_s": evals / f, "bare_evals_per_s": evals / b, "ratio": b / f,
                     "repeats": repeats, "framework_s_all": fw, "bare_s_all": bare})
        print(f"  {name:6s} framework {evals / f:9.0f} eval/s  bare {evals / b:9.0f} eval/s  ratio {b / f:.3f}")
    return rows


def _head(ev, n):
    from audit.types import EvidenceSet

    return EvidenceSet(ev.records[:n], ev.pixels[:n])


def _worker(rank: int, n: int, model: str, data: str, device: str, batch_size: int, threads: int, barrier,
            queue) -> None:
    torch.set_num_threads(threads)
    from audit.parallel import shard_batches

    dev = device if not device.startswith("cuda") else f"cuda:{rank % max(torch.cuda.device_count(), 1)}"
    target, _ = load(Path(model), dev)
    ev = evidence(Path(data))
    attacks = make_attacks()
    mine = set(shard_batches([r.image_id for r in ev.records], batch_size, n, rank))
    n_mine = sum(min(batch_size, len(ev) - k * batch_size) for k in mine)
    time_framework(target, _head(ev, batch_size), attacks, batch_size, dev)  # warm-up
    barrier.wait()
    secs, evals, _ = time_framework(target, ev, attacks, batch_size, dev, batches=mine)
    barrier.wait()
    bare = time_bare(target, n_mine, evals // max(n_mine, 1), batch_size)
    queue.put({"rank": rank, "images": n_mine, "evaluations": evals, "framework_s": secs, "bare_s": bare,
               "pid": os.getpid()})


def scaling(model, data, device, batch_size, processes, threads) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = []
    for n in processes:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(r, n, str(model), str(data), device, batch_size, threads, barrier,
                                                   queue)) for r in range(n)]
        for p in procs:
            p.start()
        parts = [queue.get(timeout=3600) for _ in procs]
        for p in procs:
            p.join()
        images = sum(p["images"] for p in parts)
        evals = sum(p["evaluations"] for p in parts)
        f = max(p["framework_s"] for p in parts)
        b = max(p["bare_s"] for p in parts)
        rows.append({"processes": n, "threads_per_process": threads, "images": images, "evaluations": evals,
                     "framework_s": f, "bare_s": b, "framework_images_per_s": images / f,
                     "framework_evals_per_s": evals / f, "bare_evals_per_s": evals / b, "ratio": b / f,
                     "shards": sorted(parts, key=lambda p: p["rank"])})
        print(f"  {n} process(es): framework {evals / f:9.0f} eval/s  bare {evals / b:9.0f} eval/s  ratio {b / f:.3f}")
    base = rows[0]["framework_evals_per_s"] / rows[0]["processes"]
    for r in rows:
        r["scaling"] = r["framework_evals_per_s"] / (base * r["processes"])  # 1.0 = linear
        r["speedup"] = r["framework_evals_per_s"] / rows[0]["framework_evals_per_s"]
    return rows


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def dtypes(model, ev, device, batch_size) -> list[dict[str, Any]]:
    from scipy.stats import spearmanr

    rows, ref = [], None
    for dtype in ("float32", "bfloat16", "float16"):
        try:
            target, _ = load(model, device, dtype)
            time_framework(target, _head(ev, batch_size), make_attacks(), batch_size, device)
            secs, evals, table = time_framework(target, ev, make_attacks(), batch_size, device)
        except Exception as e:  # noqa: BLE001 - e.g. an op without a float16 kernel on this device
            rows.append({"dtype": dtype, "status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            print(f"  {dtype}: failed ({e})")
            continue
        df = table.df
        row = {"dtype": dtype, "status": "ok", "evals_per_s": evals / secs, "images_per_s": len(ev) / secs,
               "attacks": {}}
        if ref is None:
            ref = df
        for name in ATTACKS:
            s = df[df.attack == name]
            r = ref[ref.attack == name]
            a = auc(s[s.role == "member"].score.to_numpy(), s[s.role == "nonmember"].score.to_numpy())
            a32 = auc(r[r.role == "member"].score.to_numpy(), r[r.role == "nonmember"].score.to_numpy())
            finite = np.isfinite(s.score.to_numpy()).all()
            rho = float(spearmanr(r.score.to_numpy(), s.score.to_numpy()).statistic) if finite else float("nan")
            row["attacks"][name] = {"auc": a, "auc_float32": a32, "delta_auc": a - a32, "spearman_vs_float32": rho,
                                    "all_finite": bool(finite)}
        rows.append(row)
        print(f"  {dtype}: " + ", ".join(f"{k} ρ={v['spearman_vs_float32']:.4f} ΔAUC={v['delta_auc']:+.4f}"
                                         for k, v in row["attacks"].items()))
    return rows


def settings_rows(model, ev, device, batch_size, compile_: bool) -> list[dict[str, Any]]:
    variants = [("default (attention=auto: SDPA)", {}), ("attention=eager", {"attention": "eager"}),
                ("attention=sdpa", {"attention": "sdpa"}), ("channels_last", {"channels_last": True}),
                ("compile=default", {"compile": True})]
    rows, ref = [], None
    for label, s in variants:
        if s.get("compile") and not compile_:
            rows.append({"setting": label, "status": "not measured (--no-compile; on this 2-core CPU inductor's C++ "
                                                     "compilation did not finish within 10 minutes)"})
            continue
        try:
            target, applied = load(model, device, "float32", s)
            t0 = time.perf_counter()
            time_framework(target, _head(ev, batch_size), make_attacks(), batch_size, device)  # warm-up / compile
            warm = time.perf_counter() - t0
            secs, evals, table = time_framework(target, ev, make_attacks(), batch_size, device)
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a working compiler toolchain
            rows.append({"setting": label, "status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            print(f"  {label}: failed ({type(e).__name__})")
            continue
        scores = table.df.score.to_numpy()
        if ref is None:
            ref = scores
        rows.append({"setting": label, "status": "ok", "applied": applied, "evals_per_s": evals / secs,
                     "first_batch_s": warm, "max_abs_score_diff_vs_default": float(np.max(np.abs(scores - ref)))})
        print(f"  {label}: {evals / secs:9.0f} eval/s (first batch {warm:.1f} s)")
    return rows


def family_probe(device: str, limit: int) -> list[dict[str, Any]]:
    """Largest batch of a denoiser forward per family at its real size (float16, random weights), GPU only."""
    from diffusers import UNet2DConditionModel

    from audit.parallel.speed import probe_batch_size

    fams = {
        "sd (SD 1.x UNet, 64×64 latents)": (dict(cross_attention_dim=768), 64, 77, 768, None),
        "sdxl (SDXL UNet, 128×128 latents)": (dict(
            block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                     "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, use_linear_projection=True), 128, 77, 2048, 1280),
    }
    rows = []
    for name, (cfg, size, seq, dim, pooled) in fams.items():
        with torch.device(device):
            net = UNet2DConditionModel(sample_size=size, **cfg).to(torch.float16).eval()
        params = sum(p.numel() for p in net.parameters())

        def run(b, net=net, size=size, seq=seq, dim=dim, pooled=pooled):
            x = torch.randn(b, 4, size, size, device=device, dtype=torch.float16)
            c = torch.randn(b, seq, dim, device=device, dtype=torch.float16)
            t = torch.full((b,), 500, device=device)
            extra = {}
            if pooled:
                extra["added_cond_kwargs"] = {"text_embeds": torch.randn(b, pooled, device=device, dtype=torch.float16),
                                              "time_ids": torch.randn(b, 6, device=device, dtype=torch.float16)}
            with torch.inference_mode():
                net(x, t, c, **extra)
            torch.cuda.synchronize()

        t0 = time.time()
        r = probe_batch_size(run, start=8, limit=limit)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        b = min(r["largest"], 32)
        for _ in range(3):
            run(b)
        speed = 3 * b / (time.perf_counter() - t1)
        rows.append({"family": name, "parameters": params, "dtype": "float16", "largest_batch": r["largest"],
                     "limit": limit, "tried": r["tried"], "probe_s": time.time() - t0,
                     "evals_per_s_at_batch": {"batch": b, "evals_per_s": speed},
                     "memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30})
        print(f"  {name}: largest batch {r['largest']} (limit {limit})")
        del net
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------- report
def machine(device: str, threads: int) -> dict[str, Any]:
    m = {"device": device, "python": platform.python_version(), "torch": torch.__version__,
         "cpu_count": os.cpu_count(), "threads_per_process": threads, "platform": platform.platform()}
    if device.startswith("cuda"):
        m["gpu"] = torch.cuda.get_device_name(0)
    try:
        m["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return m


def write_md(root: Path) -> Path:
    lines = ["# Throughput (issue 14)", "",
             "Made by `scripts/throughput.py` (commands, model and method in its docstring). Ratio = bare diffusers "
             "loop time / framework time for the same denoiser calls at the same batch sizes in the same process "
             "(1.0 = no overhead). Scaling = evaluations/s with N processes / (N × one process's). The model is a "
             "tiny 8×8 pixel DDPM, so a denoiser call takes tens of microseconds on a GPU: the per-call work around it "
             "(per-image seeded noise, noising, the score) is as visible as it can be; on a full-size model the same "
             "fixed cost is a far smaller share. CPU rows were measured on a 2-core machine shared with other jobs "
             "(load average printed), so their ratios carry a few per cent of noise.", ""]
    for f in sorted(root.glob("throughput_*.json")):
        r = json.loads(f.read_text())
        m = r["machine"]
        kind = "GPU" if r["machine"]["device"].startswith("cuda") else "CPU"
        lines += [f"## {kind} results: {m.get('gpu', 'CPU')} ({f.name})", "",
                  f"torch {m['torch']}, {m['cpu_count']} cores, {m['threads_per_process']} thread(s) per process, "
                  f"load average at start {m.get('load_average_at_start')}; batch size {r['batch_size']}; "
                  f"{r['n_images']} images (8×8 DDPM, {r['model']}); command: `{r['command']}`", "",
                  "### Framework vs bare loop (one process)", "",
                  "| attack | evals/image | framework evals/s | images/s | bare loop evals/s | ratio |", "|---|---|---|---|---|---|"]
        for a in r.get("framework_vs_bare", []):
            lines.append(f"| {a['attack']} | {a['evals_per_image']:.0f} | {a['framework_evals_per_s']:.0f} | "
                         f"{a['framework_images_per_s']:.1f} | {a['bare_evals_per_s']:.0f} | {a['ratio']:.3f} |")
        lines += ["", "### Processes (the suite, sharded as an audit shards it)", "",
                  *(["All processes share the one GPU of this machine (on a node, accelerate gives each its own).", ""]
                    if kind == "GPU" else [f"{m['threads_per_process']} torch thread(s) per process on "
                                           f"{m['cpu_count']} cores (shared with other jobs: see the load average).",
                                           ""]),
                  "| processes | framework evals/s | bare evals/s | ratio | speed-up | scaling |", "|---|---|---|---|---|---|"]
        for s in r.get("scaling", []):
            lines.append(f"| {s['processes']} | {s['framework_evals_per_s']:.0f} | {s['bare_evals_per_s']:.0f} | "
                         f"{s['ratio']:.3f} | {s['speedup']:.2f}× | {s['scaling']:.2f} |")
        lines += ["", "### Weight dtype: rank agreement with float32 (Spearman ρ) and ΔAUC (members vs held out)", "",
                  "| dtype | suite evals/s | " + " | ".join(f"{a} ρ / ΔAUC" for a in ATTACKS) + " |",
                  "|---|---|" + "---|" * len(ATTACKS)]
        for d in r.get("dtypes", []):
            if d["status"] != "ok":
                lines.append(f"| {d['dtype']} | {d['status']} |" + " |" * len(ATTACKS))
                continue
            cells = [f"{d['attacks'][a]['spearman_vs_float32']:.4f} / {d['attacks'][a]['delta_auc']:+.4f}" for a in ATTACKS]
            lines.append(f"| {d['dtype']} | {d['evals_per_s']:.0f} | " + " | ".join(cells) + " |")
        f32 = next((d for d in r.get("dtypes", []) if d["dtype"] == "float32" and d["status"] == "ok"), None)
        if f32:
            lines.append("")
            lines.append("float32 AUCs: " + ", ".join(f"{a} {f32['attacks'][a]['auc']:.3f}" for a in ATTACKS))
        lines += ["", "### Denoiser settings (the suite, float32)", "",
                  "| setting | evals/s | first batch (s) | max |Δscore| vs default |", "|---|---|---|---|"]
        for s in r.get("settings", []):
            if s["status"] != "ok":
                lines.append(f"| {s['setting']} | {s['status']} | | |")
                continue
            lines.append(f"| {s['setting']} | {s['evals_per_s']:.0f} | {s['first_batch_s']:.2f} | "
                         f"{s['max_abs_score_diff_vs_default']:.2e} |")
        lines += ["", "### Largest batch that fits (denoiser forward, float16, real architecture, random weights)", ""]
        if r.get("family_probe"):
            lines += ["| family | parameters | largest batch | evals/s at batch |", "|---|---|---|---|"]
            for p in r["family_probe"]:
                e = p["evals_per_s_at_batch"]
                lines.append(f"| {p['family']} | {p['parameters'] / 1e6:.0f} M | {p['largest_batch']} "
                             f"(probe limit {p['limit']}) | {e['evals_per_s']:.0f} at {e['batch']} |")
        else:
            lines.append("Not measured: no GPU on this machine (the probe needs a device that can run out of memory).")
        lines.append("")
    out = root / "README.md"
    out.write_text("\n".join(lines))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "results" / "throughput"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "audit" / "throughput"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe-limit", type=int, default=1024)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="measure torch.compile (default: on a GPU only)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["bare", "scaling", "dtypes", "settings", "probe"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, data = ground_truth(Path(args.cache), args.device)
    ev = evidence(data)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    result: dict[str, Any] = {"machine": machine(args.device, args.threads), "batch_size": args.batch_size,
                              "n_images": len(ev), "model": "channels 32/64, attention at 4×4, 600 steps on 256 works",
                              "command": "python scripts/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    t0 = time.time()
    if "bare" not in args.skip:
        print("framework vs bare loop:")
        result["framework_vs_bare"] = framework_vs_bare(model, ev, args.device, args.batch_size, args.repeats)
    if "scaling" not in args.skip:
        print("processes:")
        result["scaling"] = scaling(model, data, args.device, args.batch_size, args.processes, args.threads)
    if "dtypes" not in args.skip:
        print("dtypes:")
        result["dtypes"] = dtypes(model, ev, args.device, args.batch_size)
    if "settings" not in args.skip:
        print("settings:")
        compile_ = args.compile if args.compile is not None else args.device.startswith("cuda")
        result["settings"] = settings_rows(model, ev, args.device, args.batch_size, compile_)
    result["family_probe"] = family_probe(args.device, args.probe_limit) if kind == "cuda" and "probe" not in args.skip \
        else []
    result["total_s"] = time.time() - t0
    (out / f"throughput_{kind}.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"throughput: {write_md(out)}")


if __name__ == "__main__":
    main()
