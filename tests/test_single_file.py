"""Single-file checkpoints (A1111 / civitai ``.safetensors`` in the original key layout) through ``load_target``.

A tiny model of each family diffusers reads from one file is written in that file's original layout
(audit/groundtruth/single_file.py, the inverse of diffusers' own converters), loaded with
``load_target(file, config=<its diffusers folder>)`` and compared with the same model loaded from the
folder: identical weights, identical attack scores, a fingerprint over the file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from audit.attacks import PIA, CLiD, LossAttack, score_evidence  # noqa: E402
from audit.groundtruth.single_file import to_single_file  # noqa: E402
from audit.groundtruth.synthetic import ARTISTS, render_artwork  # noqa: E402
from audit.targets import TargetLoadError, load_target  # noqa: E402
from audit.targets.loading import sha256_file  # noqa: E402
from audit.types import EvidenceSet, ImageRecord  # noqa: E402


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_sd) -> dict[str, Path]:
    from audit.groundtruth.families import build_tiny_family

    root = tmp_path_factory.mktemp("single_file")
    return {"sd": tiny_sd[0], **{f: build_tiny_family(f, root / f, seed=0) for f in ("sdxl", "sd3")}}


def _evidence(res: int) -> EvidenceSet:
    arr = np.stack([render_artwork(ARTISTS[i % 4], i, size=res, seed=3) for i in range(4)])
    pixels = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    recs = [ImageRecord(image_id=hashlib.sha256(p.numpy().tobytes()).hexdigest(), path=f"mem://{i}",
                        role="member" if i < 2 else "nonmember", caption=f"a painting number {i}")
            for i, p in enumerate(pixels)]
    return EvidenceSet(recs, pixels)


def _scores(target) -> np.ndarray:
    suite = {"loss": LossAttack(timesteps=[100, 500], n_noise=1), "pia": PIA(t=200),
             "clid": CLiD(timesteps=[500], n_clips=2)}
    df = score_evidence(target, _evidence(int(target.info.resolution)), suite, batch_size=4, seed=0,
                        progress=False).df
    return df.sort_values(["attack", "image_id"])["score"].to_numpy()


def _load(source, **kw):
    return load_target(str(source), local_files_only=True, device="cpu", **kw)


@pytest.mark.parametrize("family,denoiser_only", [("sd", False), ("sdxl", False), ("sd3", False), ("sd3", True)])
def test_single_file_checkpoint_loads_as_the_folder_model(family, denoiser_only, model_dirs, tmp_path):
    """The file (denoiser, VAE and, for SD 1.x, the CLIP encoder in the original layout; or the denoiser
    alone, as SD3 / Flux releases ship) + the folder's configs = the folder model, score for score."""
    folder = model_dirs[family]
    ckpt = to_single_file(folder, family, tmp_path / f"{family}.safetensors", denoiser_only=denoiser_only,
                          with_text_encoder=family == "sd")
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys) != denoiser_only
    # the original layout, not diffusers' (input_blocks / joint_blocks, not down_blocks / transformer_blocks.N.attn)
    assert not any("down_blocks." in k or k.startswith("model.diffusion_model.transformer_blocks.") for k in keys)

    ref, single = _load(folder), _load(ckpt, config=str(folder))
    assert single.family == family and single.info.source == str(ckpt)
    for mine, theirs in zip(ref.denoiser.state_dict().items(), single.denoiser.state_dict().items()):
        assert mine[0] == theirs[0] and torch.equal(mine[1], theirs[1]), mine[0]
    np.testing.assert_array_equal(_scores(single), _scores(ref))
    # the fingerprint names the file's bytes (and the config folder's), not the folder model's weights alone
    assert single.info.files[f"single_file/{ckpt.name}"] == sha256_file(ckpt)
    assert single.fingerprint != ref.fingerprint


def test_a_changed_single_file_changes_fingerprint_and_scores(model_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = model_dirs["sd3"]
    ckpt = to_single_file(folder, "sd3", tmp_path / "a.safetensors")
    state = load_file(str(ckpt))
    key = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    state[key] = state[key] + 0.05 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0))
    save_file(state, str(tmp_path / "b.safetensors"))
    a, b = _load(ckpt, config=str(folder)), _load(tmp_path / "b.safetensors", config=str(folder))
    assert a.fingerprint != b.fingerprint
    assert not np.allclose(_scores(a), _scores(b))


def test_single_file_refusals_are_one_line(model_dirs, tmp_path):
    ckpt = to_single_file(model_dirs["sd3"], "sd3", tmp_path / "m.safetensors", denoiser_only=True)
    with pytest.raises(TargetLoadError, match="single-file checkpoint: set target.config") as err:
        _load(ckpt)
    assert "\n" not in str(err.value)
    # an SD3 file read with an SDXL folder's configs: refused, not silently half-loaded
    with pytest.raises(TargetLoadError, match="could not load .* as a Stable Diffusion XL model"):
        _load(ckpt, config=str(model_dirs["sdxl"]))
