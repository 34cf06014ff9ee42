"""A LoRA must apply completely, or the run stops in one line; lora_strict=false labels a partial adapter."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from audit.cli import user_error_line
from audit.targets import load_target


@pytest.fixture(scope="module")
def partial_lora(tiny_sd, tmp_path_factory):
    """The issue's probe: eight keys of a real LoRA for this model, plus modules the model does not have."""
    _, lora = tiny_sd
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    part = {k: state[k] for k in list(state)[:8]}
    part["unet.mid_block.no_such_block.to_q.lora.down.weight"] = torch.zeros(4, 8)
    part["unet.mid_block.no_such_block.to_q.lora.up.weight"] = torch.zeros(8, 4)
    path = tmp_path_factory.mktemp("lora_partial") / "partial.safetensors"
    save_file(part, str(path))
    return path


def test_partial_lora_is_refused_in_one_line(tiny_sd, partial_lora):
    model, _ = tiny_sd
    with pytest.raises(Exception) as info:
        load_target(str(model), lora=str(partial_lora), local_files_only=True)
    line = user_error_line(info.value)
    assert line is not None and "\n" not in line
    assert "1 of 5 LoRA modules" in line and "no_such_block" in line and "lora_strict=false" in line


def test_lora_strict_false_applies_the_matching_part_and_says_so(tiny_sd, partial_lora):
    model, lora = tiny_sd
    base = load_target(str(model), local_files_only=True)
    partial = load_target(str(model), lora=str(partial_lora), lora_strict=False, local_files_only=True)
    (name,) = partial.info.lora
    assert "[PARTIAL: 1 of 5" in name and partial.fingerprint != base.fingerprint
    full = load_target(str(model), lora=str(lora), local_files_only=True)
    assert full.info.lora == (str(lora),)  # a complete adapter carries no label
