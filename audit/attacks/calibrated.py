"""Reference calibration of any gray-box attack: score(target) − score(reference).

The reference is a model known not to have trained on the suspects, e.g. the public base model a
LoRA / DreamBooth fine-tune was made from. Subtracting its score removes what the two models share:
per-image difficulty (a simple image has a low loss under any model), the noise draw (both models see
the same seeded noise), and shifts that affect both (style, complexity, caption quality). What is left
is what the fine-tune changed for this image. This is difficulty calibration (Watson et al., "On the
Importance of Difficulty Calibration in Membership Inference Attacks", ICLR 2022), the single-reference
form of reference-model attacks (Carlini et al., "Membership Inference Attacks From First Principles",
IEEE S&P 2022), with one known-clean reference model instead of trained shadow models.

Measured: on a held-out LoRA fine-tune of one artist's works (docs/methodology.md §2) uncalibrated loss AUC ≈ 0.54,
base-calibrated ≈ 0.90; on the tiny fine-tunes of tests/test_attacks_text_calibration.py (20 members vs
40 held-out works of one artist) 0.62–0.77 → 0.92–0.99.

Mechanics:

* the reference is loaded once (``audit.targets.load_target(**reference)`` for a config dict, or a
  ready :class:`~audit.targets.Target`) and reused for every batch;
* each batch is re-encoded with the reference's own VAE and text encoder (a reference Batch built as
  the runner builds one), with the same run seed and image ids, so both models see the same noise;
  the reference Batch is memoised in the target Batch under the reference's fingerprint, so several
  calibrated attacks against one reference share the reference's denoiser evaluations too;
* the declared cost is twice the base attack's; the reference's evaluations are counted in the
  *reference's* ``unet_evals`` (``reference_target().unet_evals``), not the target's, and reported in
  :meth:`Calibrated.describe`;
* ``params()`` names the base attack and the reference's source and fingerprint, so a score is never
  reused against another reference.

If target and reference are the same model, every calibrated score is exactly 0 (a useful null check).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch, NoiseSource
from audit.targets.base import Target

MISSING = (None, "", "???")
# conditioning the reference takes over from the target: what was set for it, not what its own config gave
INHERITED = ("option", "training metadata")


def reference_batch(reference: Target, batch: Batch) -> Batch:
    """``batch`` re-encoded with the reference's own components; same seed and image ids (same noise)."""
    if batch.pixels is None:
        raise AttackSetupError("calibration needs the batch's pixels to re-encode the images for the reference")
    return Batch(
        x0=reference.encode(batch.pixels),
        cond=reference.encode_text(batch.captions) if reference.conditional else None,
        captions=list(batch.captions),
        image_ids=list(batch.image_ids),
        noise_source=NoiseSource(batch.noise_source.seed, batch.image_ids),
        pixels=batch.pixels,
    )


@dataclass
class Calibrated(Attack):
    """Score = ``attack``'s score on the target − its score on ``reference`` (same images, same noise).

    Args:
        attack: the gray-box attack to calibrate (an :class:`Attack`, or its Hydra config with ``_target_``).
        reference: the reference model: keyword arguments of :func:`audit.targets.load_target`
            (``source`` required, ``lora``, ``device``, ``dtype``, …) or an already loaded Target.
    """

    name = "calibrated"
    paper = "reference-model difficulty calibration (Watson et al. ICLR 2022; Carlini et al. S&P 2022)"
    access = "gray"

    attack: Any = None
    reference: Any = None
    _reference_target: Target | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.attack, Mapping):  # from a config with _recursive_: false (see configs/attack)
            from hydra.utils import instantiate

            self.attack = instantiate(dict(self.attack), _convert_="all")
        if not isinstance(self.attack, Attack):
            raise TypeError(f"Calibrated needs an Attack to calibrate, got {type(self.attack).__name__}")
        if isinstance(self.attack, Calibrated):
            raise TypeError("Calibrated: the attack is already calibrated")
        if isinstance(self.reference, Target):
            self._reference_target = self.reference
        elif isinstance(self.reference, Mapping):
            self.reference = {k: v for k, v in dict(self.reference).items() if k != "_target_"}
        else:
            raise TypeError("Calibrated: reference must be load_target() arguments (a mapping) or a Target")
        # instance attributes shadow the class defaults: a calibrated loss reports as "loss_calibrated"
        self.name = f"{self.attack.name}_calibrated"
        self.paper = f"{self.attack.paper}; calibrated against a reference model"
        self.access = self.attack.access

    # ------------------------------------------------------------------ reference
    def reference_target(self, target: Target | None = None) -> Target:
        """The reference model, loaded on first use and kept. With ``target``: conditioning options the reference
        leaves unset (``resolution``, ``max_sequence_length``, …) are the target's resolved ones, so the base is
        scored with the same images and prompts as the fine-tune (e.g. at the LoRA's training resolution)."""
        if self._reference_target is None:
            from audit.targets import TargetLoadError, load_target
            from audit.targets.conditioning import CONDITIONING_OPTIONS

            if self.reference.get("source") in MISSING:
                raise AttackSetupError(
                    f"{self.name}: reference.source is missing; set it to a model that did not train on the "
                    "suspects, e.g. the base model of the fine-tune under audit"
                )
            kwargs = dict(self.reference)
            resolved = (target.conditioning or {}) if target is not None else {}
            for key in CONDITIONING_OPTIONS:  # what the user or the LoRA's metadata set (defaults are the model's own)
                c = resolved.get(key) or {}
                if kwargs.get(key) is None and c.get("value") is not None and c.get("source") in INHERITED:
                    kwargs[key] = c["value"]
            try:
                self._reference_target = load_target(**kwargs)
            except TargetLoadError as e:
                raise AttackSetupError(f"{self.name}: could not load the reference model: {e}") from e
        return self._reference_target

    def check_target(self, target: Target) -> None:
        ref = self.reference_target(target)
        self.attack.check_target(target)
        self.attack.check_target(ref)
        if ref.process.kind != target.process.kind:
            raise AttackSetupError(f"{self.name}: the reference is a {ref.process.kind} model but the target a "
                                   f"{target.process.kind} one; calibrate against the fine-tune's own base model")
        if ref.info.resolution != target.info.resolution:
            raise AttackSetupError(
                f"{self.name}: the reference works at {ref.info.resolution} px but the target at "
                f"{target.info.resolution} px; images are preprocessed once, at the target's resolution"
            )

    # ------------------------------------------------------------------ attack interface
    def evaluations_per_image(self) -> int:
        return 2 * self.attack.evaluations_per_image()

    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        ref = self.reference_target()
        key = ("reference_batch", ref.fingerprint, str(ref.device), str(ref.dtype))
        ref_batch = batch.shared(key, lambda: reference_batch(ref, batch))
        on_target = self.attack.score(target, batch)
        on_reference = self.attack.score(ref, ref_batch).to(on_target.device)
        return on_target - on_reference

    def params(self) -> dict[str, Any]:
        ref = self.reference_target()
        extra = {}
        if isinstance(self.reference, Mapping):  # what the fingerprint does not cover (LoRA scale, precision)
            extra = {k: self.reference[k] for k in ("lora_scale", "dtype") if k in self.reference}
        # the reference by content only: its fingerprint covers its weight files (and LoRA files and scale), so
        # the same model in another folder keeps the hash (and the stored scores); its path is in describe()
        return {
            "attack": type(self).__name__,
            "base": self.attack.params(),
            "reference": {"fingerprint": ref.fingerprint, **extra},
        }

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        ref = self.reference_target()
        # the reference's own denoiser evaluations (the target's unet_evals do not include them)
        out["reference"] = {**ref.info.to_dict(), "unet_evals": ref.unet_evals}
        out["reference"].pop("files", None)
        return out

