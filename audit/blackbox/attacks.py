"""Black-box statistics: scores made only from a generator's answers (text2image, img2img).

Each is an ordinary :class:`~audit.attacks.base.Attack` (one ScoreTable row per work, higher = more member-like,
analysed like every other attack), declares the service operations it needs, and runs on
:class:`~audit.blackbox.target.HttpTarget` (a hosted service, every request logged) or on a local diffusion model
through the same operations (:class:`~audit.blackbox.target.LocalBackend`: gray-box benchmarks, local reference
models). Each score is a pure function of the artwork as sent and the images received
(:mod:`audit.blackbox.images`), recorded with the requests it used, so ``audit-verify`` recomputes it from the log.

- ``bb_variation`` — ReDiffuse (Li et al. 2024, arXiv 2405.20771) through a variation API: ``n`` img2img
  variations at ``strength`` (different seeds), averaged; score = −MSE(average, artwork).
- ``bb_img2img`` — img2img reconstruction distance: −mean tiled ℓ2 (Carlini et al. 2023) of ``n`` reconstructions.
- ``bb_generate`` — generate-and-match (Carlini et al., USENIX Security 2023): ``n`` text-to-image generations per
  distinct prompt (default the work's caption; seeds from the run seed and the prompt, so works sharing a caption
  share one pool); score = −tiled ℓ2 of the nearest generation.

``reference`` (optional, a local model spec as for ``loss_calibrated``): the same requests are performed on a local
open model known not to have trained on the works, and the score becomes score(service) − score(reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.blackbox.images import decode_image, png_bytes, sha256, statistic
from audit.blackbox.service import Request, request_seed
from audit.targets.protocol import AuditTarget


def backend_for(target: AuditTarget):
    """The object that performs the operations: the HTTP target itself, or a local model's operations."""
    if target.access == "black":  # the service target resolves its own requests (HttpTarget)
        return target
    if target.process is None:
        raise AttackSetupError("black-box statistics need a service (target=http) or a local diffusion model")
    if target.blackbox_backend is None:  # a model target (audit.targets.base.Target): made on first use, kept
        from audit.blackbox.target import LocalBackend

        target.blackbox_backend = LocalBackend(target)
    return target.blackbox_backend


@dataclass
class BlackBoxAttack(Attack):
    access: ClassVar[str] = "black"
    service_operations: ClassVar[tuple[str, ...]] = ()
    statistic: ClassVar[str] = ""

    n: int = 4
    tiles: int = 4
    reference: dict[str, Any] | None = None  # a local reference model (load_target arguments)
    _reference_backend: Any = field(default=None, init=False, repr=False, compare=False)

    def params(self) -> dict[str, Any]:
        import copy
        import dataclasses

        return {"attack": type(self).__name__, **{f.name: copy.deepcopy(getattr(self, f.name))
                                                  for f in dataclasses.fields(self) if not f.name.startswith("_")}}

    def check_target(self, target: Any) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise AttackSetupError(f"{self.name}: n must be a positive integer, got {self.n!r}")
        if isinstance(self.tiles, bool) or not isinstance(self.tiles, int) or self.tiles < 1:
            raise AttackSetupError(f"{self.name}: tiles must be a positive integer, got {self.tiles!r}")
        if target.access == "black":  # a service offers what target.operations configures; a model performs any
            ops = target.operations
            missing = [o for o in self.service_operations if o not in ops]
            if missing:
                raise AttackSetupError(f"{self.name} needs the service operation(s) {', '.join(missing)}, which "
                                       f"target.operations does not configure (it has {', '.join(ops) or 'none'})")
        backend_for(target)
        res = int(target.info.resolution)
        if self.tiles > res:
            raise AttackSetupError(f"{self.name}: tiles={self.tiles} exceeds the image size {res}")

    def evaluations_per_image(self) -> int:
        return 0  # no local denoiser evaluations; the service's cost is counted in requests

    def requests_per_image(self) -> float:
        return float(self.n)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "requests_per_image": self.requests_per_image(),
                "service_operations": list(self.service_operations)}

    def _ref_backend(self, target: Any):
        if not self.reference:
            return None
        if self._reference_backend is None:
            from audit.blackbox.target import LocalBackend
            from audit.targets import load_target

            spec = {k: v for k, v in dict(self.reference).items() if k != "_target_"}
            ref = load_target(**spec)
            if int(ref.info.resolution) != int(target.info.resolution):
                raise AttackSetupError(f"{self.name}: the reference model works at {ref.info.resolution} px, the target "
                                       f"at {target.info.resolution} px")
            be = backend_for(target)
            steps = {op: v.get("steps") for op, v in be.request_defaults.items() if v.get("steps")}
            self._reference_backend = LocalBackend(ref, steps=steps, request_log=be.request_log,
                                                   label="local_reference")
        return self._reference_backend

    # subclasses: the requests for each work
    def plan_requests(self, backend: Any, image_ids: Sequence[str], pngs: Sequence[bytes], captions: Sequence[str],
                      seed: int) -> list[list[Request]]:
        raise NotImplementedError

    def score(self, target: Any, batch: Batch) -> torch.Tensor:
        from audit.blackbox.target import to_hwc_uint8

        backend = backend_for(target)
        seed = batch.noise_source.seed
        pngs = [png_bytes(to_hwc_uint8(p)) for p in batch.pixels]
        refs = [decode_image(p) for p in pngs]
        plans = self.plan_requests(backend, batch.image_ids, pngs, batch.captions, seed)
        answers = backend.resolve_requests([q for g in plans for q in g])
        ref_backend = self._ref_backend(target)
        ref_plans = ref_answers = None
        if ref_backend is not None:
            ref_plans = self.plan_requests(ref_backend, batch.image_ids, pngs, batch.captions, seed)
            ref_answers = ref_backend.resolve_requests([q for g in ref_plans for q in g])
        name = target.attack_name(self)
        scores = []
        for i, (iid, group) in enumerate(zip(batch.image_ids, plans)):
            keys = [q.key(backend.service_id) for q in group]
            s = statistic(self.statistic, refs[i], [answers[k] for k in keys], self.tiles)
            record = {"image_id": iid, "attack": name, "statistic": self.statistic, "tiles": self.tiles,
                      "artwork_sha256": sha256(pngs[i]), "requests": keys, "target_score": s}
            if ref_backend is not None:
                rkeys = [q.key(ref_backend.service_id) for q in ref_plans[i]]
                r = statistic(self.statistic, refs[i], [ref_answers[k] for k in rkeys], self.tiles)
                record.update(reference_requests=rkeys, reference_score=r, reference_service=ref_backend.service_id)
                s = s - r
            record["score"] = s
            backend.record_derivation(record)
            scores.append(s)
        return torch.tensor(scores, dtype=torch.float64)


@dataclass
class BBVariation(BlackBoxAttack):
    """ReDiffuse-style variation distance (see the module docstring)."""

    name = "bb_variation"
    paper = "Li et al., 2024 (ReDiffuse, arXiv 2405.20771), through a variation API"
    service_operations = ("img2img",)
    statistic = "variation_mse"
    strength: float = 0.1
    prompt: str | None = None  # sent with each variation ('{caption}' = the work's caption); None = no prompt

    def check_target(self, target: Any) -> None:
        super().check_target(target)
        if not 0.0 < float(self.strength) <= 1.0:
            raise AttackSetupError(f"{self.name}: strength must be in (0, 1], got {self.strength}")

    def plan_requests(self, backend, image_ids, pngs, captions, seed):
        extra = dict(backend.request_defaults.get("img2img", {}))
        out = []
        for iid, png, cap in zip(image_ids, pngs, captions):
            prompt = self.prompt.format(caption=cap) if self.prompt is not None else ""
            out.append([Request.make("img2img", png, strength=float(self.strength), prompt=prompt,
                                     seed=request_seed(seed, "img2img", iid, float(self.strength), k), **extra)
                        for k in range(int(self.n))])
        return out


@dataclass
class BBImg2Img(BBVariation):
    """img2img reconstruction distance (see the module docstring)."""

    name = "bb_img2img"
    paper = "img2img reconstruction (SDEdit; Carlini et al. 2023 tiled ℓ2), through an image-to-image API"
    statistic = "mean_tiled_l2"
    strength: float = 0.3
    n: int = 2


@dataclass
class BBGenerate(BlackBoxAttack):
    """Generate-and-match with the work's caption (see the module docstring)."""

    name = "bb_generate"
    paper = "Carlini et al., USENIX Security 2023 (generate-and-match), through a text-to-image API"
    service_operations = ("text2image",)
    statistic = "min_tiled_l2"
    n: int = 16
    prompt: str = "{caption}"

    def requests_per_image(self) -> float:
        return float(self.n)  # an upper bound: works with one prompt share their generations

    def plan_requests(self, backend, image_ids, pngs, captions, seed):
        extra = dict(backend.request_defaults.get("text2image", {}))
        out = []
        for cap in captions:
            prompt = self.prompt.format(caption=cap)
            out.append([Request.make("text2image", None, prompt=prompt, seed=request_seed(seed, "text2image", prompt, k),
                                     **extra) for k in range(int(self.n))])
        return out
