"""Evidence manifests: which artwork files take part in an audit, in which role.

A manifest is a CSV or JSON Lines file with columns ``path, role, caption, artist, created`` (only
``path`` and ``role`` are required), or a folder whose sub-folders are named after roles, scanned into
the same list of entries. :func:`load_evidence` turns entries into an :class:`~audit.types.EvidenceSet`:
every file gets a SHA-256, every image is decoded through :func:`~audit.data.images.validate_and_load`,
and every entry that cannot be used becomes a :class:`~audit.types.Rejection` with its reason.

Errors in the manifest itself (a missing column, an unknown role, a malformed line) raise ``ValueError``
with the file and line number: those are mistakes to fix before an audit, not evidence to report.
A listed file that is missing or broken is *not* a manifest error; it is rejected and reported.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from audit.data.images import DEFAULT_MAX_PIXELS, ImageRejected, sha256_file, validate_and_load
from audit.types import ROLES, EvidenceSet, ImageRecord, Rejection

__all__ = [
    "MANIFEST_COLUMNS",
    "REQUIRED_COLUMNS",
    "load_evidence",
    "read_manifest",
    "scan_folder",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "role", "caption", "artist", "created")
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "role")
_OPTIONAL_COLUMNS: tuple[str, ...] = tuple(c for c in MANIFEST_COLUMNS if c not in REQUIRED_COLUMNS)

_CSV_SUFFIXES = (".csv",)
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")

# Suffixes that mark a loose file in a scanned root as an artwork someone forgot to put in a role
# folder (an error), as opposed to a README or a manifest (ignored).
_IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo"}
)


# --------------------------------------------------------------------------------------------------
# Reading and writing manifests
# --------------------------------------------------------------------------------------------------


def _resolve(path_value: str, base: Path) -> str:
    """Absolute path for a manifest entry; relative paths are relative to the manifest's folder."""
    p = Path(path_value).expanduser()
    if not p.is_absolute():
        p = base / p
    return os.path.normpath(str(p))


#: longest accepted value per column (characters); a longer one is a manifest error, not something to truncate
FIELD_LIMITS: dict[str, int] = {"path": 4096, "caption": 2000}
_DEFAULT_FIELD_LIMIT = 1000


def _entry_from_fields(fields: dict[str, Any], where: str, base: Path) -> dict[str, Any]:
    """Validate one manifest row (``where`` = "file:line N" for error messages) into an entry."""
    for col, value in fields.items():
        limit = FIELD_LIMITS.get(str(col), _DEFAULT_FIELD_LIMIT if col in MANIFEST_COLUMNS else None)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise ValueError(f"{where}: field {col!r} has {len(value)} characters, more than the {limit} accepted")
    for col in REQUIRED_COLUMNS:
        value = fields.get(col)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"{where}: empty or missing required field {col!r}")
        if not isinstance(value, str):
            raise ValueError(f"{where}: field {col!r} must be a string, got {type(value).__name__} {value!r}")
    role = fields["role"].strip()
    if role not in ROLES:
        raise ValueError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")

    entry: dict[str, Any] = {"path": _resolve(fields["path"].strip(), base), "role": role}
    for col in _OPTIONAL_COLUMNS:
        value = fields.get(col)
        if value is None:
            entry[col] = ""
        elif isinstance(value, (dict, list)):
            raise ValueError(f"{where}: field {col!r} must be a plain value, got {type(value).__name__}")
        else:
            entry[col] = str(value)
    _basis_fields(fields, entry, where)
    # Extra columns (title, url, licence, ...) are kept so callers can use them; they do not affect
    # the audit.
    for key, value in fields.items():
        if key not in entry:
            entry[key] = value
    return entry


#: Optional columns that state the basis of the comparison (shown in the report's "Basis of the comparison").
BASIS_COLUMNS: tuple[str, ...] = ("basis", "published", "source")
#: Named bases (free text is accepted too): why a work is known to be outside (or inside) the training data.
BASIS_VALUES: tuple[str, ...] = ("post_cutoff", "unpublished", "held_out", "known_member", "claimed")
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


def _basis_fields(fields: dict[str, Any], entry: dict[str, Any], where: str) -> None:
    """``basis`` (a named basis or free text), ``published`` (ISO date YYYY, YYYY-MM or YYYY-MM-DD) and
    ``source`` (free text), each optional; a malformed value is a manifest error."""
    for col in BASIS_COLUMNS:
        value = fields.get(col)
        if value is None or (isinstance(value, str) and not value.strip()):
            entry[col] = ""
            continue
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError(f"{where}: field {col!r} must be a plain value, got {type(value).__name__}")
        text = str(value).strip()
        if col == "published":
            if not _DATE.fullmatch(text) or not _valid_date(text):
                raise ValueError(f"{where}: field 'published' must be a date YYYY, YYYY-MM or YYYY-MM-DD, got {text!r}")
        elif len(text) > 500:
            raise ValueError(f"{where}: field {col!r} is longer than 500 characters")
        entry[col] = text


def _valid_date(text: str) -> bool:
    from datetime import date

    parts = [int(x) for x in text.split("-")] + [1, 1]
    try:
        date(parts[0], parts[1], parts[2])
    except ValueError:
        return False
    return True


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a CSV (``.csv``) or JSON Lines (``.jsonl``/``.json``/``.ndjson``) manifest.

    Each entry is a dict with at least ``path`` (absolute; relative paths are resolved against the
    manifest's folder), ``role`` (one of :data:`audit.types.ROLES`), ``caption``, ``artist`` and
    ``created`` (``""`` when absent). Extra columns are passed through unchanged.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: unsupported suffix, missing required column, unknown role, empty required value or
            malformed JSON line; the message names the file and line.
    """
    mpath = Path(path)
    if not mpath.is_file():
        raise FileNotFoundError(f"manifest not found: {mpath}")
    suffix = mpath.suffix.lower()
    base = mpath.resolve().parent
    try:
        if suffix in _CSV_SUFFIXES:
            entries = _read_csv(mpath, base)
        elif suffix in _JSONL_SUFFIXES:
            entries = _read_jsonl(mpath, base)
        else:
            entries = None
    except UnicodeDecodeError as e:
        raise ValueError(f"{mpath}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); save the "
                         "manifest as UTF-8 (Latin-1 and UTF-16 files are not read)") from None
    except csv.Error as e:  # e.g. a field over the csv module's limit (131,072 characters)
        raise ValueError(f"{mpath}: malformed CSV: {e}") from None
    if entries is None:
        raise ValueError(
            f"{mpath}: unsupported manifest type {suffix!r} (use .csv or .jsonl with one JSON object per line)"
        )
    if not entries:
        raise ValueError(f"{mpath}: manifest has no entries")
    return entries


def _read_csv(mpath: Path, base: Path) -> list[dict[str, Any]]:
    # utf-8-sig: spreadsheets often write a byte-order mark, which would otherwise end up glued to
    # the first column name ("\ufeffpath") and make "path" look missing.
    with open(mpath, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() if h is not None else h for h in (reader.fieldnames or [])]
        if not header:
            raise ValueError(
                f"{mpath}:line 1: empty file, expected a header with columns {', '.join(MANIFEST_COLUMNS)}"
            )
        reader.fieldnames = header
        dups = sorted({h for h in header if header.count(h) > 1})
        if dups:  # csv.DictReader would keep the last such column silently
            raise ValueError(f"{mpath}:line 1: column(s) {', '.join(map(repr, dups))} appear more than once in the header")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{mpath}:line 1: missing required column(s) {', '.join(map(repr, missing))} "
                f"(header has: {', '.join(header)})"
            )
        entries: list[dict[str, Any]] = []
        for row in reader:
            where = f"{mpath}:line {reader.line_num}"
            if None in row:  # DictReader puts surplus cells under the key None
                raise ValueError(f"{where}: more fields than the {len(header)} header columns")
            entries.append(_entry_from_fields(row, where, base))
    return entries


def _read_jsonl(mpath: Path, base: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    with open(mpath, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{mpath}:line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                hint = ""
                if line.lstrip().startswith("["):
                    hint = " (a JSON array is not accepted: write one object per line)"
                raise ValueError(f"{where}: malformed JSON: {e.msg} at column {e.colno}{hint}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            missing = [c for c in REQUIRED_COLUMNS if c not in obj]
            if missing:
                raise ValueError(f"{where}: missing required field(s) {', '.join(map(repr, missing))}")
            entries.append(_entry_from_fields(obj, where, base))
    return entries


def write_manifest(entries: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write entries as a CSV manifest (or JSON Lines when ``path`` ends in ``.jsonl``).

    Paths inside the manifest's folder are written relative to it, so a folder with its manifest can
    be moved or archived as one unit; other paths are written absolute. Every entry must already have
    a valid role: writing a manifest :func:`read_manifest` would refuse is caught here instead.
    Returns the manifest path.
    """
    mpath = Path(path)
    suffix = mpath.suffix.lower()
    if suffix not in _CSV_SUFFIXES + (".jsonl",):
        raise ValueError(f"{mpath}: write_manifest supports .csv and .jsonl, got {suffix!r}")
    base = mpath.resolve().parent
    rows: list[dict[str, Any]] = []
    extra_cols: list[str] = []
    for i, e in enumerate(entries):
        if not e.get("path"):
            raise ValueError(f"entry {i}: missing path")
        if e.get("role") not in ROLES:
            raise ValueError(
                f"entry {i} ({e.get('path')}): role {e.get('role')!r} is not one of {', '.join(ROLES)}; "
                "assign roles before writing a manifest"
            )
        abs_path = Path(os.path.abspath(os.fspath(e["path"])))
        try:
            rel = abs_path.relative_to(base)
            path_str = rel.as_posix()
        except ValueError:
            path_str = str(abs_path)
        row = {c: ("" if e.get(c) is None else e.get(c)) for c in MANIFEST_COLUMNS}
        row["path"] = path_str
        for k, v in e.items():
            if k not in row:
                row[k] = v
                if k not in extra_cols:
                    extra_cols.append(k)
        rows.append(row)

    mpath.parent.mkdir(parents=True, exist_ok=True)
    columns = list(MANIFEST_COLUMNS) + extra_cols
    if suffix == ".jsonl":
        with open(mpath, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({c: row.get(c, "") for c in columns}, ensure_ascii=False) + "\n")
    else:
        with open(mpath, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
    return mpath


# --------------------------------------------------------------------------------------------------
# Scanning a folder
# --------------------------------------------------------------------------------------------------


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _files_under(folder: Path) -> list[Path]:
    """All non-hidden files under ``folder`` (recursively, hidden folders skipped), sorted."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in filenames:
            if _visible(name) and not name.lower().endswith(".txt"):
                out.append(Path(dirpath) / name)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _sidecar_caption(file: Path) -> str:
    sidecar = file.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8", errors="replace").strip()
    return ""


def _entries_for(folder: Path, role: str) -> list[dict[str, Any]]:
    entries = []
    for file in _files_under(folder):
        parts = file.relative_to(folder).parts
        entries.append(
            {
                "path": os.path.normpath(str(file.absolute())),
                "role": role,
                "caption": _sidecar_caption(file),
                # role/<artist>/work.png: the artist is the first folder below the role folder.
                "artist": parts[0] if len(parts) > 1 else "",
                # Unknown for a scanned folder. File times are copy/download times, not when the work
                # was made, so guessing from them would put wrong dates into evidence.
                "created": "",
            }
        )
    return entries


def scan_folder(root: str | os.PathLike[str], role_dirs: bool = True) -> list[dict[str, Any]]:
    """List the artworks in a folder as manifest entries.

    With ``role_dirs=True`` (the default) ``root`` must contain sub-folders named after roles
    (``suspect/``, ``control/``, ``member/``, ``nonmember/``); every file below one becomes an entry
    with that role. With ``role_dirs=False`` every file below ``root`` becomes an entry with role
    ``""``, which the caller must fill in before :func:`load_evidence` or :func:`write_manifest`.

    * The caption comes from a sidecar ``<stem>.txt`` next to the file, if present.
    * The artist is the name of the first folder below the role folder (``suspect/<artist>/x.png``),
      else ``""``.
    * Hidden files and folders and ``.txt`` files are skipped. Any other file is listed even if it is
      not an image, so that it is rejected with a reason rather than silently ignored.
    * Order: role folders in :data:`audit.types.ROLES` order, then by relative path.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError (``role_dirs=True``): a non-hidden sub-folder that is not a role name (e.g. a typo
            such as ``suspects/``, which would otherwise drop a whole set), an image file lying
            directly in ``root`` outside any role folder, or no role folder at all.
    """
    rootp = Path(root)
    if not rootp.is_dir():
        raise FileNotFoundError(f"evidence folder not found: {rootp}")
    if not role_dirs:
        return _entries_for(rootp, "")

    children = sorted(c for c in rootp.iterdir() if _visible(c.name))
    unknown = [c.name for c in children if c.is_dir() and c.name not in ROLES]
    if unknown:
        raise ValueError(
            f"{rootp}: sub-folder(s) {', '.join(map(repr, unknown))} are not role names "
            f"(expected {', '.join(ROLES)})"
        )
    loose = [c.name for c in children if c.is_file() and c.suffix.lower() in _IMAGE_SUFFIXES]
    if loose:
        raise ValueError(
            f"{rootp}: image file(s) {', '.join(map(repr, loose[:5]))}{' ...' if len(loose) > 5 else ''} "
            f"lie outside any role folder; move them into one of {', '.join(ROLES)}"
        )
    role_folders = [rootp / r for r in ROLES if (rootp / r).is_dir()]
    if not role_folders:
        raise ValueError(f"{rootp}: no role folders found (expected sub-folders named {', '.join(ROLES)})")
    entries: list[dict[str, Any]] = []
    for folder in role_folders:
        entries.extend(_entries_for(folder, folder.name))
    return entries


# --------------------------------------------------------------------------------------------------
# Loading evidence
# --------------------------------------------------------------------------------------------------


def _duplicate_reasons(entries: list[dict[str, Any]], hashes: list[str | None]) -> dict[int, str]:
    """Rejection reasons for entries whose bytes appear more than once.

    Same bytes, same role: the first listing is kept, later ones are rejected as duplicates (counting
    one artwork twice would inflate n and break the exchangeability the tests rely on). Same bytes
    under *different* roles: the role assignment contradicts itself (e.g. a work that is both suspect
    and control), there is no way to tell which is right, so every listing of that file is rejected.
    """
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            groups.setdefault(h, []).append(i)
    reasons: dict[int, str] = {}
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        roles = {entries[i]["role"] for i in idxs}
        if len(roles) == 1:
            first = idxs[0]
            for i in idxs[1:]:
                reasons[i] = f"duplicate of {_listing(entries, first, i)} (same bytes, same role: counted once)"
            continue
        for i in idxs:
            other = next(j for j in idxs if entries[j]["role"] != entries[i]["role"])
            reasons[i] = (f"same file also listed as role {entries[other]['role']} ({_listing(entries, other, i)}): "
                          "the role assignment contradicts itself, so every listing is excluded")
    return reasons


def _listing(entries: list[dict[str, Any]], other: int, me: int) -> str:
    """How entry ``me``'s reason names entry ``other``: its path, or its entry number when the path is the same."""
    if os.path.normpath(str(entries[other]["path"])) == os.path.normpath(str(entries[me]["path"])):
        return f"the same path listed again as manifest entry {other + 1}"
    return f"{entries[other]['path']} (manifest entry {other + 1})"


def _near_duplicate_reasons(records: list[ImageRecord], pixels: torch.Tensor) -> dict[int, str]:
    """Rejection reasons for re-encoded / resized copies among accepted works (see audit.data.near_duplicates):
    a later copy under the same role is dropped; copies under different roles are all excluded."""
    from audit.data.near_duplicates import find_near_duplicates

    reasons: dict[int, str] = {}
    for pair in find_near_duplicates(pixels):
        a, b = records[pair.i], records[pair.j]
        if a.role == b.role:
            reasons.setdefault(pair.j, f"near-duplicate of {a.path} (same role; {pair.describe()}): a re-encoded or "
                                       "resized copy would count one work twice")
            continue
        for me, other in ((pair.i, b), (pair.j, a)):
            reasons[me] = (f"near-duplicate of {other.path} listed as role {other.role} ({pair.describe()}): the role "
                           "assignment contradicts itself, so both listings are excluded")
    return reasons


def load_evidence(
    entries: list[dict[str, Any]],
    resolution: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    check_near_duplicates: bool = False,
) -> EvidenceSet:
    """Hash, validate and preprocess every entry into an :class:`~audit.types.EvidenceSet`.

    Accepted files become :class:`~audit.types.ImageRecord` (``image_id`` = SHA-256 of the file) with
    uint8 pixels ``[N, 3, resolution, resolution]`` in entry order; every other entry becomes a
    :class:`~audit.types.Rejection` with its reason (missing, unreadable, not an image, too large,
    corrupt, duplicate, contradictory roles, near-duplicate: a re-encoded or resized copy of another listed
    work, see :mod:`audit.data.near_duplicates`). One bad file never stops the others. ``resolved_path``
    records the file actually read (a symbolic link's target). ``check_near_duplicates`` (on for audit
    evidence in :mod:`audit.pipeline`; off by default so training sets and benchmarks keep their recorded
    splits) also rejects re-encoded / resized copies.

    Raises:
        ValueError: an entry without a path or with a role outside :data:`audit.types.ROLES` (a caller
            or manifest mistake, e.g. a ``scan_folder(role_dirs=False)`` result whose roles were never
            filled in).
    """
    if not isinstance(resolution, (int, np.integer)) or resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    resolution = int(resolution)
    for i, e in enumerate(entries):
        if not e.get("path"):
            raise ValueError(f"entry {i}: missing path")
        if e.get("role") not in ROLES:
            raise ValueError(
                f"entry {i} ({e.get('path')}): role {e.get('role')!r} is not one of {', '.join(ROLES)}"
            )

    # Pass 1: hash everything first, so duplicates are known before any (expensive) decoding and a
    # file listed under two roles can be rejected in *all* its listings, including the first.
    hashes: list[str | None] = []
    for e in tqdm(entries, desc="hashing evidence", unit="file", disable=not progress):
        try:  # regular files only: a FIFO or /dev/zero is refused before a byte is read (no hang)
            hashes.append(sha256_file(e["path"]))
        except (OSError, ImageRejected):
            hashes.append(None)  # missing/unreadable/not a file: validate_and_load gives the precise reason
    dup_reasons = _duplicate_reasons(entries, hashes)

    # Pass 2: decode. Pixels go straight into a preallocated uint8 buffer (no list + stack, which
    # would briefly need twice the memory for large evidence sets).
    n_candidates = len(entries) - len(dup_reasons)
    buffer = torch.empty((n_candidates, 3, resolution, resolution), dtype=torch.uint8)
    records: list[ImageRecord] = []
    rejected: list[Rejection] = []
    for i, e in enumerate(tqdm(entries, desc="loading evidence", unit="img", disable=not progress)):
        path, role, sha = str(e["path"]), str(e["role"]), hashes[i]
        if i in dup_reasons:
            rejected.append(Rejection(path, role, dup_reasons[i], sha))
            continue
        try:
            # the bytes decoded are the bytes hashed: a file swapped since pass 1 is rejected, never scored
            # under its old hash
            arr, info = validate_and_load(path, resolution, max_pixels=max_pixels, expected_sha256=sha)
            if sha is None:  # readable now but not a moment ago: the file is changing under us
                raise ImageRejected("file could not be hashed (changed or unreadable while loading)")
        except ImageRejected as err:
            rejected.append(Rejection(path, role, err.reason, sha))
            continue
        except Exception as err:  # never let one file abort an audit; keep the reason instead
            rejected.append(Rejection(path, role, f"unexpected error: {type(err).__name__}: {err}", sha))
            continue
        buffer[len(records)] = torch.from_numpy(arr).permute(2, 0, 1)
        records.append(
            ImageRecord(
                image_id=sha,
                path=path,
                role=role,
                resolved_path=os.path.realpath(path),
                caption=_str_field(e.get("caption")),
                artist=_str_field(e.get("artist")),
                created=_str_field(e.get("created")),
                basis=_str_field(e.get("basis")),
                published=_str_field(e.get("published")),
                source=_str_field(e.get("source")),
                width=int(info["width"]),
                height=int(info["height"]),
                format=str(info["format"]),
            )
        )

    pixels = buffer[: len(records)]
    near = _near_duplicate_reasons(records, pixels) if check_near_duplicates else {}
    if near:
        keep = [k for k in range(len(records)) if k not in near]
        rejected += [Rejection(records[k].path, records[k].role, near[k], records[k].image_id) for k in sorted(near)]
        records = [records[k] for k in keep]
        pixels = pixels[keep]
    elif len(records) < n_candidates:
        pixels = pixels.clone()  # drop the unused tail of the buffer
    if rejected:
        logger.warning(
            "%d of %d evidence entries rejected (see EvidenceSet.rejected); first: %s: %s",
            len(rejected), len(entries), rejected[0].path, rejected[0].reason,
        )
    return EvidenceSet(records=records, pixels=pixels, rejected=rejected)


def _str_field(value: Any) -> str:
    return "" if value is None else str(value)
