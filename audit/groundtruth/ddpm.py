"""Build and train small unconditional pixel DDPMs with known member splits (tests, demo, benchmarks).

Real diffusers classes at small sizes (``UNet2DModel`` + ``DDPMScheduler``), saved with
``DDPMPipeline.save_pretrained`` in safetensors so they load through the same path as any user model.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from audit.diffusion import make_process


def build_ddpm(
    resolution: int = 32,
    channels: Sequence[int] = (32, 64, 64),
    attention: bool = False,
    layers_per_block: int = 1,
    num_train_timesteps: int = 1000,
    seed: int = 0,
):
    """A fresh ``UNet2DModel`` and ``DDPMScheduler`` (linear betas, ε-prediction), seeded."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    n = len(channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention and n >= 2:
        # attention at the second-lowest resolution only (e.g. 16×16 for 32×32 input)
        down[1] = "AttnDownBlock2D"
        up[-2] = "AttnUpBlock2D"
    unet = UNet2DModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(8, min(channels)),
    )
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", clip_sample=True)
    return unet, scheduler


def train_ddpm(
    unet,
    scheduler,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-4,
    seed: int = 0,
    bf16: bool = False,
    hflip: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 200,
) -> dict:
    """Train ``unet`` with the standard ε-prediction loss on ``images`` (float in [-1, 1]).

    Deterministic for a given seed on the same machine. Augmentation is off by default: the point of
    these models is to memorise their member split, as a small fine-tuning set does in the real case.
    Returns a small dict of training statistics (final loss, wall time).

    ``checkpoint``: a file to which model, optimiser and random-generator state are saved every
    ``checkpoint_every`` steps (atomically); if it exists when training starts, training resumes from it
    and ends with exactly the weights an uninterrupted run would have produced.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    n = images.shape[0]
    T = scheduler.config.num_train_timesteps
    process = make_process(scheduler)  # forward noising from the scheduler's own ᾱ table (audit/diffusion)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    t0 = time.time()
    losses: list[float] = []
    start, elapsed = 0, 0.0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain containers only
        if state["seed"] != seed or state["batch_size"] != batch_size or state["n_images"] != n:
            raise ValueError(f"checkpoint {ckpt} was made with other settings (seed/batch/images); delete it to restart")
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, losses, elapsed = int(state["step"]), list(state["losses"]), float(state["elapsed"])

    def save_checkpoint(step: int) -> None:
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "losses": losses, "seed": seed,
                    "batch_size": batch_size, "n_images": n, "elapsed": elapsed + time.time() - t0}, tmp)
        tmp.replace(ckpt)

    bar = tqdm(range(start, steps), desc="train DDPM", disable=not progress, initial=start, total=steps)
    for step in bar:
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g) if n > batch_size else torch.randperm(n, generator=g)
        x0 = images[idx]
        if hflip:
            flip = torch.rand(x0.shape[0], generator=g) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, T, (x0.shape[0],), generator=g)
        x_t = process.add_noise(x0, noise, t)
        with autocast:
            pred = unet(x_t.to(device), t.to(device)).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.4f}")
        if ckpt is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(step + 1)
    unet.eval()
    tail = losses[-50:] or [float("nan")]
    return {"steps": steps, "final_loss": sum(tail) / len(tail), "seconds": elapsed + time.time() - t0,
            "resumed_from_step": start,
            "batch_size": batch_size, "lr": lr, "seed": seed}


def save_ddpm(unet, scheduler, out_dir: str | Path, membership: dict | None = None) -> Path:
    """Save as a diffusers ``DDPMPipeline`` folder (safetensors) plus ``membership.json`` when given."""
    from diffusers import DDPMPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    if membership is not None:
        (out / "membership.json").write_text(json.dumps(membership, indent=2))
    return out
