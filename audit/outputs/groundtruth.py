"""Ground truth for the outputs target: generators with a known training split, their outputs, and screenshots.

- :func:`train_generator` trains (once, cached) a small pixel DDPM on a recorded member split of procedural
  artworks until it reproduces them — the memorising generator — or on a disjoint split — the *null generator*
  that never saw the audited works but learnt the same artists' styles (outputs resemble the genre, not the works).
- :func:`generate` samples it deterministically (DDIM, one recorded seed per output).
- :func:`screenshot` turns an output into what an artist actually collects: the image rescaled inside a phone-UI
  frame (status bar, app bar, caption text, buttons), sometimes partly cropped or watermarked, saved as JPEG at
  quality 60–80 and rescaled again. Every choice comes from a seeded generator and is returned as provenance.
- :func:`paste_partial` makes a partial copy: a region of a work pasted, rescaled, into an unrelated image.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["train_generator", "generate", "screenshot", "paste_partial", "phone_frame"]


def _key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def train_generator(images: np.ndarray, out_root: str | Path, *, resolution: int, channels: Sequence[int] = (16, 32, 32),
                    steps: int = 1500, copies: int = 4, lr: float = 2e-3, seed: int = 0, label: str = "gen",
                    progress: bool = False) -> Path:
    """Train a DDPM on ``images`` (uint8 ``[N, H, W, 3]``) or reuse the cached one; returns its diffusers folder."""
    import torch

    from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm

    ids = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in images]
    spec = {"members": ids, "resolution": resolution, "channels": list(channels), "steps": steps, "copies": copies,
            "lr": lr, "seed": seed}
    out = Path(out_root) / f"{label}_{_key(spec)}"
    if (out / "model_index.json").is_file():
        return out
    unet, sched = build_ddpm(resolution, channels=tuple(channels), seed=seed)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1).repeat(copies, 1, 1, 1)
    stats = train_ddpm(unet, sched, x, steps=steps, batch_size=len(x), lr=lr, seed=seed, progress=progress,
                       checkpoint=Path(out_root) / f"{label}_{_key(spec)}.ckpt")
    save_ddpm(unet, sched, out, membership={"spec": spec, "training": stats, "members": ids})
    return out


def generate(model_dir: str | Path, n: int, *, seed: int = 0, steps: int = 50, batch: int = 64) -> np.ndarray:
    """``n`` DDIM samples (eta 0) of a pixel DDPM folder as uint8 ``[n, H, W, 3]``; sample ``i`` uses seed ``seed + i``."""
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True).eval()
    sched = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", local_files_only=True)
    res = int(unet.config.sample_size)
    out = []
    for start in range(0, n, batch):
        idx = range(start, min(n, start + batch))
        x = torch.stack([torch.randn(3, res, res, generator=torch.Generator().manual_seed(seed + i)) for i in idx])
        sched.set_timesteps(steps)
        with torch.inference_mode():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


_UI_THEMES = (((18, 18, 20), (235, 235, 240)), ((250, 250, 252), (30, 30, 35)), ((32, 40, 64), (220, 225, 240)))


def phone_frame(img: Image.Image, rng: np.random.Generator, *, width: int = 360, caption: str = "") -> tuple[Image.Image, dict]:
    """Place ``img`` in a phone-app screenshot: status bar (clock, battery), app bar, the image scaled to the screen
    width (minus margins), a caption and a row of buttons below. Returns the screenshot and its layout."""
    bg, fg = _UI_THEMES[int(rng.integers(len(_UI_THEMES)))]
    margin = int(rng.integers(0, 24))
    side = width - 2 * margin
    status_h, bar_h = 24, int(rng.integers(40, 64))
    below = int(rng.integers(90, 160))
    height = status_h + bar_h + side + below
    shot = Image.new("RGB", (width, height), bg)
    d = ImageDraw.Draw(shot)
    d.text((10, 6), f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}", fill=fg)
    d.rectangle((width - 34, 7, width - 12, 17), outline=fg)
    d.rectangle((width - 32, 9, width - 32 + int(rng.integers(4, 19)), 15), fill=fg)
    d.text((44, status_h + bar_h // 2 - 6), "AI Painter - Results", fill=fg)
    d.line((12, status_h + bar_h // 2, 28, status_h + bar_h // 2), fill=fg, width=2)
    top = status_h + bar_h
    resample = (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS)[int(rng.integers(3))]
    shot.paste(img.resize((side, side), resample), (margin, top))
    y = top + side + 10
    d.text((12, y), (caption or "prompt: a painting")[:52], fill=fg)
    d.text((12, y + 16), "Generated with AI Painter v2.3", fill=fg)
    for k in range(3):
        x0 = 12 + k * (width - 24) // 3
        d.rounded_rectangle((x0 + 4, y + 40, x0 + (width - 24) // 3 - 4, y + 72), radius=10, outline=fg)
        d.text((x0 + 20, y + 50), ("Save", "Share", "Redo")[k], fill=fg)
    return shot, {"image_box": [margin, top, margin + side, top + side], "size": [width, height], "theme": [bg, fg]}


def _watermark(shot: Image.Image, box: Sequence[int], rng: np.random.Generator) -> None:
    d = ImageDraw.Draw(shot)
    x0, y0, x1, y1 = box
    for k in range(int(rng.integers(1, 4))):
        x = int(rng.integers(x0, max(x0 + 1, x1 - 120)))
        y = int(rng.integers(y0, max(y0 + 1, y1 - 14)))
        d.text((x, y), "@ai_painter_app", fill=(255, 255, 255))


def screenshot(output: np.ndarray, seed: int, *, caption: str = "", watermark_p: float = 0.3,
               crop_p: float = 0.3) -> tuple[bytes, dict[str, Any]]:
    """A realistic screenshot of one generated image (uint8 ``[H, W, 3]``) as JPEG bytes, plus what was done."""
    rng = np.random.default_rng([int(seed), 24])
    shot, layout = phone_frame(Image.fromarray(output), rng, width=int(rng.integers(300, 420)), caption=caption)
    record: dict[str, Any] = {"frame": layout}
    if rng.uniform() < watermark_p:
        _watermark(shot, layout["image_box"], rng)
        record["watermark"] = True
    if rng.uniform() < crop_p:  # the artist cropped away part of the image (e.g. a side)
        w, h = shot.size
        x0, y0, x1, y1 = layout["image_box"]
        cut = int((x1 - x0) * rng.uniform(0.1, 0.3))
        side = int(rng.integers(4))
        box = [0, 0, w, h]
        if side == 0:
            box[0] = x0 + cut
        elif side == 1:
            box[2] = x1 - cut
        elif side == 2:
            box[1] = y0 + cut
        else:
            box[3] = y1 - cut
        shot = shot.crop(tuple(box))
        record["crop"] = box
    scale = float(rng.uniform(0.7, 1.6))  # the phone's pixel density / the messenger's rescale
    shot = shot.resize((max(16, int(shot.width * scale)), max(16, int(shot.height * scale))), Image.Resampling.BILINEAR)
    quality = int(rng.integers(60, 81))
    buf = io.BytesIO()
    shot.save(buf, format="JPEG", quality=quality)
    record.update(scale=round(scale, 3), jpeg_quality=quality)
    return buf.getvalue(), record


def paste_partial(work: np.ndarray, background: np.ndarray, rng: np.random.Generator, *, frac: float = 0.5,
                  out_size: int = 256) -> tuple[np.ndarray, dict[str, Any]]:
    """A partial copy: a ``frac``-sided region of ``work`` pasted, rescaled, into an unrelated ``background`` image
    (both uint8 ``[H, W, 3]``), returned at ``out_size`` px with where the region came from and went."""
    h, w = work.shape[:2]
    rh, rw = max(4, int(h * frac)), max(4, int(w * frac))
    y, x = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    region = Image.fromarray(work[y:y + rh, x:x + rw])
    canvas = Image.fromarray(background).resize((out_size, out_size), Image.Resampling.BICUBIC)
    scale = float(rng.uniform(0.8, 1.3)) * out_size / max(h, w)
    region = region.resize((max(8, int(rw * scale)), max(8, int(rh * scale))), Image.Resampling.BICUBIC)
    px = int(rng.integers(0, max(1, out_size - region.width)))
    py = int(rng.integers(0, max(1, out_size - region.height)))
    canvas.paste(region, (px, py))
    return np.asarray(canvas).copy(), {"source_box": [x, y, x + rw, y + rh],
                                       "placed_box": [px, py, px + region.width, py + region.height]}
