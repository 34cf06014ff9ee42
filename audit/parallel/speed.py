"""GPU-side throughput settings of the denoiser, applied in one place after the target is loaded, and a probe
for the largest batch that fits.

Settings (``runtime.*``; each recorded in ``run.json`` under ``scale.speed``):

* ``dtype`` (float32 | bfloat16 | float16) — applied by the target loader; it keys the score store, so scores
  of another dtype are never mixed. ``scripts/throughput.py`` measures the rank agreement (Spearman ρ) and the
  change in AUC against float32 on a ground-truth target before you rely on a lower precision.
* ``attention``: ``auto`` (the model's own processors; diffusers uses PyTorch's scaled-dot-product attention,
  SDPA, wherever torch ≥ 2 provides it), ``sdpa`` (require SDPA: classic processors are switched to
  ``AttnProcessor2_0``), ``eager`` (the classic matmul-softmax processor, for comparison).
* ``channels_last`` — the denoiser's 4-D weights in channels-last memory format (convolutional UNets on GPU).
* ``compile`` — ``false`` or a ``torch.compile`` mode (``true`` = ``default``, ``reduce-overhead``,
  ``max-autotune``), applied in place to the denoiser (``nn.Module.compile``). The first batches then include
  compilation time.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


def validate_speed_config(rt: Any) -> None:
    """One-line errors for the throughput keys of ``runtime`` (attention, channels_last, compile), as declared in
    :class:`audit.schema.RuntimeSchema`."""
    from audit.schema import check_section

    check_section("runtime", rt, only=("attention", "channels_last", "compile"))


def apply_speed_settings(target: Any, rt: Any) -> dict[str, Any]:
    """Apply ``runtime.attention`` / ``channels_last`` / ``compile`` to ``target.denoiser`` (in place).
    Returns what was applied, for run.json."""
    validate_speed_config(rt)
    net = target.denoiser
    applied: dict[str, Any] = {"dtype": str(target.dtype).replace("torch.", "")}
    att = rt.get("attention", "auto")
    if att != "auto":
        set_attention(net, att)
    procs = sorted({type(m.processor).__name__ for _, m in attention_modules(net)})
    applied["attention"] = {"setting": att, "processors": procs}
    if rt.get("channels_last", False):
        net.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    comp = rt.get("compile", False)
    if comp:
        mode = "default" if comp is True else str(comp)
        net.compile(mode=mode)
        applied["compile"] = mode
    return applied


def attention_modules(net: torch.nn.Module) -> list[tuple[str, Any]]:
    """Every diffusers ``Attention`` layer of ``net`` (models without the ``attn_processors`` mixin included,
    e.g. ``UNet2DModel``)."""
    from diffusers.models.attention_processor import Attention

    return [(name, m) for name, m in net.named_modules() if isinstance(m, Attention)]


def set_attention(net: torch.nn.Module, kind: str) -> None:
    """Switch the classic / SDPA attention processors of a diffusers model; refuse other processor types."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    want = AttnProcessor2_0 if kind == "sdpa" else AttnProcessor
    for _, m in attention_modules(net):
        p = m.processor
        if isinstance(p, (AttnProcessor, AttnProcessor2_0)):
            m.set_processor(want())
        elif kind == "sdpa" and _uses_sdpa(p):
            continue  # family-specific processors built on scaled_dot_product_attention already
        else:
            raise ValueError(f"runtime.attention={kind}: this model's attention processor {type(p).__name__} cannot "
                             "be switched; use runtime.attention=auto")


def _uses_sdpa(processor: Any) -> bool:
    import inspect

    try:
        return "scaled_dot_product_attention" in inspect.getsource(type(processor))
    except (OSError, TypeError):
        return False


def is_oom(exc: BaseException) -> bool:
    """A CUDA / host out-of-memory error (the answer a batch-size probe looks for)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def probe_batch_size(run_batch: Callable[[int], None], start: int = 1, limit: int = 1024,
                     empty_cache: Callable[[], None] | None = None) -> dict[str, Any]:
    """The largest batch size ≤ ``limit`` for which ``run_batch(b)`` does not run out of memory.

    Doubles from ``start`` until a batch fails (or ``limit``), then bisects between the last success and the
    first failure. Returns ``{"largest": b, "tried": {b: "ok" | "oom"}}``; ``largest`` is 0 when even
    ``start`` fails. Other errors propagate."""
    if empty_cache is None:
        empty_cache = torch.cuda.empty_cache if torch.cuda.is_available() else (lambda: None)
    tried: dict[int, str] = {}

    def fits(b: int) -> bool:
        try:
            run_batch(b)
            ok = True
        except BaseException as e:  # noqa: BLE001 - only out-of-memory is an answer, the rest re-raises
            if not is_oom(e):
                raise
            ok = False
        empty_cache()
        tried[b] = "ok" if ok else "oom"
        return ok

    good, bad = 0, None
    b = max(int(start), 1)
    while b <= limit:
        if fits(b):
            good = b
            if b == limit:
                break
            b = min(b * 2, limit)
        else:
            bad = b
            break
    if bad is not None:
        lo, hi = good, bad
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        good = lo
    return {"largest": good, "limit": limit, "tried": dict(sorted(tried.items()))}


def attack_batch_runner(target: Any, attacks: dict[str, Any], pixels: torch.Tensor, seed: int = 0
                        ) -> Callable[[int], None]:
    """``run_batch(b)`` for :func:`probe_batch_size`: one batch of ``b`` images (``pixels`` repeated) through
    every attack, as the runner makes it."""
    from audit.attacks.base import Batch, NoiseSource

    def run_batch(b: int) -> None:
        reps = -(-b // len(pixels))
        px = pixels.repeat(reps, 1, 1, 1)[:b]
        ids = [f"probe-{i}" for i in range(b)]
        with torch.inference_mode():
            x0 = target.encode(px)
            batch = Batch(x0=x0, cond=target.encode_text([""] * b) if target.conditional else None,
                          captions=[""] * b, image_ids=ids, noise_source=NoiseSource(seed, ids), pixels=px)
            for a in attacks.values():
                a.score(target, batch)
        if target.device.type == "cuda":
            torch.cuda.synchronize()
    return run_batch
