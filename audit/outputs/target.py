"""``target=outputs``: an audit from collected outputs of a generator (screenshots, downloads), with no model.

The target holds the collected outputs (:mod:`audit.outputs.collection`: provenance, SHA-256, validation) and
the works' full-resolution pixels, and answers the matching statistics' questions (:mod:`audit.outputs.statistics`)
with memoised features, so statistics that need the same keypoints, matches or alignments compute them once.
It loads no model: ``encode`` is the identity and it declares ``access = "outputs"``, which every model attack
refuses in one line (``Attack.check_support``).

In a run (:func:`audit.pipeline.run_audit`): :meth:`OutputsTarget.begin_run` writes ``<results>/outputs/outputs.json``
(every output's provenance and SHA-256, every refused file with its reason) and a copy of every accepted output
named by its SHA-256 (``outputs/files/``), before any score exists; :meth:`OutputsTarget.finish_run` writes
``outputs/matches.json`` (per work and statistic: the best output, the value, the inlier keypoints and transform)
and the exhibits (``outputs/exhibits/*.png``). All of it is covered by the folder's seal.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from audit.outputs import matching as mt
from audit.outputs.collection import OutputsConfigError, load_image_rgb, read_outputs
from audit.targets.base import TargetInfo
from audit.targets.protocol import AuditTarget

log = logging.getLogger(__name__)

OUTPUTS_DIR = "outputs"
OUTPUTS_JSON = "outputs.json"
MATCHES_JSON = "matches.json"
_NO_NETWORK = torch.nn.Module()


class OutputsTarget(AuditTarget):
    """Collected outputs as the target of an audit; see the module docstring and ``configs/target/outputs.yaml``.

    An :class:`~audit.targets.protocol.AuditTarget` with ``access = "outputs"``: the run hooks (the outputs'
    record, matches and exhibits); no diffusion process, no decoder, no operations."""

    family = "outputs"
    access = "outputs"
    uses_score_store = False  # every run recomputes (and records) its matches, so matches.json is complete
    conditional = False
    process = None
    prediction_type = "n/a (collected outputs)"

    def __init__(self, outputs: str, *, resolution: int = 64, work_side: int = 512, output_side: int = 1024,
                 feature_side: int = 512, n_features: int = 1500, max_pixels: int = 100_000_000,
                 copy_files: bool = True, n_exhibits: int = 6, exhibit_statistic: str | None = None,
                 device: str = "cpu", dtype: str = "float32", **unknown: Any):
        if unknown:
            raise OutputsConfigError(f"target (outputs): unknown key(s) {', '.join(sorted(unknown))}")
        for key, val, lo in (("resolution", resolution, 8), ("work_side", work_side, 32), ("output_side", output_side, 32),
                             ("feature_side", feature_side, 32), ("n_features", n_features, 10), ("n_exhibits", n_exhibits, 0)):
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise OutputsConfigError(f"target.{key} must be an integer ≥ {lo}, got {val!r}")
        if not outputs or str(outputs) == "???":
            raise OutputsConfigError("target.outputs: set it to the outputs manifest (.csv/.jsonl) or folder")
        self.collection = read_outputs(outputs, max_side=int(output_side), max_pixels=int(max_pixels))
        for r in self.collection.refused:
            log.warning("output refused %s: %s", r.path, r.reason)
        if not len(self.collection):
            first = self.collection.refused[0] if self.collection.refused else None
            raise OutputsConfigError(f"target.outputs: no usable output among {len(self.collection.refused)} listed"
                                     + (f" (first: {first.path}: {first.reason})" if first else ""))
        self.settings = {"resolution": int(resolution), "work_side": int(work_side), "output_side": int(output_side),
                         "feature_side": int(feature_side), "n_features": int(n_features), "max_pixels": int(max_pixels)}
        self.copy_files = bool(copy_files)
        self.n_exhibits = int(n_exhibits)
        self.exhibit_statistic = exhibit_statistic
        ident = {"outputs": sorted(r.sha256 for r in self.collection.records), "settings": self.settings,
                 "matching": "audit.outputs v1"}
        self._fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        self.info = TargetInfo(kind="outputs", source=str(outputs), resolution=int(resolution), conditional=False,
                               prediction_type=self.prediction_type, num_train_timesteps=0,
                               fingerprint=self._fingerprint, classes={"outputs": f"{len(self.collection)} collected"},
                               family="outputs", process={"access": "collected outputs (no model)"})
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.unet_evals = 0
        self._works: dict[str, np.ndarray] = {}
        self._work_meta: dict[str, dict[str, Any]] = {}
        self._memo: dict[tuple, Any] = {}
        self._names: dict[int, str] = {}
        self.matches: dict[str, dict[str, dict[str, Any]]] = {}
        self._embedders: dict[str, Any] = {}
        self.out: Path | None = None

    # ------------------------------------------------------------------ the Target surface the pipeline uses
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def denoiser(self) -> torch.nn.Module:
        return _NO_NETWORK  # no network: runtime speed settings apply to nothing

    @property
    def n_outputs(self) -> int:
        return len(self.collection)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_text(self, captions: Any) -> None:
        return None

    def attack_name(self, attack: Any) -> str:
        return self._names.get(id(attack), getattr(attack, "name", type(attack).__name__))

    # ------------------------------------------------------------------ the run
    def begin_run(self, evidence: Any, attacks: Mapping[str, Any], *, seed: int, out: str | Path) -> bool:
        """Check the statistics, load the works at full resolution and write the outputs' record (before scoring)."""
        for attack in attacks.values():
            attack.check_target(self)
        self._names = {id(a): n for n, a in attacks.items()}
        self.use_evidence(evidence)
        self.out = Path(out)
        folder = self.out / OUTPUTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        accepted = []
        for r in self.collection.records:
            d = r.to_dict()
            if self.copy_files:
                ext = Path(r.path).suffix.lower() or ".bin"
                dst = folder / "files" / f"{r.sha256}{ext}"
                dst.parent.mkdir(exist_ok=True)
                shutil.copyfile(r.path, dst)
                if hashlib.sha256(dst.read_bytes()).hexdigest() != r.sha256:
                    raise OutputsConfigError(f"output {r.path} changed while the audit read it (SHA-256 differs)")
                d["stored_as"] = str(dst.relative_to(self.out))
            accepted.append(d)
        record = {"manifest": self.collection.manifest, "manifest_sha256": self.collection.manifest_sha256,
                  "fingerprint": self.fingerprint, "settings": self.settings, "accepted": accepted,
                  "refused": [r.to_dict() for r in self.collection.refused]}
        (folder / OUTPUTS_JSON).write_text(json.dumps(record, indent=2, ensure_ascii=False))
        print(f"outputs: {len(accepted)} collected outputs accepted, {len(self.collection.refused)} refused; "
              f"matching {len(evidence)} works against them (no model is loaded)", flush=True)
        return True

    def use_evidence(self, evidence: Any) -> None:
        """The works' pixels at full resolution (aspect kept), re-read through the same validation; a file that
        changed since it was hashed stops the run. Works without a readable file use the evidence's pixels."""
        side = self.settings["work_side"]
        for k, rec in enumerate(evidence.records):
            path = rec.resolved_path or rec.path
            arr = None
            if path and Path(path).is_file():
                arr, info = load_image_rgb(path, max_side=side, max_pixels=self.settings["max_pixels"])
                if info["sha256"] != rec.image_id:
                    raise OutputsConfigError(f"work {rec.path} changed since it was hashed (SHA-256 differs)")
            if arr is None:
                arr = evidence.pixels[k].permute(1, 2, 0).numpy()
            if max(arr.shape[:2]) < side:  # small works are compared at the working size
                arr = mt.to_working(arr, side)
            self._works[rec.image_id] = arr
            self._work_meta[rec.image_id] = {"path": rec.path, "role": rec.role, "artist": rec.artist,
                                             "caption": rec.caption}

    def record_match(self, statistic: str, image_id: str, score: float, index: int | None, details: dict[str, Any]) -> None:
        rec = {"score": float(score), "output_sha256": self.collection.records[index].sha256 if index is not None else None}
        rec.update({k: v for k, v in details.items()})
        self.matches.setdefault(statistic, {})[image_id] = rec

    def finish_run(self, out: str | Path, scores: Any = None) -> dict[str, Any]:
        """Write matches.json and the exhibits; returns what run.json records about the outputs."""
        from audit.outputs.exhibits import write_exhibits

        folder = Path(out) / OUTPUTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MATCHES_JSON).write_text(json.dumps({"statistics": self.matches}, indent=1, default=_plain))
        exhibits = write_exhibits(self, folder, scores)
        return {"outputs": len(self.collection), "refused": len(self.collection.refused),
                "manifest": self.collection.manifest, "manifest_sha256": self.collection.manifest_sha256,
                "fingerprint": self.fingerprint, "exhibits": exhibits, "settings": self.settings}

    # ------------------------------------------------------------------ memoised features
    def _m(self, key: tuple, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def work(self, image_id: str) -> np.ndarray:
        if image_id not in self._works:
            raise RuntimeError("OutputsTarget.begin_run (or use_evidence) must run before the statistics")
        return self._works[image_id]

    def output(self, i: int) -> np.ndarray:
        return self.collection.pixels[i]

    def region(self, i: int) -> tuple[int, int, int, int] | None:
        return self._m(("region", i), lambda: mt.find_image_region(self.output(i)))

    def work_keypoints(self, image_id: str, detector: str) -> mt.Keypoints:
        return self._m(("wkp", image_id, detector), lambda: mt.keypoints(
            self.work(image_id), detector, side=self.settings["feature_side"], n_features=self.settings["n_features"]))

    def output_keypoints(self, i: int, detector: str) -> mt.Keypoints:
        # screenshots are larger than the picture inside: a larger working size keeps the picture's detail
        return self._m(("okp", i, detector), lambda: mt.keypoints(
            self.output(i), detector, side=int(self.settings["feature_side"] * 1.5),
            n_features=2 * self.settings["n_features"]))

    def feature_match(self, image_id: str, i: int, detector: str, *, ratio: float = 0.8, reproj: float = 4.0
                      ) -> mt.FeatureMatch:
        return self._m(("match", image_id, i, detector, ratio, reproj), lambda: mt.match_features(
            self.work_keypoints(image_id, detector), self.output_keypoints(i, detector), ratio=ratio, reproj=reproj))

    def aligned(self, image_id: str, i: int, *, size: int, tiles: int, min_inliers: int) -> dict[str, float]:
        def compute():
            m = self.feature_match(image_id, i, "sift")
            T = m.transform if m.inliers >= min_inliers else None
            return mt.aligned_similarity(self.work(image_id), self.output(i), transform=T, region=self.region(i),
                                         size=size, tiles=tiles)
        return self._m(("aligned", image_id, i, size, tiles, min_inliers), compute)

    def work_phash(self, image_id: str, hash_size: int):
        return self._m(("wph", image_id, hash_size), lambda: mt.phash(self.work(image_id), hash_size))

    def output_phashes(self, i: int, hash_size: int) -> list[tuple[str, Any]]:
        def compute():
            out = [("whole", mt.phash(self.output(i), hash_size))]
            box = self.region(i)
            if box is not None:
                x0, y0, x1, y1 = box
                out.append(("region", mt.phash(self.output(i)[y0:y1, x0:x1], hash_size)))
            return out
        return self._m(("oph", i, hash_size), compute)

    def work_style(self, image_id: str) -> np.ndarray:
        return self._m(("wst", image_id), lambda: mt.style_descriptor(self.work(image_id)))

    def output_styles(self) -> list[np.ndarray]:
        def one(i):
            box = self.region(i)
            arr = self.output(i)
            if box is not None:
                arr = arr[box[1]:box[3], box[0]:box[2]]
            return mt.style_descriptor(arr)
        return self._m(("ost",), lambda: [one(i) for i in range(self.n_outputs)])

    def embedding(self, model: str, which: tuple) -> np.ndarray:
        if model not in self._embedders:
            from audit.outputs.embedding import LocalEmbedder

            self._embedders[model] = LocalEmbedder(model)
        emb = self._embedders[model]
        if which[0] == "work":
            return self._m(("emb", model, which), lambda: emb([self.work(which[1])])[0])
        i = which[1]
        box = self.region(i)
        arr = self.output(i) if box is None else self.output(i)[box[1]:box[3], box[0]:box[2]]
        return self._m(("emb", model, which), lambda: emb([arr])[0])


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
