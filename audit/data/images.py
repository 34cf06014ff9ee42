"""The one place where artwork files are validated, decoded and preprocessed.

Every image that reaches an attack goes through :func:`validate_and_load`, so suspects, controls and
benchmark sets are always treated identically (a preprocessing difference between suspects and
controls would itself be a signal a membership test could pick up). A file that cannot be used raises
:class:`ImageRejected` with a one-line, human-readable reason that ends up in the report; nothing is
silently dropped or "repaired".
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "ImageRejected",
    "preprocess_pil",
    "read_regular_file",
    "sha256_file",
    "validate_and_load",
]

#: Largest accepted image (width × height from the file header). 100 Mpx is far above any scan of an
#: artwork a model was trained on, and still decodable in a few hundred MB of RAM.
DEFAULT_MAX_PIXELS: int = 100_000_000

#: Formats accepted as artwork evidence (PIL format names). Anything else PIL can open (EPS, ICO,
#: PSD, ...) is rejected: either it is not how artworks are distributed, or decoding it would run
#: external programs (EPS → Ghostscript).
SUPPORTED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
# MPO is what PIL calls a JPEG with an embedded second frame (many camera/phone JPEGs); it is a JPEG.

# PIL's own bomb check is a global. We keep it as a backstop at no less than our default limit (so
# PIL never warns or errors before our clearer header check would), but our check is the one that
# decides. Raising it never lowers a limit a user has set deliberately higher (or disabled with None).
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < DEFAULT_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

# Guards the brief window in which PIL's global bomb check is lifted while a header is parsed.
_OPEN_LOCK = threading.Lock()

_HASH_CHUNK = 1 << 20


class ImageRejected(ValueError):
    """An artwork file that cannot be used; ``reason`` is a one-line explanation for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open_regular(path: str | os.PathLike[str]):
    """Open ``path`` for reading without blocking and refuse anything but a regular file *before* reading a
    byte: a FIFO would block forever on open, ``/dev/zero`` would never end. The check is on the opened file
    descriptor (``fstat``), so the file cannot be swapped for a device between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    except IsADirectoryError:
        raise ImageRejected("not a regular file (a directory)") from None
    except PermissionError:
        raise ImageRejected("cannot read file: permission denied") from None
    except OSError as e:
        raise ImageRejected(f"cannot access file: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "device, socket or pipe"
        raise ImageRejected(f"not a regular file ({kind})")
    return os.fdopen(fd, "rb")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a regular file's bytes, read in chunks so large files never sit in memory at once.
    Raises :class:`ImageRejected` (an ``OSError``-free one-line reason) for anything but a regular file."""
    h = hashlib.sha256()
    with _open_regular(path) as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def read_regular_file(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """``(bytes, SHA-256)`` of a regular file, read once: the bytes that are hashed are the bytes decoded."""
    with _open_regular(path) as f:
        data = f.read()
    return data, hashlib.sha256(data).hexdigest()


def _mpx(n: int) -> str:
    return f"{n / 1e6:.1f} Mpx"


def _limit_str(n: int) -> str:
    # "100 Mpx" rather than "100.0 Mpx" for round limits, as people write them.
    return f"{n / 1e6:g} Mpx"


def _check_file(path: Path) -> int:
    """Return the file size, or reject a path that is missing, not a regular file or unreadable."""
    try:
        st = path.stat()  # follows symlinks: a link to a real image is fine
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    except OSError as e:
        raise ImageRejected(f"cannot access file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageRejected("not a regular file (a directory)")
    if not stat.S_ISREG(st.st_mode):
        raise ImageRejected("not a regular file (device, socket or pipe)")
    if st.st_size == 0:
        raise ImageRejected("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageRejected("cannot read file: permission denied")
    return int(st.st_size)


def _open_header(path: Path | io.BytesIO) -> Image.Image:
    """Open lazily (header only) without PIL's global bomb check pre-empting our own size check.

    PIL raises ``DecompressionBombError`` inside ``Image.open`` for images above twice its limit,
    before the caller can see the dimensions; we want the dimensions in the rejection reason and a
    limit that is a parameter rather than a process-wide global. Parsing a header allocates no pixel
    memory, so lifting the check for the duration of ``open`` is safe; it is restored immediately.
    """
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white.

    White, not black, because artwork on a transparent background (clip art, scans with the paper
    removed) is meant to be seen on a page; PIL's plain ``convert('RGB')`` would drop alpha and expose
    whatever colour the transparent pixels happen to store.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) greyscale: PIL's convert would clip at 255 instead of rescaling.
        # in row blocks: a 100-Mpx 16-bit PNG is a 199 KB file, and one float64 copy of it 800 MB (2.8 GB peak before)
        arr = np.asarray(img)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        rgb = np.empty(arr.shape + (3,), dtype=np.uint8)
        step = max(1, (1 << 20) // max(arr.shape[1], 1))
        for y in range(0, arr.shape[0], step):
            block = np.clip(np.rint(arr[y:y + step].astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
            rgb[y:y + step] = block[..., None]
        return Image.fromarray(rgb)
    if mode == "F":
        raise ImageRejected("unsupported pixel format: 32-bit floating-point image")
    if mode not in ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "La", "RGBa", "CMYK", "YCbCr", "RGBX"):
        raise ImageRejected(f"unsupported colour mode {mode}")

    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if not has_alpha:
        return img if mode == "RGB" else img.convert("RGB")
    rgba = img.convert("RGBA")  # also turns palette/tRNS transparency into a real alpha channel
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def preprocess_pil(img: Image.Image, resolution: int) -> np.ndarray:
    """Resize the shorter side to ``resolution`` (bicubic) and centre-crop to a square.

    The crop is passed to ``resize`` as ``box`` so there is a single resampling step, and
    ``reducing_gap`` lets PIL shrink huge images by an integer factor first (``Image.reduce``), which is
    much faster and, at a gap of 3, visually indistinguishable from a full bicubic resample.
    Returns uint8 ``[resolution, resolution, 3]``.
    """
    img = _to_rgb_on_white(img)
    w, h = img.size
    side = min(w, h)
    left = (w - side) / 2.0
    top = (h - side) / 2.0
    out = img.resize(
        (resolution, resolution),
        Image.Resampling.BICUBIC,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )
    arr = np.array(out, dtype=np.uint8)  # a writable copy (np.asarray of a PIL image is read-only)
    if arr.shape != (resolution, resolution, 3):  # defensive: never hand a wrong shape downstream
        raise ImageRejected(f"internal preprocessing error: got array of shape {arr.shape}")
    return arr


def validate_and_load(
    path: str | os.PathLike[str],
    resolution: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    expected_sha256: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Validate an image file and return it preprocessed to ``resolution × resolution`` RGB.

    The file is read once; its bytes are hashed (``info["sha256"]``) and decoded from memory, so the pixels
    scored are always those of the bytes hashed. ``expected_sha256``: the hash recorded earlier (e.g. when
    duplicates were found); a file whose bytes changed since is rejected.

    Args:
        path: image file.
        resolution: output side length in pixels (the target model's resolution).
        max_pixels: largest accepted width × height, checked from the header *before* decoding, so a
            decompression bomb (a small file declaring a gigantic image) is rejected without
            allocating it.

    Returns:
        ``(pixels, info)``: uint8 array ``[resolution, resolution, 3]`` and a dict with the original
        ``width``, ``height``, ``format``, ``mode``, ``n_frames`` and ``exif_orientation``.

    Raises:
        ImageRejected: with a one-line reason, for any file that cannot be used.
        ValueError: for an invalid ``resolution`` / ``max_pixels`` (a caller error, not a bad file).
    """
    if not isinstance(resolution, (int, np.integer)) or resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels!r}")
    resolution = int(resolution)
    p = Path(path)
    _check_file(p)
    data, sha = read_regular_file(p)
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    if expected_sha256 is not None and sha != expected_sha256:
        raise ImageRejected(f"file changed between hashing and decoding (SHA-256 {expected_sha256[:12]}… when "
                            f"listed, {sha[:12]}… when read): the evidence is changing under the audit")

    try:
        img = _open_header(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image file: cannot identify image data") from None
    except Exception as e:  # truncated/malformed header; a plugin can raise almost anything here
        raise ImageRejected(f"corrupt image header: {_first_line(e)}") from None

    with img:
        fmt = img.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageRejected(f"not a supported image (format {fmt})")
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageRejected(f"invalid image size {w}x{h}")
        if w * h > max_pixels:
            raise ImageRejected(
                f"image too large: {w}x{h} = {_mpx(w * h)} exceeds limit {_limit_str(max_pixels)} "
                "(possible decompression bomb)"
            )
        info: dict[str, Any] = {
            "sha256": sha,
            "width": int(w),
            "height": int(h),
            "format": "JPEG" if fmt == "MPO" else fmt,
            "mode": img.mode,
            "n_frames": int(getattr(img, "n_frames", 1)),
        }

        try:
            with warnings.catch_warnings():
                # Our header check above is the size policy; PIL's duplicate warning is noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # animated GIF/WebP/TIFF pages: the first frame is the artwork
                # A truncated file is evidence we cannot vouch for: refuse it even if another library in
                # this process (WeasyPrint does, on import) switched PIL to padding truncated images.
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                if fmt in ("JPEG", "MPO"):
                    # DCT-domain downscaling by 1/2, 1/4 or 1/8 while decoding; PIL keeps both sides
                    # >= the requested size, so the shorter side stays >= resolution.
                    img.draft("RGB", (resolution, resolution))
                img.load()
                # Phones and some scanners store the picture sideways plus an EXIF rotation flag;
                # training pipelines (e.g. diffusers' DreamBooth/LoRA scripts) apply it, so we do too.
                orientation = _orientation(img)
                info["exif_orientation"] = orientation
                work = ImageOps.exif_transpose(img) if orientation in range(2, 9) else img
                pixels = preprocess_pil(work, resolution)
        except ImageRejected:
            raise
        except Image.DecompressionBombError as e:  # e.g. a TIFF tile or GIF frame larger than the header
            raise ImageRejected(f"image too large while decoding: {e}") from None
        except MemoryError:
            raise ImageRejected(f"out of memory while decoding a {w}x{h} image") from None
        except Exception as e:  # truncated data, bad CRC, broken compression stream, ...
            raise ImageRejected(f"corrupt image: {_first_line(e)}") from None
    return pixels, info


def _first_line(e: BaseException) -> str:
    """First line of an exception message (reasons are one line), or its type if it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _orientation(img: Image.Image) -> int:
    """EXIF orientation tag (1 = upright, the default when absent)."""
    value = img.getexif().get(0x0112, 1)  # a malformed EXIF block raises → "corrupt image"
    return int(value) if isinstance(value, (int, np.integer)) else 1
