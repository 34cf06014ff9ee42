"""Memory options for large models (target.offload / vae_slicing / vae_tiling): same scores, clear refusals."""
from __future__ import annotations

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from audit.attacks import PIA, LossAttack, score_evidence  # noqa: E402
from audit.groundtruth.synthetic import ARTISTS, render_artwork  # noqa: E402
from audit.targets import TargetLoadError, load_target  # noqa: E402
from audit.types import EvidenceSet, ImageRecord  # noqa: E402


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from audit.groundtruth.families import build_tiny_family

    return build_tiny_family("sdxl", tmp_path_factory.mktemp("mem") / "sdxl", seed=0)


def _evidence(res: int, n: int = 6) -> EvidenceSet:
    arr = np.stack([render_artwork(ARTISTS[i % 4], i, size=res, seed=5) for i in range(n)])
    pixels = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    recs = [ImageRecord(image_id=hashlib.sha256(p.numpy().tobytes()).hexdigest(), path=f"mem://{i}",
                        role="member" if i % 2 else "nonmember", caption=f"work {i}") for i, p in enumerate(pixels)]
    return EvidenceSet(recs, pixels)


def _scores(target) -> np.ndarray:
    suite = {"loss": LossAttack(timesteps=[100, 500], n_noise=1), "pia": PIA(t=200)}
    df = score_evidence(target, _evidence(int(target.info.resolution)), suite, batch_size=6, seed=0, progress=False).df
    return df.sort_values(["attack", "image_id"])["score"].to_numpy()


def _load(path, **kw):
    return load_target(str(path), local_files_only=True, device="cpu", **kw)


def test_vae_slicing_and_tiling_leave_scores_unchanged_at_the_model_resolution(sdxl_dir):
    plain = _load(sdxl_dir)
    sliced = _load(sdxl_dir, vae_slicing=True)
    tiled = _load(sdxl_dir, vae_slicing=True, vae_tiling=True)
    assert sliced.vae.use_slicing and tiled.vae.use_tiling and not plain.vae.use_slicing
    assert sliced.info.memory == {"vae_slicing": True} and plain.info.memory == {}
    assert tiled.info.memory["vae_tile_px"] == plain.info.resolution  # one tile holds a whole image
    assert "memory" in tiled.info.to_dict() and "memory" not in plain.info.to_dict()
    ref = _scores(plain)
    np.testing.assert_allclose(_scores(sliced), ref, rtol=1e-5, atol=1e-6)  # batch-of-1 vs batch numerics only
    np.testing.assert_allclose(_scores(tiled), ref, rtol=1e-5, atol=1e-6)  # batch-of-1 vs batch numerics only
    # slicing is not part of the fingerprint (same computation); tiling is (it changes images above a tile)
    assert sliced.fingerprint == plain.fingerprint != tiled.fingerprint


def test_vae_tiling_changes_the_encoding_of_images_larger_than_a_tile(sdxl_dir):
    """Why tiling is fingerprinted: once an image exceeds the tile, tiles are blended and the latents move."""
    plain, tiled = _load(sdxl_dir), _load(sdxl_dir, vae_tiling=True)
    vae = tiled.vae
    vae.tile_sample_min_size, vae.tile_latent_min_size = 16, 8  # a 32 px image is now 2 × 2 tiles
    images = _evidence(32, n=2).pixels.float().div(127.5).sub(1)
    with torch.no_grad():
        a, b = plain.encode(images), tiled.encode(images)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_cpu_offload_is_refused_without_a_gpu_in_one_line(sdxl_dir, mode):
    with pytest.raises(TargetLoadError) as err:
        _load(sdxl_dir, offload=mode)
    msg = str(err.value)
    assert "\n" not in msg and f"target.offload={mode}" in msg and "target.offload=none" in msg


def test_bad_memory_values_and_the_pixel_family_are_refused(sdxl_dir, untrained_ddpm):
    with pytest.raises(TargetLoadError, match="target.offload must be one of none, model, sequential"):
        _load(sdxl_dir, offload="gpu")
    with pytest.raises(TargetLoadError, match="target.vae_slicing must be true or false"):
        _load(sdxl_dir, vae_slicing="yes")
    with pytest.raises(TargetLoadError, match="single pixel-space network"):
        _load(untrained_ddpm.model_dir, vae_slicing=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_cpu_offload_keeps_scores(sdxl_dir, mode):
    """Offload moves weights, not numbers: the offloaded model scores as the model held on the GPU and holds
    no weights in GPU memory at rest (sequential offload keeps only buffers there). Measured on an H200: max
    |Δscore| 1.0e-7 with TF32 off (tested here) and 7.8e-5 with PyTorch's default TF32 convolutions, where the
    offloaded run gets other cuDNN kernels; each mode alone repeats exactly."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        on_gpu = load_target(str(sdxl_dir), local_files_only=True, device="cuda")
        before = torch.cuda.memory_allocated()
        offloaded = load_target(str(sdxl_dir), local_files_only=True, device="cuda", offload=mode)
        assert torch.cuda.memory_allocated() - before < 2**16  # weights in CPU memory (a few buffers at most)
        assert offloaded.info.memory == {"offload": mode} and offloaded.fingerprint == on_gpu.fingerprint
        np.testing.assert_allclose(_scores(offloaded), _scores(on_gpu), rtol=1e-5, atol=1e-6)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
