"""The declared target contract: what the pipeline, the attacks and the statistics may ask of a target.

Every object passed around as "the target" is an :class:`AuditTarget`. Code asks it directly (``target.access``,
``target.process``, ``target.begin_run(...)``); it never probes with ``hasattr`` / ``getattr``: what a target
does not offer is declared here once, with a default that says so.

Required (no default; each target class defines them, as a class attribute, property, dataclass field or in its
``__init__``; :func:`missing_members` lists what a class lacks, ``tests/test_target_protocol.py`` checks every one):

- ``info`` — what the report says about the target (:class:`TargetInfoLike`: ``to_dict()``, ``kind``,
  ``resolution``, ``conditional``, ``fingerprint``); ``fingerprint`` — the identity the score store, commitments
  and shards key on; ``device`` / ``dtype`` — where and in what precision it computes; ``unet_evals`` — denoiser
  evaluations (per image) made so far; ``access`` — ``"white"`` (a model: weights and denoiser outputs),
  ``"black"`` (a service: only its operations), ``"outputs"`` (collected outputs, no model).

Declared with a default (here, nowhere else):

============================ ============= ==================================================================
member                       default       offered by
============================ ============= ==================================================================
``family``                   ``""``        model families (``"pixel"``, ``"sd"``, ...), ``"http"``, ``"outputs"``
``conditional``              info's        every target (False for http / outputs)
``uses_score_store``         True          models (False: http, outputs recompute and record every answer)
``begin_run`` → go on?       True          http (budget, request log; False on a dry run), outputs (record)
``run_summary`` → dict       None          http (requests sent, budget) → ``run.json["blackbox"]``
``finish_run`` → dict        None          outputs (matches, exhibits) → ``run.json["outputs"]``
``attack_name(attack)``      attack.name   http, outputs (the run's name for the attack)
``conditioning``             ``{}``        model targets (``TargetInfo.conditioning``: each decision, its source)
``training_metadata``        ``{}``        model targets (``TargetInfo.training_metadata``)
``encode`` / ``encode_text`` refuse        models (VAE / identity; text encoder), http / outputs (identity, None)
``process``                  None          model targets (:mod:`audit.diffusion`); None: no diffusion process
``denoiser``                 None          models (the network); http / outputs: an empty module
``operations``               ``()``        http (the service operations configured: img2img, text2image)
``can_decode`` / ``decode``  False/refuse  latent models (the VAE); pixel models need none (``info.kind``)
============================ ============= ==================================================================

Targets: :class:`audit.targets.base.Target` (every model family, :mod:`audit.targets.families`),
:class:`audit.blackbox.target.HttpTarget` (a hosted service; the ground-truth server of tests and the demo is
reached through it), :class:`audit.outputs.target.OutputsTarget` (collected outputs) and
:class:`audit.targets.recorded.RecordedTarget` (the merge job's stand-in, read from the shard records).
"""
from __future__ import annotations

import abc
import dataclasses
import inspect
import re
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from audit.diffusion.base import DiffusionProcess

ACCESS = ("white", "black", "outputs")

#: members every target class must define itself (no default here)
REQUIRED = ("info", "fingerprint", "device", "dtype", "unet_evals", "access")
#: members declared below with their "not offered" / default value
DECLARED = ("family", "conditional", "uses_score_store", "begin_run", "run_summary", "finish_run", "attack_name",
            "conditioning", "training_metadata", "encode", "encode_text", "process", "denoiser", "operations",
            "can_decode", "decode")


@runtime_checkable
class TargetInfoLike(Protocol):
    """What a target's ``info`` offers (:class:`audit.targets.base.TargetInfo`, or the merge job's recorded info)."""

    kind: str
    resolution: int
    conditional: bool
    fingerprint: str

    def to_dict(self) -> dict[str, Any]: ...


class TargetCapabilityError(ValueError):
    """A target was asked for something it does not offer (one line)."""


class AuditTarget(abc.ABC):
    """Base class of every target; see the module docstring for the contract and which target offers what."""

    # ------------------------------------------------------------------ required (each class defines them)
    info: TargetInfoLike
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    unet_evals: int
    access: str

    # ------------------------------------------------------------------ declared, with defaults
    #: registry name of the family ("" when there is none to name)
    family: str = ""
    #: False: every run recomputes and records its answers (the score store is not used)
    uses_score_store: bool = True
    #: the diffusion process (:mod:`audit.diffusion`); None: the target has none (a service, outputs, a record)
    process: DiffusionProcess | None = None
    #: the network the process queries; None: no network here
    denoiser: torch.nn.Module | None = None
    #: the service operations a black-box target offers (a model's are performed locally, any of them)
    operations: tuple[str, ...] = ()
    #: whether :meth:`decode` maps diffusion-space samples to images (latent models' VAE)
    can_decode: bool = False

    @property
    def conditional(self) -> bool:
        """Whether captions condition the denoiser (``info.conditional``)."""
        return bool(self.info.conditional)

    @property
    def conditioning(self) -> dict[str, Any]:
        """How prompts and images are conditioned, each decision with its source and reason ({}: none made)."""
        return {}

    @property
    def training_metadata(self) -> dict[str, Any]:
        """What the model's LoRA / checkpoint files say about their training ({}: nothing read)."""
        return {}

    # ------------------------------------------------------------------ run hooks (audit.pipeline.run_audit)
    def begin_run(self, evidence: Any, attacks: Mapping[str, Any], *, seed: int, out: str | Path) -> bool:
        """Before the plan is declared and anything is scored; False stops the run there (a dry run)."""
        return True

    def run_summary(self) -> dict[str, Any] | None:
        """What run.json records about the target's requests (``run.json["blackbox"]``); None: nothing."""
        return None

    def finish_run(self, out: str | Path, scores: Any = None) -> dict[str, Any] | None:
        """After scoring, before the seal: files of the target's own (``run.json["outputs"]``); None: nothing."""
        return None

    def attack_name(self, attack: Any) -> str:
        """The name the run gave ``attack`` (its configured key where the target knows it)."""
        return attack.name

    # ------------------------------------------------------------------ optional capabilities
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → x0 in the diffusion space (what the scoring loop feeds the attacks)."""
        raise TargetCapabilityError(f"{self._what()} scores nothing: it has no encode")

    def encode_text(self, captions: Any) -> Any:
        """Text conditioning for the denoiser (None for unconditional targets)."""
        raise TargetCapabilityError(f"{self._what()} scores nothing: it has no encode_text")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-space samples → images in [-1, 1]; only where :attr:`can_decode`."""
        raise TargetCapabilityError(f"target of kind {self.info.kind!r} has no decoder")

    def _what(self) -> str:
        return f"the {self.family or type(self).__name__} target"


def _assigned_in_init(cls: type, name: str) -> bool:
    pattern = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=]+)?=(?!=)")
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            src = inspect.getsource(init)
        except (OSError, TypeError):  # a generated __init__ (dataclasses): its fields are checked below
            continue
        if pattern.search(src):
            return True
    return False


def missing_members(cls: type) -> list[str]:
    """The members of the contract ``cls`` does not define (empty for a conforming target class)."""
    missing = []
    if not (isinstance(cls, type) and issubclass(cls, AuditTarget)):
        return ["AuditTarget (not a subclass)"]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for name in REQUIRED:
        on_class = any(name in vars(k) for k in cls.__mro__ if k is not AuditTarget and k is not object)
        if not (on_class or name in fields or _assigned_in_init(cls, name)):
            missing.append(name)
    for name in DECLARED:
        if not any(name in vars(k) for k in cls.__mro__):
            missing.append(name)
    if cls.can_decode is True and cls.decode is AuditTarget.decode:
        missing.append("decode (can_decode is True)")
    if cls.can_decode is False and cls.decode is not AuditTarget.decode:
        missing.append("can_decode (decode is implemented)")
    return missing
