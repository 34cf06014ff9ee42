"""Ground truth for the flow-matching process: a tiny SD3-layout model and a LoRA on one artist.

The LoRA case of ``scripts/train_target.py model=lora`` with a rectified-flow model instead of the SD
layout: a tiny ``StableDiffusion3Pipeline`` (MMDiT transformer, CLIP-L/G + T5, FlowMatchEuler scheduler
with shift 3) pre-trained with the velocity (flow-matching) loss on every synthetic artist but one, then a
peft LoRA on the attention projections trained on ``n_members`` works of the held-out artist. Held-out
works of the same artist are the non-members; the base model is the reference for calibrated attacks.
Writes the same layout as ``train_target.py`` (``base/``, ``lora/``, ``membership.json``,
``evidence.csv``), so ``scripts/benchmark.py bench=local`` benchmarks it:

    python scripts/train_flow_target.py --out .cache/audit/targets/lora_flow_synthetic
    python scripts/benchmark.py bench=local bench.name=lora_flow_synthetic \
        bench.target_dir=.cache/audit/targets/lora_flow_synthetic \
        bench.source=.cache/audit/targets/lora_flow_synthetic/base \
        bench.lora=.cache/audit/targets/lora_flow_synthetic/lora \
        bench.reference=.cache/audit/targets/lora_flow_synthetic/base \
        'attack=[loss,pia,sima,secmi,pfami,gsa,rediffuse,clid,wen]'

Stages whose output exists are skipped (resumable). Seeded throughout.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".cache/audit/targets/lora_flow_synthetic")
    p.add_argument("--cache", default=".cache/audit")
    p.add_argument("--artist", default="circles")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=int, default=64, help="transformer inner dimension")
    p.add_argument("--n-members", type=int, default=32)
    p.add_argument("--n-nonmembers", type=int, default=200)
    p.add_argument("--base-images", type=int, default=480)
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--vae-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lora-steps", type=int, default=600)
    p.add_argument("--lora-batch-size", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from audit.data import load_evidence
    from audit.groundtruth.sources import dataset_entries, split_members
    from audit.groundtruth.families import LORA_TARGETS, build_tiny_family
    from audit.groundtruth.sd import _train_vae
    from audit.targets import load_target
    from audit.groundtruth.train import _as_float, _membership, _write_outputs

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    out = Path(a.out)
    base, lora = out / "base", out / "lora"
    out.mkdir(parents=True, exist_ok=True)
    dataset = {"source": "synthetic", "artists": ["stripes", "circles", "grid", "waves", "rings"],
               "per_artist": 300, "size": 64, "seed": 7}
    entries = dataset_entries(dataset, a.cache)
    split = split_members(entries, a.n_members, a.n_nonmembers, a.seed, groups=[a.artist], group_key="artist")
    ev = load_evidence(split, a.resolution, progress=False)
    timings: dict[str, float] = {}
    g = torch.Generator().manual_seed(a.seed)

    if not (base / "model_index.json").is_file():
        broad = [e for e in entries if e.get("artist") != a.artist]
        pick = torch.randperm(len(broad), generator=torch.Generator().manual_seed(a.seed))[: a.base_images].tolist()
        base_ev = load_evidence([{**broad[i], "role": "member"} for i in pick], a.resolution, progress=False)
        t0 = time.time()
        tmp = out / "base_untrained"
        build_tiny_family("sd3", tmp, seed=a.seed, width=a.width, resolution=a.resolution, text_len=48)
        pipe = StableDiffusion3Pipeline.from_pretrained(tmp, local_files_only=True)
        images = _as_float(base_ev.pixels)
        _train_vae(pipe.vae, images, steps=a.vae_steps, batch_size=a.batch_size, lr=1e-3, generator=g)
        with torch.no_grad():
            lat = torch.cat([pipe.vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
        pipe.vae.register_to_config(shift_factor=float(lat.mean()), scaling_factor=1.0 / max(float(lat.std()), 1e-6))
        pipe.save_pretrained(tmp, safe_serialization=True)
        target = load_target(str(tmp), local_files_only=True, device="cpu")
        losses = _train_batches(target, images, [r.caption for r in base_ev.records], a.base_steps, a.batch_size,
                                1e-3, a.seed)
        target.pipe.save_pretrained(base, safe_serialization=True)
        timings["base_s"] = time.time() - t0
        timings["base_final_loss"] = float(sum(losses[-20:]) / 20)
        (out / "base_membership.json").write_text(json.dumps(_membership(base_ev, {"kind": "base"}), indent=1))

    if not (lora / "pytorch_lora_weights.safetensors").is_file():
        t0 = time.time()
        target = load_target(str(base), local_files_only=True, device="cpu")
        net = target.denoiser
        net.requires_grad_(False)
        torch.manual_seed(a.seed)
        net.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                   target_modules=list(LORA_TARGETS)))
        idx = [i for i, r in enumerate(ev.records) if r.role == "member"]
        losses = _train_batches(target, _as_float(ev.pixels[idx]), [ev.records[i].caption for i in idx],
                                a.lora_steps, a.lora_batch_size, 2e-3, a.seed + 1)
        StableDiffusion3Pipeline.save_lora_weights(str(lora), transformer_lora_layers=get_peft_model_state_dict(net),
                                                   safe_serialization=True)
        timings["lora_s"] = time.time() - t0
        timings["lora_final_loss"] = float(sum(losses[-20:]) / 20)

    previous = out / "membership.json"
    if previous.is_file():
        timings = {**json.loads(previous.read_text()).get("training", {}), **timings}
    _write_outputs(out, ev, {"kind": "lora_flow", "seed": a.seed, "artist": a.artist, "group_key": "artist",
                             "model": {k: v for k, v in vars(a).items() if k not in ("out", "cache")},
                             "dataset": dataset, "base": str(base), "lora": str(lora),
                             "training": {**timings, "machine": f"CPU, {os.cpu_count()} cores, "
                                                                f"{torch.get_num_threads()} torch threads"}})
    print(json.dumps(timings))


def _train_batches(target, images, captions, steps, batch_size, lr, seed) -> list[float]:
    """Minibatch training of the target's trainable denoiser parameters with its process's objective."""
    process = target.process
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x0 = torch.cat([target.encode(images[i:i + 64]) for i in range(0, len(images), 64)])
        conds = [target.encode_text(captions[i:i + 64]) for i in range(0, len(captions), 64)]
    cond_all = torch.cat(conds) if len(conds) > 1 else conds[0]
    net = target.denoiser
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    net.train()
    losses = []
    n = x0.shape[0]
    for _ in range(int(steps)):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        # logit-normal timesteps, as SD3 is trained (Esser et al. 2024): σ = sigmoid(N(0, 1))
        sigma = torch.sigmoid(torch.randn(len(idx), generator=g))
        t = sigma * process.num_train_timesteps
        eps = torch.randn(x0[idx].shape, generator=g)
        x_t = process.add_noise(x0[idx], eps, t)
        pred = process.to_eps(target._model_output(x_t, t, cond_all[idx]).float(), x_t, t)
        loss = process.objective_error(pred, eps, t).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses


if __name__ == "__main__":
    main()
