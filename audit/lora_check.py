"""Strict LoRA application: every module a LoRA file names must exist in the model, or the load is refused.

diffusers / peft skip LoRA keys that match no module and only log it, so a LoRA meant for another model
(or a damaged file) could be "audited" while only a part of it was applied. :func:`apply_lora_checked`
loads the adapter, then compares the modules named in the file with the modules that actually received
it. With ``strict`` (``target.lora_strict=true``, the default) any difference stops the run with one line;
otherwise the partial adapter is applied and the returned label (appended to the LoRA's name in the
target's info, hence in run.json and the report) says how much was not applied.
"""
from __future__ import annotations

import re
from typing import Any

#: Suffixes of LoRA tensors in the diffusers / peft / older diffusers formats: the module path precedes them.
_SUFFIX = re.compile(r"\.(?:lora(?:_linear_layer)?\.(?:down|up)|lora_[AB](?:\.[\w-]+)?|lora_(?:down|up)|"
                     r"lora_magnitude_vector(?:\.[\w-]+)?)\.weight$|\.alpha$")
_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "prior")


class LoraMismatch(ValueError):
    """A LoRA file names modules the model does not have (one-line message)."""


def file_modules(state: dict[str, Any]) -> tuple[set[str], list[str]]:
    """Module paths (``component.dotted.path``) named by LoRA tensors, and keys that are not LoRA tensors of
    a known component in a recognised format."""
    modules, other = set(), []
    for key in state:
        m = _SUFFIX.search(key)
        comp = key.split(".", 1)[0]
        if m is None or comp not in _COMPONENTS:
            other.append(key)
            continue
        if key.endswith(".alpha"):
            continue
        modules.add(key[: m.start()])
    return modules, other


def applied_modules(pipe: Any, adapter: str) -> set[str]:
    """Modules of the pipeline's components that carry ``adapter`` after loading."""
    out = set()
    for comp in _COMPONENTS:
        model = getattr(pipe, comp, None)
        if model is None or not hasattr(model, "named_modules"):
            continue
        for name, mod in model.named_modules():
            lora_a = getattr(mod, "lora_A", None)
            if lora_a is not None and hasattr(lora_a, "keys") and adapter in lora_a.keys():
                out.add(f"{comp}.{name}")
    return out


def apply_lora_checked(pipe: Any, state: dict[str, Any], adapter: str, label: str, strict: bool = True) -> str:
    """``pipe.load_lora_weights(state, adapter_name=adapter)`` and check that all of it was applied.

    Returns ``""`` when the whole file applied, else (``strict=False``) a label such as
    ``" [PARTIAL: 2 of 10 LoRA modules not applied: unet.x.to_q, ...]"``. Raises :class:`LoraMismatch` (one line)
    when ``strict`` and anything did not apply.
    """
    expected, unrecognised = file_modules(state)
    pipe.load_lora_weights(state, adapter_name=adapter)
    applied = applied_modules(pipe, adapter)
    missing = sorted(expected - applied) + sorted(unrecognised)
    total = len(expected) + len(unrecognised)
    if not missing:
        return ""
    examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    what = f"{len(missing)} of {total} LoRA modules/keys in {label} match nothing in this model ({examples})"
    if strict:
        raise LoraMismatch(f"{what}; refused (target.lora_strict=false applies the matching part and labels the "
                           "report)")
    return f" [PARTIAL: {what}; applied anyway, target.lora_strict=false]"
