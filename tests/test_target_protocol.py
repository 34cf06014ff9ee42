"""The declared target contract (audit/targets/protocol.py): every target class conforms, nothing probes a target.

Target classes are found from the code (every subclass of AuditTarget once the target packages are imported), so a
new target type is checked without being listed here; real instances (a tiny DDPM, a tiny SD, an http service that
is never contacted, collected outputs, the merge job's record) show the declared defaults.
"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

from audit.targets.protocol import (ACCESS, DECLARED, REQUIRED, AuditTarget, TargetCapabilityError, TargetInfoLike,
                                    missing_members)

ROOT = Path(__file__).resolve().parents[1]
#: packages whose import defines every target class (audit.__main__ is not imported: it runs the demo)
TARGET_PACKAGES = ("audit.targets", "audit.targets.families", "audit.blackbox", "audit.outputs", "audit.targets.recorded")

#: a probe of a target (or of its info) instead of the declared contract
PROBE = re.compile(r"\b(?:hasattr|getattr)\(\s*(?:getattr\(\s*)?(?:self\.)?(?:target|tgt|info)\s*,")
#: probes left in files this change does not own, each with the protocol member that replaces it. An entry may be
#: gone (its owner switched to the member); a probe not listed here fails the test.
ALLOWED_PROBES: set[tuple[str, str]] = set()  # none: every target is used through its declared contract


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def target_classes() -> list[type]:
    for name in TARGET_PACKAGES:
        importlib.import_module(name)
    found = [c for c in _all_subclasses(AuditTarget) if c.__module__.startswith("audit.")]
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def concrete_target_classes() -> list[type]:
    return [c for c in target_classes() if not inspect.isabstract(c)]


def probes(text: str) -> list[tuple[int, str]]:
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if PROBE.search(line)]


# ---------------------------------------------------------------------------------------------- classes
def test_every_target_class_is_found_from_the_code():
    from audit.targets.registry import FAMILIES

    names = {c.__name__ for c in concrete_target_classes()}
    assert {"PixelTarget", "LatentTarget", "SDXLTarget", "SD3Target", "FluxTarget", "PixArtTarget", "HttpTarget",
            "OutputsTarget", "RecordedTarget"} <= names
    # every registered model family builds a target class of the contract
    families = {c.family for c in concrete_target_classes()}
    assert set(FAMILIES) <= families, set(FAMILIES) - families


@pytest.mark.parametrize("cls", concrete_target_classes(), ids=lambda c: c.__name__)
def test_every_target_class_implements_the_contract(cls):
    assert missing_members(cls) == [], f"{cls.__module__}.{cls.__qualname__} lacks {missing_members(cls)}"
    access = inspect.getattr_static(cls, "access", None)
    if not isinstance(access, property):
        assert access in ACCESS, (cls, access)
    assert isinstance(cls.uses_score_store, bool) and isinstance(cls.can_decode, bool)
    assert isinstance(cls.operations, (tuple, property))


def test_a_class_missing_a_member_is_reported():
    class NoAccess(AuditTarget):  # required members missing
        def __init__(self):
            self.info = None
            self.device = torch.device("cpu")

    assert missing_members(NoAccess) == ["fingerprint", "dtype", "unet_evals", "access"]

    class SaysItDecodes(AuditTarget):
        info = fingerprint = device = dtype = unet_evals = None
        access = "white"
        can_decode = True

    assert missing_members(SaysItDecodes) == ["decode (can_decode is True)"]

    class DecodesSilently(SaysItDecodes):
        can_decode = False

        def decode(self, latents):
            return latents

    assert missing_members(DecodesSilently) == ["can_decode (decode is implemented)"]
    assert missing_members(int) == ["AuditTarget (not a subclass)"]


def test_the_contract_lists_are_what_the_base_declares():
    # every declared member has its default on AuditTarget; the required ones have none there
    for name in DECLARED:
        assert name in vars(AuditTarget), name
    for name in REQUIRED:
        assert name not in vars(AuditTarget) and name in AuditTarget.__annotations__, name


# ---------------------------------------------------------------------------------------------- no probes
def test_no_target_is_probed_outside_the_allowlist():
    found = set()
    for path in sorted((ROOT / "audit").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for _, line in probes(path.read_text(encoding="utf-8")):
            found.add((rel, line))
    unexpected = sorted(found - ALLOWED_PROBES)
    assert not unexpected, ("probe a target through the declared contract (audit/targets/protocol.py) instead: "
                            + "; ".join(f"{p}: {line}" for p, line in unexpected))


def test_the_probe_scan_can_fail():
    src = ('x = getattr(target, "access", None)\nif hasattr(target, "begin_run"): pass\n'
           'r = getattr(getattr(target, "info", None), "resolution", None)\nn = getattr(self.target, "unet_evals", 0)\n'
           'c = getattr(info, "conditioning", None)\nok = target.access\nname = getattr(attack, "name", "")\n')
    assert [i for i, _ in probes(src)] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------- instances
def _check_instance(t: AuditTarget) -> None:
    assert isinstance(t, AuditTarget)
    for name in REQUIRED + DECLARED:
        getattr(t, name)  # every member resolves on a real instance
    assert isinstance(t.info, TargetInfoLike)
    assert isinstance(t.info.to_dict(), dict) and isinstance(t.info.resolution, int)
    assert t.fingerprint == t.info.fingerprint and t.fingerprint
    assert isinstance(t.device, torch.device) and isinstance(t.dtype, torch.dtype)
    assert isinstance(t.unet_evals, int) and t.access in ACCESS
    assert isinstance(t.conditional, bool) and isinstance(t.conditioning, dict)
    assert isinstance(t.operations, tuple)


class _Named:
    name = "loss"


def test_a_tiny_pixel_model_has_the_declared_defaults(untrained_ddpm, tmp_path):
    from audit.targets import load_target

    t = load_target(str(untrained_ddpm.model_dir), local_files_only=True, device="cpu")
    _check_instance(t)
    assert (t.access, t.family, t.uses_score_store, t.conditional, t.operations) == ("white", "pixel", True, False, ())
    assert t.begin_run(None, {}, seed=0, out=tmp_path) is True
    assert t.run_summary() is None and t.finish_run(tmp_path, None) is None
    assert t.attack_name(_Named()) == "loss"
    assert t.process is not None and t.process.kind == "vp"
    assert any(True for _ in t.denoiser.parameters())
    assert t.pipe is None and t.vae is None and t.blackbox_backend is None
    assert t.can_decode is False
    with pytest.raises(TargetCapabilityError, match="target of kind 'pixel' has no decoder"):
        t.decode(torch.zeros(1, 3, 16, 16))
    assert not list(tmp_path.iterdir())  # the default hooks write nothing


def test_a_tiny_latent_model_decodes(tiny_sd):
    from audit.targets import load_target

    model, _ = tiny_sd
    t = load_target(str(model), local_files_only=True, device="cpu")
    _check_instance(t)
    assert (t.access, t.family, t.conditional, t.can_decode) == ("white", "sd", True, True)
    assert t.vae is not None and t.conditioning == t.info.conditioning
    with torch.no_grad():
        img = t.decode(t.encode(torch.zeros(1, 3, t.info.resolution, t.info.resolution)))
    assert img.shape == (1, 3, t.info.resolution, t.info.resolution) and float(img.abs().max()) <= 1.0


def test_a_service_declares_black_box_access(tmp_path):
    from audit.blackbox import HttpTarget

    t = HttpTarget("http://127.0.0.1:9", resolution=16, cache_dir=None, operations={
        "img2img": {"path": "/v1/images/variations", "body": {"image": "{image_b64}"}}})
    _check_instance(t)
    assert (t.access, t.family, t.uses_score_store, t.operations) == ("black", "http", False, ("img2img",))
    assert t.process is None and t.can_decode is False and t.conditioning == {}
    assert t.finish_run(tmp_path) is None and t.run_summary()["http_requests_sent"] == 0
    with pytest.raises(TargetCapabilityError, match="target of kind 'service' has no decoder"):
        t.decode(torch.zeros(1, 3, 16, 16))


def test_collected_outputs_declare_outputs_access(tmp_path):
    from PIL import Image

    from audit.groundtruth.synthetic import render_artwork
    from audit.outputs import OutputsTarget

    (tmp_path / "outs").mkdir()
    for i in range(2):
        Image.fromarray(render_artwork("stripes", i, size=64, seed=1)).save(tmp_path / "outs" / f"o{i}.png")
    t = OutputsTarget(str(tmp_path / "outs"), work_side=64)
    _check_instance(t)
    assert (t.access, t.family, t.uses_score_store, t.operations) == ("outputs", "outputs", False, ())
    assert t.process is None and t.run_summary() is None and t.can_decode is False


def test_the_merge_jobs_record_offers_no_capability(untrained_ddpm):
    from audit.targets import load_target
    from audit.targets.recorded import RecordedTarget, _Info

    real = load_target(str(untrained_ddpm.model_dir), local_files_only=True, device="cpu")
    values = real.info.to_dict()
    t = RecordedTarget(fingerprint=real.fingerprint, device=torch.device("cpu"), dtype=torch.float32,
                       info=_Info(values), unet_evals=7, conditional=False)
    _check_instance(t)
    assert t.info.to_dict() == values and t.info.kind == "pixel" and t.unet_evals == 7
    assert (t.access, t.family, t.uses_score_store, t.process, t.denoiser) == ("white", "", True, None, None)
    assert t.conditioning == {} and t.training_metadata == {}
    with pytest.raises(TargetCapabilityError, match="scores nothing"):
        t.encode(torch.zeros(1, 3, 16, 16))
