"""Shared fixtures: tiny real diffusers models, built and saved locally, loaded through the real path."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from audit.groundtruth.synthetic import render_artwork  # noqa: E402

RES = 16  # pixel resolution of the tiny DDPMs
N_MEMBERS = 16
N_HELD_OUT = 32


@dataclass
class TinyDDPM:
    model_dir: Path
    member_paths: list[Path]
    held_out_paths: list[Path]


def _write_artworks(folder: Path, n: int, offset: int) -> list[Path]:
    """Synthetic artworks (several artists) as PNG files; offset keeps member and held-out works distinct."""
    folder.mkdir(parents=True, exist_ok=True)
    artists = ["stripes", "circles", "grid", "waves"]
    paths = []
    for i in range(n):
        idx = offset + i
        arr = render_artwork(artists[idx % 4], idx, size=RES, seed=123)
        p = folder / f"art_{idx:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def _load_tensor(paths: list[Path]) -> torch.Tensor:
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)


#: Fixtures that train a model for longer than a few seconds or run a whole audit. Every test that uses one,
#: directly or through another fixture, is marked ``slow`` at collection (below), so ``pytest -m "not slow"``
#: leaves it out without a mark on each test. ``memorized_ddpm`` (about 10 s, once) stays in the fast subset:
#: it is what shows there that a memorising model is detected. A new fixture that trains goes here.
SLOW_FIXTURES = frozenset({
    "overfit_ddpm",    # 256 works, 600 steps (~45 s)
    "finetune",        # text-conditional base + fine-tune (test_attacks_text_calibration)
    "memorised",       # guided extraction model (test_extraction)
    "collapsed",       # reconstruction's collapsed model (test_reconstruction)
    "flow_finetune",   # flow-matching fine-tune (test_families)
    "outputs_run",     # a trained generator's outputs audited (test_outputs)
    "bilingual",       # a whole audit with English and Chinese reports (test_report_i18n)
    "audit_run",       # a whole audit with its report (test_pipeline)
    "memorised_run",   # a whole black-box audit of a served model (test_http_target)
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)  # a fixture named by a parameter (request.getfixturevalue)
        if callspec is not None:
            used |= {v for v in callspec.params.values() if isinstance(v, str)}
        if SLOW_FIXTURES & used:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def artworks(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("artworks")
    return _write_artworks(root, N_MEMBERS, 0), _write_artworks(root, N_HELD_OUT, 1000)


@pytest.fixture(scope="session")
def memorized_ddpm(tmp_path_factory, artworks) -> TinyDDPM:
    """A tiny DDPM trained long enough on 16 images to memorise them."""
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm

    members, held_out = artworks
    unet, sched = build_ddpm(RES, channels=(16, 32, 32), seed=0)
    train_ddpm(unet, sched, _load_tensor(members), steps=400, batch_size=N_MEMBERS, lr=1e-3, seed=0, progress=False)
    out = save_ddpm(unet, sched, tmp_path_factory.mktemp("ddpm_memorized"))
    return TinyDDPM(out, members, held_out)


@dataclass
class TensorSplit:
    model_dir: Path
    members: torch.Tensor  # [-1, 1] images the model was trained on
    held_out: torch.Tensor


@pytest.fixture(scope="session")
def overfit_ddpm(tmp_path_factory) -> TensorSplit:
    """A DDPM trained on 256 small (8×8) artworks for ~300 epochs: overfit but not a lookup table.

    This is the regime of the published DDPM benchmarks (a model that generalises somewhat but fits its
    training set better). PIA needs it: on a model that has collapsed onto a handful of images
    (``memorized_ddpm``) ε_θ(x0, 0) is no longer a usable proximal noise and PIA's ranking inverts
    (measured here: AUC 0.1–0.3), while the loss attack is near-perfect.
    """
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm

    artists = ["stripes", "circles", "grid", "waves"]

    def render(offset: int, n: int) -> torch.Tensor:
        arr = np.stack([render_artwork(artists[i % 4], offset + i, size=8, seed=5) for i in range(n)])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)

    members, held_out = render(0, 256), render(10_000, 256)
    unet, sched = build_ddpm(8, channels=(32, 64), seed=0)
    train_ddpm(unet, sched, members, steps=600, batch_size=128, lr=1e-3, seed=0, progress=False)
    out = save_ddpm(unet, sched, tmp_path_factory.mktemp("ddpm_overfit"))
    return TensorSplit(out, members, held_out)


@pytest.fixture(scope="session")
def untrained_ddpm(tmp_path_factory, artworks) -> TinyDDPM:
    """Same architecture, never trained: it cannot know which images are members."""
    from audit.groundtruth.ddpm import build_ddpm, save_ddpm

    members, held_out = artworks
    unet, sched = build_ddpm(RES, channels=(16, 32, 32), seed=1)
    out = save_ddpm(unet, sched, tmp_path_factory.mktemp("ddpm_untrained"))
    return TinyDDPM(out, members, held_out)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Stable-Diffusion-layout model (untrained) and a random non-zero LoRA for it."""
    from audit.groundtruth.sd import build_tiny_sd, make_lora

    root = tmp_path_factory.mktemp("sd")
    model = build_tiny_sd(root / "model", resolution=32, seed=0)
    lora = make_lora(model, root / "lora", rank=4, seed=0, init_scale=0.5)
    return model, lora


def evidence_for(members: list[Path], held_out: list[Path], resolution: int = RES):
    """An EvidenceSet with members as role 'member' and held-out works as 'nonmember'."""
    from audit.data import load_evidence

    entries = [{"path": str(p), "role": "member", "caption": "a painting"} for p in members]
    entries += [{"path": str(p), "role": "nonmember", "caption": "a painting"} for p in held_out]
    return load_evidence(entries, resolution, progress=False)


def evidence_from_tensors(members: torch.Tensor, held_out: torch.Tensor):
    """An EvidenceSet built directly from [-1, 1] image tensors (ids = SHA-256 of the uint8 pixels)."""
    import hashlib

    from audit.types import EvidenceSet, ImageRecord

    pixels = torch.cat([members, held_out]).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    roles = ["member"] * len(members) + ["nonmember"] * len(held_out)
    records = [ImageRecord(image_id=hashlib.sha256(p.numpy().tobytes()).hexdigest(), path=f"mem://{i}", role=r)
               for i, (p, r) in enumerate(zip(pixels, roles))]
    return EvidenceSet(records, pixels)


@contextmanager
def count_forward_calls(model_cls):
    """Count the images passed through ``model_cls.forward`` (a UNet class) inside the block."""
    calls = {"n": 0}
    orig = model_cls.forward

    def counting_forward(self, sample, *a, **k):
        calls["n"] += sample.shape[0]
        return orig(self, sample, *a, **k)

    model_cls.forward = counting_forward
    try:
        yield calls
    finally:
        model_cls.forward = orig


def compose_audit(overrides: list[str]):
    """The audit config composed from the package's configs with ``overrides`` (as audit-run would)."""
    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=overrides, return_hydra_config=False)


def small_audit(ddpm: TinyDDPM, root: Path, n_suspect: int = 8, n_control: int = 16) -> tuple[list[str], list[dict]]:
    """Copies of ``n_suspect`` members (suspects) and ``n_control`` held-out works (controls) of ``ddpm`` under
    ``root/works``, their manifest, and the overrides of a quick audit of them (loss only, small resamples, HTML)."""
    import shutil

    from audit.data import write_manifest

    works = root / "works"
    works.mkdir()
    rows = []
    for role, paths in (("suspect", ddpm.member_paths[:n_suspect]), ("control", ddpm.held_out_paths[:n_control])):
        for p in paths:
            dst = works / f"{role}_{p.name}"
            shutil.copyfile(p, dst)
            rows.append({"path": str(dst), "role": role, "caption": "", "artist": "a", "created": ""})
    manifest = write_manifest(rows, root / "manifest.csv")
    base = ["experiment=own_model", f"target.source={ddpm.model_dir}", "target.local_files_only=true",
            f"data.manifest={manifest}", "attack=[loss]", "attack.loss.timesteps=[50,100]", "runtime.progress=false",
            "stats.n_permutations=499", "stats.n_bootstrap=50", "stats.crossfit_permutations=49", "stats.n_placebo=50",
            "report.formats=[html]"]
    return base, rows
