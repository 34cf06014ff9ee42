"""Collected outputs of a generator, with their capture provenance, hashed and validated like artworks.

An outputs manifest (CSV or JSONL; or a folder of image files, optionally with ``outputs.csv`` / ``outputs.jsonl``
inside giving the provenance columns) has one row per collected output:

``path`` (required; relative paths are read from the manifest's folder), ``source`` (where it was found: an URL,
an app, a chat), ``captured_at`` (when it was captured, ISO 8601), ``capture_method`` (``screenshot``,
``download``, ``photo of screen``, ...), ``prompt`` (when known), ``notes``.

Every file is hashed (SHA-256) and validated through the checks of :mod:`audit.data.images` — header read and
size checked before decoding (decompression bombs), supported formats only, truncated files refused, EXIF
orientation applied, transparency on white — and decoded **keeping its aspect ratio** (a screenshot is not a
square artwork). A file that cannot be used is refused with a one-line reason that is kept and reported, never
silently dropped; byte-identical files listed twice are counted once and the repeat is refused as a duplicate.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from audit.data import images as _img

__all__ = ["COLUMNS", "OutputRecord", "OutputRefusal", "OutputCollection", "read_outputs", "load_image_rgb",
           "OutputsConfigError"]

#: the provenance columns of an outputs manifest (``path`` required, the rest optional)
COLUMNS = ("path", "source", "captured_at", "capture_method", "prompt", "notes")
_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_MANIFEST_NAMES = ("outputs.csv", "outputs.jsonl")


class OutputsConfigError(ValueError):
    """A wrong outputs manifest or folder (a user error: one line, exit status 2)."""


@dataclass(frozen=True)
class OutputRecord:
    """One accepted output. ``sha256`` is the file's bytes' SHA-256 (its identity in every record)."""

    sha256: str
    path: str
    source: str = ""
    captured_at: str = ""
    capture_method: str = ""
    prompt: str = ""
    notes: str = ""
    width: int = 0
    height: int = 0
    format: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OutputRefusal:
    path: str
    reason: str
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OutputCollection:
    records: list[OutputRecord]
    pixels: list[np.ndarray]  # uint8 [H, W, 3] per record, aspect kept, longest side ≤ max_side
    refused: list[OutputRefusal]
    manifest: str
    manifest_sha256: str | None

    def __len__(self) -> int:
        return len(self.records)


def load_image_rgb(path: str | Path, *, max_side: int = 1024, max_pixels: int = _img.DEFAULT_MAX_PIXELS
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """Validate and decode an image file as uint8 RGB ``[H, W, 3]`` with its aspect ratio, the longest side
    reduced to at most ``max_side``. The same checks, in the same order, as
    :func:`audit.data.images.validate_and_load` (which centre-crops to a square for the models).

    The file is read once (a regular file only: no FIFO or device is opened for reading) and its bytes are hashed
    (``info["sha256"]``) and decoded from memory, so the pixels matched are those of the bytes hashed.

    Raises :class:`audit.data.images.ImageRejected` with a one-line reason."""
    p = Path(path)
    _img._check_file(p)
    data, sha = _img.read_regular_file(p)
    if not data:
        raise _img.ImageRejected("empty file (0 bytes)")
    try:
        img = _img._open_header(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _img.ImageRejected("not an image file: cannot identify image data") from None
    except Exception as e:
        raise _img.ImageRejected(f"corrupt image header: {_img._first_line(e)}") from None
    with img:
        fmt = img.format or "unknown"
        if fmt not in _img.SUPPORTED_FORMATS:
            raise _img.ImageRejected(f"not a supported image (format {fmt})")
        w, h = img.size
        if w <= 0 or h <= 0:
            raise _img.ImageRejected(f"invalid image size {w}x{h}")
        if w * h > max_pixels:
            raise _img.ImageRejected(f"image too large: {w}x{h} = {_img._mpx(w * h)} exceeds limit "
                                     f"{_img._limit_str(max_pixels)} (possible decompression bomb)")
        info = {"width": int(w), "height": int(h), "format": "JPEG" if fmt == "MPO" else fmt, "sha256": sha}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                ImageFile.LOAD_TRUNCATED_IMAGES = False  # WeasyPrint switches it on process-wide; refuse truncation
                if fmt in ("JPEG", "MPO"):
                    img.draft("RGB", (max_side, max_side))
                img.load()
                orientation = _img._orientation(img)
                work = ImageOps.exif_transpose(img) if orientation in range(2, 9) else img
                rgb = _img._to_rgb_on_white(work)
                if max(rgb.size) > max_side:
                    s = max_side / max(rgb.size)
                    rgb = rgb.resize((max(1, round(rgb.width * s)), max(1, round(rgb.height * s))),
                                     Image.Resampling.BICUBIC, reducing_gap=3.0)
                arr = np.array(rgb, dtype=np.uint8)
        except _img.ImageRejected:
            raise
        except Image.DecompressionBombError as e:
            raise _img.ImageRejected(f"image too large while decoding: {e}") from None
        except MemoryError:
            raise _img.ImageRejected(f"out of memory while decoding a {w}x{h} image") from None
        except Exception as e:
            raise _img.ImageRejected(f"corrupt image: {_img._first_line(e)}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 8:
        raise _img.ImageRejected(f"image too small to match ({arr.shape[1]}x{arr.shape[0]} px; at least 8 px a side)")
    return arr, info


def _rows_from_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise OutputsConfigError(f"{path.name} line {i}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise OutputsConfigError(f"{path.name} line {i}: each line must be a JSON object")
            rows.append(row)
        return rows
    if path.suffix.lower() != ".csv":
        raise OutputsConfigError(f"outputs manifest {path.name}: use a .csv or .jsonl file (or a folder)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise OutputsConfigError(f"outputs manifest {path.name} needs a 'path' column (has: "
                                     f"{', '.join(reader.fieldnames or []) or 'none'})")
        return [dict(r) for r in reader]


def _entries(spec: str | Path) -> tuple[list[dict[str, Any]], str, str | None]:
    p = Path(str(spec)).expanduser()
    if not p.exists():
        raise OutputsConfigError(f"target.outputs: {p} does not exist (a manifest .csv/.jsonl or a folder of images)")
    if p.is_dir():
        for name in _MANIFEST_NAMES:
            if (p / name).is_file():
                return _entries(p / name)
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in _SUFFIXES)
        if not files:
            raise OutputsConfigError(f"target.outputs: the folder {p} holds no image files")
        return [{"path": str(q)} for q in files], str(p), None
    rows = _rows_from_file(p)
    unknown = sorted({k for r in rows for k in r} - set(COLUMNS))
    if unknown:
        raise OutputsConfigError(f"outputs manifest {p.name}: unknown column(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(COLUMNS)})")
    for i, r in enumerate(rows):
        if not str(r.get("path") or "").strip():
            raise OutputsConfigError(f"outputs manifest {p.name} row {i + 1}: empty path")
        q = Path(str(r["path"])).expanduser()
        r["path"] = str(q if q.is_absolute() else (p.parent / q))
    if not rows:
        raise OutputsConfigError(f"outputs manifest {p.name} lists no outputs")
    return rows, str(p), hashlib.sha256(p.read_bytes()).hexdigest()


def read_outputs(spec: str | Path, *, max_side: int = 1024, max_pixels: int = _img.DEFAULT_MAX_PIXELS
                 ) -> OutputCollection:
    """Read, hash and validate every output listed by ``spec`` (manifest or folder). Refused files keep their reason."""
    rows, manifest, manifest_sha = _entries(spec)
    records: list[OutputRecord] = []
    pixels: list[np.ndarray] = []
    refused: list[OutputRefusal] = []
    seen: dict[str, str] = {}
    for r in rows:
        path = str(r["path"])
        try:
            arr, info = load_image_rgb(path, max_side=max_side, max_pixels=max_pixels)
        except _img.ImageRejected as e:
            try:  # the refused file's hash still identifies what was refused
                sha = _img.sha256_file(path)
            except (OSError, _img.ImageRejected):
                sha = None
            refused.append(OutputRefusal(path, e.reason, sha))
            continue
        sha = info["sha256"]
        if sha in seen:
            refused.append(OutputRefusal(path, f"duplicate: byte-identical to {seen[sha]} (counted once)", sha))
            continue
        seen[sha] = path
        records.append(OutputRecord(sha256=sha, path=path, **{k: str(r.get(k) or "") for k in COLUMNS[1:]},
                                    width=info["width"], height=info["height"], format=info["format"]))
        pixels.append(arr)
    return OutputCollection(records, pixels, refused, manifest, manifest_sha)
