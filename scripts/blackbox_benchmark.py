#!/usr/bin/env python
"""Black-box vs gray-box on the same ground-truth target (issue 15), plus an example black-box audit.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/blackbox_benchmark.py [--out results/blackbox]

1. Ground truth: a 16×16 pixel DDPM trained (``audit.groundtruth.ddpm``, the code behind scripts/train_target.py's
   DDPM) on ``--members`` synthetic works of four procedural artists; ``--held-out`` other works of the same artists
   are the non-members. Cached in ``.cache/audit/targets/blackbox_ddpm16_<settings hash>`` with ``membership.json``.
2. A ground-truth server (``audit.blackbox.server``) on 127.0.0.1 wraps the model; every black-box statistic is
   scored through ``target=http`` (``HttpTarget``: request log, cache off), and the requests are counted at the
   server, per statistic.
3. Gray-box attacks (loss, PIA, and the local ReDiffuse) score the same works on the model itself.
4. Per attack: AUC with its score interval, TPR at 1% FPR with a bootstrap interval, requests (or denoiser
   evaluations) per work, and the fewest suspect works (all members) for which the one-sided Mann–Whitney test
   against the non-members reaches p < 0.01 in 80% of 200 random draws (``audit.benchmark.set_level_power``).
5. An example audit through ``target=http`` (8 members as suspects, 32 held-out works as controls) written, sealed
   and verified under ``<out>/example/``: its report has the request-log section.

Writes ``<out>/benchmark.md`` and ``<out>/benchmark.json`` (every score). About 5-10 minutes on 2 busy CPU cores
(training ~2-4 minutes the first time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTISTS = ["stripes", "circles", "grid", "waves"]


def ground_truth(args) -> tuple[Path, list[dict]]:
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm
    from audit.groundtruth.synthetic import render_artwork

    bs = args.batch_size or args.members
    key = hashlib.sha256(json.dumps([args.members, args.held_out, args.steps, args.seed, 16, [16, 32, 32]]
                                    + ([bs] if args.batch_size else [])).encode()
                         ).hexdigest()[:12]
    root = ROOT / ".cache" / "audit" / "targets" / f"blackbox_ddpm16_{key}"
    works = root / "works"
    works.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(args.members + args.held_out):
        idx = i if i < args.members else 1000 + i
        artist = ARTISTS[idx % 4]
        p = works / f"{artist}_{idx:04d}.png"
        if not p.is_file():
            Image.fromarray(render_artwork(artist, idx, size=16, seed=args.seed + 123)).save(p)
        entries.append({"path": str(p), "role": "member" if i < args.members else "nonmember",
                        "caption": f"a painting in the style of {artist}", "artist": artist})
    model = root / "model"
    if not (model / "model_index.json").is_file():
        members = [e["path"] for e in entries if e["role"] == "member"]
        x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in members]))
        x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)
        t0 = time.time()
        unet, sched = build_ddpm(16, channels=(16, 32, 32), seed=args.seed)
        train_ddpm(unet, sched, x, steps=args.steps, batch_size=bs, lr=1e-3, seed=args.seed, progress=True)
        save_ddpm(unet, sched, model, membership={
            "members": [Path(p).name for p in members], "n_member": args.members, "n_nonmember": args.held_out,
            "steps": args.steps, "batch_size": bs, "seed": args.seed, "train_seconds": round(time.time() - t0, 1)})
    return model, entries


def metrics(pos: np.ndarray, neg: np.ndarray) -> dict:
    from audit.benchmark import BenchmarkSettings, set_level_power, smallest_n
    from audit.stats import auc_with_ci, tpr_at_fpr

    auc = auc_with_ci(pos, neg)
    tpr = tpr_at_fpr(pos, neg, 0.01, n_boot=500)
    settings = BenchmarkSettings(suspect_sizes=(2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32), member_fractions=(1.0,),
                                 n_draws=200, alpha=0.01)
    rows = set_level_power(pos, neg, settings)
    return {"auc": auc.auc, "auc_ci": [auc.lo, auc.hi], "tpr_at_1pct_fpr": tpr.tpr, "tpr_ci": [tpr.lo, tpr.hi],
            "tpr_achievable": bool(tpr.achievable), "n_member": int(pos.size), "n_nonmember": int(neg.size),
            "suspects_for_p_below_0.01": smallest_n(rows, 1.0, 0.8), "power_rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "blackbox"))
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--held-out", type=int, default=128)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: all members)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-example", action="store_true", help="skip the example audit")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from audit.attacks import PIA, LossAttack, ReDiffuse, score_evidence
    from audit.blackbox import BBGenerate, BBImg2Img, BBVariation, HttpTarget
    from audit.blackbox.server import serve_model
    from audit.data import load_evidence
    from audit.targets import load_target

    t_all = time.time()
    model, entries = ground_truth(args)
    ev = load_evidence(entries, 16, progress=False)
    roles = np.array([r.role for r in ev.records])
    cfg_ops = {
        "text2image": {"path": "/v1/images/generations", "body": {"prompt": "{prompt}", "seed": "{seed}",
                       "steps": "{steps}", "size": "{size}"}, "response": {"type": "json_base64", "field": "data.0.b64_json"}},
        "img2img": {"path": "/v1/images/variations", "body": {"image": "{image_b64}", "strength": "{strength}",
                    "prompt": "{prompt}", "seed": "{seed}", "steps": "{steps}"}, "response": {"type": "bytes"}}}
    steps = {"img2img": 100, "text2image": 20}
    blackbox = {"bb_variation": BBVariation(strength=0.1, n=4), "bb_img2img": BBImg2Img(strength=0.3, n=1),
                "bb_generate": BBGenerate(n=16)}
    rows: dict[str, dict] = {}
    scores: dict[str, list[float]] = {}
    server = serve_model(str(model)).start()
    try:
        for name, attack in blackbox.items():
            target = HttpTarget(server.url, resolution=16, operations=cfg_ops, steps=steps, max_concurrency=4,
                                timeout_s=120, name="loopback ground-truth server")
            with tempfile.TemporaryDirectory() as tmp:
                assert target.begin_run(ev, {name: attack}, seed=args.seed, out=tmp)
                before, t0 = server.total, time.time()
                table = score_evidence(target, ev, {name: attack}, batch_size=64, seed=args.seed, progress=False)
                seconds = time.time() - t0
                n_req = server.total - before
            s = table.df.set_index("image_id").loc[[r.image_id for r in ev.records], "score"].to_numpy(float)
            scores[name] = s.tolist()
            rows[name] = {"access": "black (HTTP)", "requests": n_req, "requests_per_work": n_req / len(ev),
                          "seconds": round(seconds, 1), "params": attack.params(),
                          **metrics(s[roles == "member"], s[roles == "nonmember"])}
            print(f"{name}: AUC {rows[name]['auc']:.3f}, {n_req} requests, {seconds:.0f} s", flush=True)
    finally:
        server.stop()
    local = load_target(str(model), local_files_only=True, device="cpu", dtype="float32")
    for name, attack in {"loss": LossAttack(), "pia": PIA(), "rediffuse (local)": ReDiffuse(t=100, steps=10, n=4)}.items():
        local.unet_evals = 0
        t0 = time.time()
        table = score_evidence(local, ev, {name: attack}, batch_size=64, seed=args.seed, progress=False)
        seconds = time.time() - t0
        s = table.df.set_index("image_id").loc[[r.image_id for r in ev.records], "score"].to_numpy(float)
        scores[name] = s.tolist()
        rows[name] = {"access": f"{attack.access} (local model)" if name != "rediffuse (local)" else "gray (local model; "
                      "ReDiffuse's variations made in-process)", "denoiser_evals_per_work": local.unet_evals / len(ev),
                      "requests_per_work": None, "seconds": round(seconds, 1), "params": attack.params(),
                      **metrics(s[roles == "member"], s[roles == "nonmember"])}
        print(f"{name}: AUC {rows[name]['auc']:.3f}", flush=True)

    example = None
    if not args.no_example:
        example = example_audit(model, entries, out / "example")
    membership = json.loads((model / "membership.json").read_text())
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
              "ground_truth": {"model": "DDPM 16x16, UNet (16, 32, 32), trained from scratch", **{k: v for k, v in
                               membership.items() if k != "members"}},
              "settings": {"service_steps": steps, "seed": args.seed}, "attacks": rows,
              "image_ids": [r.image_id for r in ev.records], "roles": roles.tolist(), "scores": scores,
              "example": example, "total_seconds": round(time.time() - t_all, 1)}
    (out / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "benchmark.md").write_text(markdown(result))
    print(f"wrote {out / 'benchmark.md'}")
    return 0


def example_audit(model: Path, entries: list[dict], folder: Path) -> dict:
    """A full audit through target=http against the loopback server (sealed, verified)."""
    from hydra import compose, initialize_config_dir

    from audit import verify
    from audit.blackbox.server import serve_model
    from audit.cli import CONFIG_DIR
    from audit.data import write_manifest
    from audit.pipeline import run_audit

    if folder.exists():
        shutil.rmtree(folder)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{**e, "role": "suspect"} for e in entries if e["role"] == "member"][:8]
        rows += [{**e, "role": "control"} for e in entries if e["role"] == "nonmember"][:32]
        manifest = write_manifest(rows, Path(tmp) / "manifest.csv")
        key = "example-" + hashlib.sha256(os.urandom(16)).hexdigest()[:24]  # a throwaway credential
        os.environ["AUDIT_EXAMPLE_KEY"] = key
        with serve_model(str(model), api_key=key) as server:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose(config_name="audit", overrides=[
                    "experiment=own_model", "target=http", f"target.base_url={server.url}", "target.resolution=16",
                    "target.name=loopback ground-truth server", "target.api_key_env=AUDIT_EXAMPLE_KEY",
                    "target.rate_limit=20", "target.price_per_request=0.002", "target.cache_dir=null",
                    "target.steps.text2image=20", f"data.manifest={manifest}", "attack=[bb_variation,bb_generate]",
                    "attack.bb_generate.n=8", "runtime.progress=false", "report.formats=[html]", "score_store=null",
                    "name=blackbox_example"])
            t0 = time.time()
            run_audit(cfg, folder)
            seconds = time.time() - t0
            sent = server.total
    # the manifest lived in a temporary folder: the results keep only its hashes (config.yaml names the path)
    leaked = [str(p) for p in folder.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    v = verify.verify(folder)
    analysis = json.loads((folder / "analysis.json").read_text())
    return {"folder": folder.name, "requests_received_by_server": sent, "seconds": round(seconds, 1),
            "verified": v.ok, "problems": v.problems, "checksums_sha256": v.checksums_sha256,
            "credential_found_in_files": leaked, "decision": analysis["verdict"]["decision"],
            "p_value": analysis["verdict"].get("p_value")}


def _f(x, d=3):
    return "—" if x is None else f"{x:.{d}f}"


def markdown(r: dict) -> str:
    gt = r["ground_truth"]
    lines = [
        "# Black-box vs gray-box membership inference on one ground-truth target", "",
        f"Produced by `python scripts/{r['command']}` ({r['machine']}; {r['total_seconds']:.0f} s in all).", "",
        f"Target: {gt['model']} on {gt['n_member']} synthetic works (four procedural artists) for {gt['steps']} steps "
        f"at batch {gt.get('batch_size', gt['n_member'])}; "
        f"{gt['n_nonmember']} held-out works of the same artists are the non-members. Black-box statistics were "
        "scored through `target=http` against the loopback ground-truth server (`audit/blackbox/server.py`), each "
        "request counted at the server; gray-box attacks ran on the model itself. Service settings: img2img "
        f"{r['settings']['service_steps']['img2img']} steps × strength, text2image "
        f"{r['settings']['service_steps']['text2image']} steps.", "",
        "| attack | access | AUC [95% CI] | TPR @ 1% FPR [95% CI] | requests / work | denoiser evals / work "
        "| suspects for p < 0.01 (80% of draws) | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in r["attacks"].items():
        tpr = f"{_f(a['tpr_at_1pct_fpr'], 2)} [{_f(a['tpr_ci'][0], 2)}, {_f(a['tpr_ci'][1], 2)}]"
        n = a["suspects_for_p_below_0.01"]
        lines.append(f"| `{name}` | {a['access']} | {_f(a['auc'])} [{_f(a['auc_ci'][0])}, {_f(a['auc_ci'][1])}] | {tpr} "
                     f"| {_f(a.get('requests_per_work'), 2)} | {_f(a.get('denoiser_evals_per_work'), 0)} "
                     f"| {n if n is not None else '> 32'} | {a['seconds']} |")
    lines += ["", "AUC: score interval (Newcombe 2006); TPR at 1% FPR with a 500-resample bootstrap interval, "
              f"{next(iter(r['attacks'].values()))['n_nonmember']} non-members behind the threshold. \"Suspects for "
              "p < 0.01\": the fewest suspect works, all members, for which the one-sided Mann–Whitney test against "
              "the other non-members gives p ≤ 0.01 in at least 80% of 200 random draws (sizes tried: 2–32). "
              "Requests per work for `bb_generate` are shared: works with one caption (here one per artist) share "
              "one pool of generations.", ""]
    ex = r.get("example")
    if ex:
        lines += ["## Example audit through `target=http`", "",
                  f"`{ex['folder']}/`: 8 members as suspects, 32 held-out works as controls, attacks bb_variation "
                  f"(primary) and bb_generate; the server received {ex['requests_received_by_server']} requests; "
                  f"decision `{ex['decision']}` (p = {ex['p_value']:.2g}); `audit-verify` "
                  f"{'verifies it' if ex['verified'] else 'FAILS: ' + '; '.join(ex['problems'])} "
                  f"(checksums.json SHA-256 `{ex['checksums_sha256']}`); the throwaway credential appears in "
                  f"{len(ex['credential_found_in_files'])} of its files. Its report (`report.html`) has the section "
                  "\"Queries to the service (black box)\" with the request-log summary.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
