"""The demo scenario builds a known-truth model + manifest once, and reuses it."""
from __future__ import annotations

import json

import pytest

from audit.data import read_manifest
from audit.groundtruth.demo import DemoScenario


def _tiny(root, **kw) -> DemoScenario:
    params = dict(root=str(root), artists=["stripes", "waves"], resolution=16, members_per_artist=3,
                  nonmembers_per_artist=5, n_suspect=2, n_member=4, n_control=6, n_nonmember=4,
                  channels=[8, 16], train_steps=3, batch_size=6, seed=0)
    params.update(kw)
    return DemoScenario(**params)


@pytest.mark.slow
def test_scenario_builds_manifest_and_model_with_recorded_membership(tmp_path):
    scen = _tiny(tmp_path / "demo")
    assert not scen.is_ready()
    record = scen.prepare(progress=False)
    assert scen.is_ready() and record["key"] == scen.key
    rows = read_manifest(scen.manifest)
    roles = [r["role"] for r in rows]
    # 2 bad files are listed as suspects on purpose
    assert roles.count("suspect") == 2 + 2 and roles.count("member") == 4
    assert roles.count("control") == 6 and roles.count("nonmember") == 4
    membership = json.loads((scen.model_dir / "membership.json").read_text())
    member_names = set(membership["member_paths"])
    nonmember_names = set(membership["nonmember_paths"])
    assert len(member_names) == 6 and not member_names & nonmember_names
    for r in rows:
        name = r["path"].rsplit("/", 1)[-1]
        if r["role"] in ("member",) or (r["role"] == "suspect" and r["artist"] != "unknown"):
            assert name in member_names
        if r["role"] in ("control", "nonmember"):
            assert name in nonmember_names


@pytest.mark.slow
def test_scenario_is_cached_and_rebuilt_when_parameters_change(tmp_path):
    scen = _tiny(tmp_path / "demo")
    scen.prepare(progress=False)
    weights = scen.model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    mtime = weights.stat().st_mtime_ns
    _tiny(tmp_path / "demo").prepare(progress=False)
    assert weights.stat().st_mtime_ns == mtime  # reused, not retrained
    changed = _tiny(tmp_path / "demo", train_steps=4)
    assert not changed.is_ready()
    changed.prepare(progress=False)
    assert changed.is_ready() and not scen.is_ready()


def test_impossible_split_is_rejected_up_front(tmp_path):
    with pytest.raises(ValueError, match="exceeds"):
        _tiny(tmp_path, n_suspect=5, n_member=5)
