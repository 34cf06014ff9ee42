"""The default demo scenario: a model whose training split we know, built here with no download.

Procedurally generated artworks by a few synthetic "artists" are split per artist into members (the
model is trained on them) and held-out works. A small pixel DDPM is trained on the members — like a
small fine-tuning set, it memorises them — and saved in diffusers format with ``membership.json``
beside the weights. The manifest then presents some members as *suspects*, held-out works as
*controls*, and the rest as known-truth *member* / *nonmember* positive and negative controls.

Everything is cached under ``root``; a second run with the same parameters reuses it.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.types import params_hash


@dataclass
class DemoScenario:
    root: str
    artists: list[str] = field(default_factory=lambda: ["stripes", "circles", "grid", "waves"])
    resolution: int = 32
    members_per_artist: int = 12
    nonmembers_per_artist: int = 115
    n_suspect: int = 16
    n_member: int = 32
    n_control: int = 360
    n_nonmember: int = 100
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    train_steps: int = 800
    batch_size: int = 48
    lr: float = 2e-4
    seed: int = 0
    # Two deliberately bad files listed as suspects, to show that rejected files are reported, not dropped.
    include_bad_files: bool = True

    def __post_init__(self) -> None:
        n_mem = self.members_per_artist * len(self.artists)
        n_non = self.nonmembers_per_artist * len(self.artists)
        if self.n_suspect + self.n_member > n_mem:
            raise ValueError(f"n_suspect + n_member = {self.n_suspect + self.n_member} exceeds the {n_mem} members")
        if self.n_control + self.n_nonmember > n_non:
            raise ValueError(
                f"n_control + n_nonmember = {self.n_control + self.n_nonmember} exceeds the {n_non} held-out works"
            )

    @property
    def key(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "root"}
        return params_hash(fields)

    @property
    def model_dir(self) -> Path:
        return Path(self.root) / "model"

    @property
    def manifest(self) -> Path:
        return Path(self.root) / "manifest.csv"

    def is_ready(self) -> bool:
        stamp = Path(self.root) / "scenario.json"
        if not (stamp.is_file() and self.manifest.is_file() and (self.model_dir / "model_index.json").is_file()):
            return False
        return json.loads(stamp.read_text()).get("key") == self.key

    def prepare(self, progress: bool = True) -> dict:
        """Build (or reuse) the artworks, the trained model and the manifest. Returns the scenario record."""
        root = Path(self.root)
        stamp = root / "scenario.json"
        if self.is_ready():
            return json.loads(stamp.read_text())
        from audit.data import write_manifest
        from audit.groundtruth.synthetic import make_artwork_folder
        from audit.groundtruth.ddpm import build_ddpm, save_ddpm, train_ddpm

        if root.exists():
            shutil.rmtree(root)  # stale scenario built with other parameters
        root.mkdir(parents=True)
        per_artist = self.members_per_artist + self.nonmembers_per_artist
        entries = make_artwork_folder(root / "artworks", self.artists, per_artist, self.resolution, self.seed)
        rng = np.random.default_rng(self.seed)
        members, nonmembers = [], []
        for artist in self.artists:
            mine = [e for e in entries if e["artist"] == artist]
            order = rng.permutation(len(mine))
            members += [mine[i] for i in order[: self.members_per_artist]]
            nonmembers += [mine[i] for i in order[self.members_per_artist:]]
        members = [members[i] for i in rng.permutation(len(members))]
        nonmembers = [nonmembers[i] for i in rng.permutation(len(nonmembers))]
        roles = (
            [("suspect", e) for e in members[: self.n_suspect]]
            + [("member", e) for e in members[self.n_suspect: self.n_suspect + self.n_member]]
            + [("control", e) for e in nonmembers[: self.n_control]]
            + [("nonmember", e) for e in nonmembers[self.n_control: self.n_control + self.n_nonmember]]
        )
        manifest_rows = [{**e, "role": role} for role, e in roles]
        if self.include_bad_files:
            manifest_rows += self._bad_files(root / "artworks")

        from audit.data import load_evidence

        train_set = load_evidence([{**e, "role": "member"} for e in members], self.resolution, progress=False)
        images = train_set.batch(0, len(train_set))
        unet, scheduler = build_ddpm(self.resolution, tuple(self.channels), seed=self.seed)
        stats = train_ddpm(unet, scheduler, images, steps=self.train_steps, batch_size=self.batch_size,
                           lr=self.lr, seed=self.seed, progress=progress)
        membership = {
            "members": [r.image_id for r in train_set.records],
            "member_paths": [Path(r.path).name for r in train_set.records],
            "nonmember_paths": [Path(e["path"]).name for e in nonmembers],
            "training": stats,
        }
        save_ddpm(unet, scheduler, self.model_dir, membership=membership)
        write_manifest(manifest_rows, self.manifest)
        record = {"key": self.key, "params": dataclasses.asdict(self), "training": stats}
        stamp.write_text(json.dumps(record, indent=2))
        return record

    @staticmethod
    def _bad_files(folder: Path) -> list[dict]:
        good = sorted(folder.glob("*.png"))[0].read_bytes()
        corrupt = folder / "scan_truncated.png"
        corrupt.write_bytes(good[: len(good) // 2])  # a PNG cut off mid-stream
        not_image = folder / "notes_not_an_image.png"
        not_image.write_text("This is a text file with an image extension.\n")
        return [
            {"path": str(corrupt), "role": "suspect", "caption": "", "artist": "unknown", "created": ""},
            {"path": str(not_image), "role": "suspect", "caption": "", "artist": "unknown", "created": ""},
        ]
