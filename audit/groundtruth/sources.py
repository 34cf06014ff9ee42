"""Where training and benchmark images come from, and how they are split into members and non-members.

Three sources, each a list of manifest entries (``path``, ``caption``, ``artist``, ``category``) that
goes through the same validation and preprocessing as audit evidence (:func:`audit.data.load_evidence`),
so a model is trained on exactly the pixels an audit later scores:

- ``synthetic``: the procedural "artists" (:mod:`audit.groundtruth.synthetic`), rendered to PNG files;
- ``folder``: any image folder (sub-folders become the category; a ``.txt`` beside an image is its caption);
- ``openclipart``: public-domain clip art from Debian's ``openclipart-png`` package (about 8,000 PNGs by
  many artists, grouped in category folders; RGBA, all sizes, one file of 168 megapixels — the shared
  loader checks the size from the header before decoding).

:func:`split_members` draws the member / non-member split, seeded, and records it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from audit.data.manifest import scan_folder
from audit.groundtruth.synthetic import make_artwork_folder

__all__ = ["find_openclipart", "openclipart_entries", "synthetic_entries", "folder_entries", "dataset_entries",
           "split_members"]

_OPENCLIPART_DEFAULT = Path("/usr/share/openclipart/png")
_INSTALL_HINT = "install it with: apt-get install openclipart-png (Debian), or set dataset.root"

# Categories that are mostly machine-made variants of one drawing (hundreds of near-identical stars,
# colour gradients, tiling patterns, icon themes repeating one icon at several sizes): near-duplicates across the member/non-member split would make
# "non-members" that the model has effectively seen, so they are left out unless asked for.
OPENCLIPART_EXCLUDE = ("stars", "gradients", "patterns", "buttons", "mimetypes", "filesystems", "icons")


def find_openclipart(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding openclipart's PNGs: ``root`` if given, else where ``dpkg`` says the package put
    them, else ``/usr/share/openclipart/png``. Raises ``FileNotFoundError`` with the install command."""
    if root:
        p = Path(root)
        if not p.is_dir():
            raise FileNotFoundError(f"openclipart folder {p} does not exist; {_INSTALL_HINT}")
        return p
    if shutil.which("dpkg"):
        try:
            listing = subprocess.run(["dpkg", "-L", "openclipart-png"], capture_output=True, text=True, timeout=30)
            for line in listing.stdout.splitlines():
                if line.rstrip("/").endswith("openclipart/png") and Path(line).is_dir():
                    return Path(line)
        except (OSError, subprocess.SubprocessError):
            pass
    if _OPENCLIPART_DEFAULT.is_dir():
        return _OPENCLIPART_DEFAULT
    raise FileNotFoundError(f"openclipart-png is not installed; {_INSTALL_HINT}")


def _title_and_artist(stem: str) -> tuple[str, str]:
    """Openclipart file names read ``<title>_<author>_<nn>`` with the whole name cut at ~24 characters,
    so the author is often truncated; the title is reliable enough for a caption. The "artist" returned
    is the trailing words before the counter, kept for grouping only where they are complete."""
    parts = [p for p in re.split(r"[_\s]+", stem) if p]
    if parts and parts[-1].isdigit():
        parts = parts[:-1]
    words = [p for p in parts if not p.isdigit()]
    title = " ".join(words[:3]) if words else stem
    artist = " ".join(words[-2:]) if len(words) >= 3 else ""
    return title.replace("-", " "), artist


def openclipart_entries(root: str | os.PathLike[str] | None = None, categories: Sequence[str] | None = None,
                        exclude: Sequence[str] = OPENCLIPART_EXCLUDE) -> list[dict[str, Any]]:
    """One entry per PNG (none from a folder named in ``exclude``, at any level): ``category`` = top-level
    folder, caption "clip art of <title>, <category>"."""
    base = find_openclipart(root)
    wanted = set(categories) if categories else None
    out = []
    for path in sorted(base.rglob("*.png")):
        rel = path.relative_to(base)
        category = rel.parts[0] if len(rel.parts) > 1 else "unsorted"
        if wanted is not None and category not in wanted:
            continue
        if set(rel.parts[:-1]) & set(exclude):  # any folder level, e.g. shapes/stars
            continue
        title, artist = _title_and_artist(path.stem)
        out.append({"path": str(path), "role": "", "category": category, "artist": artist,
                    "caption": f"clip art of {title}, {category.replace('_', ' ')}"})
    if not out:
        raise ValueError(f"no openclipart PNGs under {base} for categories {categories or 'all'}")
    return out


def synthetic_entries(root: str | os.PathLike[str], artists: Sequence[str], per_artist: int, size: int,
                      seed: int) -> list[dict[str, Any]]:
    """Render the procedural artists to ``root`` (deterministic PNG bytes) and list them."""
    entries = make_artwork_folder(root, list(artists), per_artist, size, seed)
    for e in entries:
        e["category"] = e["artist"]
    return entries


def folder_entries(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every image under ``folder``; the first sub-folder name is the category (and artist)."""
    base = Path(folder)
    entries = scan_folder(base, role_dirs=False)
    for e in entries:
        rel = Path(e["path"]).resolve().relative_to(base.resolve())
        e["category"] = rel.parts[0] if len(rel.parts) > 1 else ""
        e["artist"] = e.get("artist") or e["category"]
    return entries


def dataset_entries(cfg: Any, cache: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Entries for a dataset config (``configs/dataset/*.yaml``): ``source`` is synthetic | folder | openclipart."""
    source = cfg["source"]
    if source == "synthetic":
        return synthetic_entries(Path(cache) / f"synthetic_{cfg['size']}_{cfg['seed']}", cfg["artists"],
                                 int(cfg["per_artist"]), int(cfg["size"]), int(cfg["seed"]))
    if source == "folder":
        return folder_entries(cfg["folder"])
    if source == "openclipart":
        return openclipart_entries(cfg.get("root"), cfg.get("categories"),
                                   tuple(cfg.get("exclude") or OPENCLIPART_EXCLUDE))
    raise ValueError(f"dataset.source must be synthetic, folder or openclipart, got {source!r}")


def split_members(entries: Iterable[dict[str, Any]], n_members: int, n_nonmembers: int, seed: int,
                  groups: Sequence[str] | None = None, group_key: str = "category") -> list[dict[str, Any]]:
    """A seeded member / non-member split: shuffle the eligible entries (those whose ``group_key`` is in
    ``groups``, or all), the first ``n_members`` become members, the next ``n_nonmembers`` non-members.
    Returns new entries with ``role`` set. Asking for more than there are is an error, not a silent cut."""
    pool = [dict(e) for e in entries if groups is None or e.get(group_key) in set(groups)]
    need = n_members + n_nonmembers
    if need > len(pool):
        raise ValueError(f"asked for {n_members} members + {n_nonmembers} non-members but only {len(pool)} "
                         f"images are eligible (groups={list(groups) if groups else 'all'})")
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in order[:need]]
    for i, e in enumerate(chosen):
        e["role"] = "member" if i < n_members else "nonmember"
    return chosen
