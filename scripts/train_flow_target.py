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

A Flux-layout case trained with a non-default T5 prompt length (issue 23: scored with FluxPipeline's 512 tokens
its signal collapses), with kohya-style training metadata in the LoRA file (``ss_resolution``,
``ss_t5xxl_max_token_length``, dataset folders, tag frequencies, …):

    python scripts/train_flow_target.py --family flux --max-sequence-length 32 --t5-tokenizer-length 512 \
        --out .cache/audit/targets/lora_flux_t5len32

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
    p.add_argument("--family", choices=("sd3", "flux"), default="sd3")
    p.add_argument("--max-sequence-length", type=int, default=None,
                   help="T5 prompt length used in training (default: the pipeline's)")
    p.add_argument("--t5-tokenizer-length", type=int, default=None,
                   help="flux: the T5 tokenizer's model_max_length (the pipeline pads to min(512, it))")
    p.add_argument("--no-metadata", action="store_true", help="write the LoRA file without kohya-style metadata")
    a = p.parse_args()

    import diffusers
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
    pipe_cls = diffusers.FluxPipeline if a.family == "flux" else StableDiffusion3Pipeline
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
        if a.family == "flux":
            build_tiny_family("flux", tmp, seed=a.seed, resolution=a.resolution,
                              text_len=a.t5_tokenizer_length or 512)
        else:
            build_tiny_family("sd3", tmp, seed=a.seed, width=a.width, resolution=a.resolution, text_len=48)
        pipe = pipe_cls.from_pretrained(tmp, local_files_only=True)
        images = _as_float(base_ev.pixels)
        _train_vae(pipe.vae, images, steps=a.vae_steps, batch_size=a.batch_size, lr=1e-3, generator=g)
        with torch.no_grad():
            lat = torch.cat([pipe.vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
        pipe.vae.register_to_config(shift_factor=float(lat.mean()), scaling_factor=1.0 / max(float(lat.std()), 1e-6))
        pipe.save_pretrained(tmp, safe_serialization=True)
        target = load_target(str(tmp), local_files_only=True, device="cpu", max_sequence_length=a.max_sequence_length)
        losses = _train_batches(target, images, [r.caption for r in base_ev.records], a.base_steps, a.batch_size,
                                1e-3, a.seed)
        target.pipe.save_pretrained(base, safe_serialization=True)
        timings["base_s"] = time.time() - t0
        timings["base_final_loss"] = float(sum(losses[-20:]) / 20)
        (out / "base_membership.json").write_text(json.dumps(_membership(base_ev, {"kind": "base"}), indent=1))

    if not (lora / "pytorch_lora_weights.safetensors").is_file():
        t0 = time.time()
        target = load_target(str(base), local_files_only=True, device="cpu", max_sequence_length=a.max_sequence_length)
        net = target.denoiser
        net.requires_grad_(False)
        torch.manual_seed(a.seed)
        net.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                   target_modules=list(LORA_TARGETS)))
        idx = [i for i, r in enumerate(ev.records) if r.role == "member"]
        losses = _train_batches(target, _as_float(ev.pixels[idx]), [ev.records[i].caption for i in idx],
                                a.lora_steps, a.lora_batch_size, 2e-3, a.seed + 1)
        t_started = time.time()
        pipe_cls.save_lora_weights(str(lora), transformer_lora_layers=get_peft_model_state_dict(net),
                                   safe_serialization=True)
        if not a.no_metadata:
            _write_kohya_metadata(lora / "pytorch_lora_weights.safetensors", a, target, ev, t0, t_started)
        timings["lora_s"] = time.time() - t0
        timings["lora_final_loss"] = float(sum(losses[-20:]) / 20)

    previous = out / "membership.json"
    if previous.is_file():
        timings = {**json.loads(previous.read_text()).get("training", {}), **timings}
    _write_outputs(out, ev, {"kind": "lora_flow" if a.family == "sd3" else "lora_flux", "seed": a.seed, "artist": a.artist, "group_key": "artist",
                             "model": {k: v for k, v in vars(a).items() if k not in ("out", "cache")},
                             "dataset": dataset, "base": str(base), "lora": str(lora),
                             "training": {**timings, "machine": f"CPU, {os.cpu_count()} cores, "
                                                                f"{torch.get_num_threads()} torch threads"}})
    print(json.dumps(timings))


def _write_kohya_metadata(path: Path, a, target, ev, started: float, finished: float) -> None:
    """The training settings in the keys kohya's sd-scripts write (``ss_*``), so the audit can read them back."""
    from collections import Counter

    from safetensors.torch import load_file, save_file

    members = [r for r in ev.records if r.role == "member"]
    tags = Counter(w.strip(",.").lower() for r in members for w in r.caption.split() if len(w) > 2)
    meta = {
        "ss_output_name": f"{a.artist}_{a.family}_lora",
        "ss_base_model_version": "flux1" if a.family == "flux" else "sd3",
        "ss_network_module": "networks.lora_flux" if a.family == "flux" else "networks.lora_sd3",
        "ss_network_dim": str(a.rank), "ss_network_alpha": str(float(a.rank)),
        "ss_resolution": f"({a.resolution}, {a.resolution})",
        "ss_t5xxl_max_token_length": str(getattr(target, "max_sequence_length", "")),
        "ss_apply_t5_attn_mask": str(bool(getattr(target, "t5_attention_mask", False))),
        "ss_num_train_images": str(len(members)), "ss_max_train_steps": str(a.lora_steps),
        "ss_learning_rate": "0.002", "ss_seed": str(a.seed), "ss_timestep_sampling": "sigmoid",
        "ss_training_started_at": f"{started:.3f}", "ss_training_finished_at": f"{finished:.3f}",
        "ss_dataset_dirs": json.dumps({f"1_{a.artist}": {"n_repeats": 1, "img_count": len(members)}}),
        "ss_tag_frequency": json.dumps({f"1_{a.artist}": dict(tags.most_common(40))}),
    }
    if getattr(target, "guidance", None) is not None:
        meta["ss_guidance_scale"] = str(target.guidance)
    save_file(load_file(str(path)), str(path), metadata=meta)


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
