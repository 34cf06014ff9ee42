"""Tamper-evident results folders: a SHA-256 manifest written last, a completion marker, and ``audit-verify``.

:func:`seal` lists every file of a results folder with its SHA-256 and size in ``checksums.json``, plus a
digest of every row of the tables (scores, images, features) keyed by what the row is about, so a later
check can say *which* rows were edited, deleted or added, not only that a file changed. The completion
marker ``COMPLETE`` (holding the SHA-256 of ``checksums.json``) is written after it, last of all: a folder
without it is an unfinished run, and every reader says so.

:func:`verify` checks the marker, every hash and every row, and recomputes the analysis from the scores with
the recorded plan (rebuilt from plain values, nothing instantiated) to compare it with ``analysis.json``::

    audit-verify results/demo            # prints "verified: ..." (exit 0) or what differs (exit 1)

What this does and does not protect: anyone who edits a sealed file without resealing is caught, and an
analysis that does not follow from the stored scores is caught. Someone who edits the scores *and* rewrites
``checksums.json`` and ``COMPLETE`` produces a folder that verifies; against that, keep the SHA-256 of
``checksums.json`` (printed by ``audit-verify``) somewhere the other party cannot change, e.g. in the report
filed with the court.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from audit import io
from audit.errors import UserError

FORMAT = "audit-checksums/2"  # 2: every report's HTML names the SHA-256 of the analysis.json it was made from
SIGNATURE = "checksums.json.sig"  # optional Ed25519 signature of checksums.json (base64), see sign()

#: Row keys of the tables whose rows are digested one by one (a missing column is left out of the key).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    io.SCORES: ("image_id", "attack", "attack_params_hash", "target_fingerprint", "seed"),
    io.IMAGES: ("image_id",),
    io.FEATURES: ("image_id",),
}

#: Files a seal does not cover: the seal itself and logs that are still appended to when a run exits.
_UNSEALED_SUFFIXES = (".log",)

_MAX_LISTED = 8  # rows / values listed per kind of difference; the rest are counted


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: the records without which a folder is not an audit's results (a seal over a bare scores.parquet proves nothing)
REQUIRED = (io.SCORES, io.IMAGES, io.RUN, io.PLAN, io.ANALYSIS)
_CLAIM = ".audit-run"  # a running audit's claim on its folder (audit.pipeline), removed before the seal


def _sealable(folder: Path) -> list[str]:
    """Relative paths (posix) of every regular file under ``folder`` that a seal covers, sorted. Symbolic links
    and other non-regular entries are never followed nor listed here (see :func:`not_regular`)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):  # does not follow symlinked folders
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) / d).is_symlink())
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            if rel in (io.CHECKSUMS, io.COMPLETE, SIGNATURE, _CLAIM) or name.endswith(_UNSEALED_SUFFIXES) \
                    or name.endswith(".tmp"):
                continue
            if p.is_symlink() or not p.is_file():
                continue
            out.append(rel)
    return sorted(out)


def not_regular(folder: Path) -> list[str]:
    """Every symbolic link (to a file, a folder, a device) and every non-regular entry under ``folder``: a results
    folder holds regular files only, so nothing a reader opens can lie outside it or never end (``/dev/zero``)."""
    import stat as _stat

    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            try:
                st = p.lstat()
            except OSError:
                continue
            if _stat.S_ISLNK(st.st_mode):
                out.append(f"{rel} (symbolic link to {os.readlink(p)})")
            elif not (_stat.S_ISREG(st.st_mode) or _stat.S_ISDIR(st.st_mode)):
                out.append(f"{rel} (not a regular file)")
    return sorted(out)


class FolderRefused(UserError):
    """A results folder that no reader or writer may use as it is (one line)."""


def check_regular(folder: Path) -> None:
    """Refuse a folder with symbolic links or special files, naming them."""
    bad = not_regular(Path(folder))
    if bad:
        raise FolderRefused(f"{folder}: a results folder may hold regular files only; refused: " + ", ".join(bad[:5])
                            + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))


def analysis_sha256(folder: Path) -> str | None:
    p = Path(folder) / io.ANALYSIS
    return sha256_file(p) if p.is_file() and not p.is_symlink() else None


#: the tag a report's HTML carries: the SHA-256 of the analysis.json it was made from (audit.pipeline writes it)
BINDING_META = "audit-analysis-sha256"


def _visible_text(html_text: str) -> str:
    import html as _html
    import re

    t = re.sub(r"<(script|style)\b.*?</\1>", " ", html_text, flags=re.S | re.I)
    return " ".join(_html.unescape(re.sub(r"<[^>]+>", " ", t)).split())


def check_reports(d: Path, notes: list[str], format_version: int) -> list[str]:
    """The report files against the analysis they claim: the HTML names the analysis.json digest (seal format 2)
    and states the analysis's verdict sentence; the PDF states it too (checked when ``pdftotext`` is installed)."""
    problems: list[str] = []
    try:
        analysis = json.loads((d / io.ANALYSIS).read_text())
        sentence = " ".join(str(analysis["verdict"]["sentence"]).split())
    except Exception:
        return []  # an unreadable analysis is reported by the recomputation
    digest = analysis_sha256(d)
    from audit.report.i18n import LANGUAGES, localized_name

    first_html, first_pdf = _report_names(d)
    checked = 0
    for html_name, pdf_name in [(first_html, first_pdf)] + [  # report.zh.html / .pdf of report.language=en+zh
            (localized_name(first_html, x, first=False), localized_name(first_pdf, x, first=False)) for x in LANGUAGES]:
        checked += _check_report_pair(d, html_name, pdf_name, sentence, digest, format_version, problems, notes)
    if checked and not problems:
        notes.append("the report states the verdict of the analysis")
    return problems


def _check_report_pair(d: Path, html_name: str, pdf_name: str, sentence: str, digest: Any, format_version: int,
                       problems: list[str], notes: list[str]) -> int:
    import re
    import shutil
    import subprocess

    checked = 0
    if (d / html_name).is_file():
        text = (d / html_name).read_text(encoding="utf-8", errors="replace")
        m = re.search(r'<meta name="' + BINDING_META + r'" content="([0-9a-f]{64})"', text)
        if m is None and format_version >= 2:
            problems.append(f"{html_name} does not name the analysis it was made from (no {BINDING_META} tag)")
        elif m is not None and m.group(1) != digest:
            problems.append(f"{html_name} was made from another analysis (SHA-256 {m.group(1)[:12]}…, this folder's "
                            f"{io.ANALYSIS} is {str(digest)[:12]}…)")
        if sentence not in _visible_text(text):
            problems.append(f"{html_name} does not state the verdict of {io.ANALYSIS} (edited, or another audit's report)")
        checked += 1
    if (d / pdf_name).is_file():
        tool = shutil.which("pdftotext")
        if tool is None:
            notes.append(f"{pdf_name} not read (pdftotext is not installed)")
        else:
            try:
                out = subprocess.run([tool, "-enc", "UTF-8", str(d / pdf_name), "-"], capture_output=True,
                                     timeout=120).stdout.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                out = ""
            if sentence not in " ".join(out.replace("\u00ad", "").split()):
                problems.append(f"{pdf_name} does not state the verdict of {io.ANALYSIS} (edited, or another "
                                "audit's report)")
            checked += 1
    return checked


def _report_names(d: Path) -> tuple[str, str]:
    """The report's file names from the folder's config.yaml (plain, checked values), else the defaults."""
    import yaml

    from audit.safety import ConfigRefused, check_report_names

    names = ("report.html", "report.pdf")
    try:
        cfg = yaml.safe_load((d / io.CONFIG).read_text()) if (d / io.CONFIG).is_file() else {}
        rep = (cfg or {}).get("report") if isinstance(cfg, dict) else None
        if isinstance(rep, dict):
            plain = {"enabled": True, "formats": ["html"], "filename": rep.get("filename", names[0]),
                     "pdf_filename": rep.get("pdf_filename", names[1])}
            check_report_names(plain)
            names = (plain["filename"], plain["pdf_filename"])
    except (ConfigRefused, yaml.YAMLError, OSError, AttributeError):
        pass
    return names


def row_digests(df: pd.DataFrame, key: tuple[str, ...]) -> dict[str, str]:
    """``{row key: SHA-256 (16 hex) of the row's values}``; the key joins ``key``'s columns with ``|``."""
    cols = [c for c in key if c in df.columns]
    out: dict[str, str] = {}
    records = df.to_dict(orient="records")
    for rec in records:
        k = "|".join(str(rec[c]) for c in cols) if cols else str(len(out))
        blob = json.dumps({c: _canon(v) for c, v in sorted(rec.items())}, sort_keys=True)
        d = hashlib.sha256(blob.encode()).hexdigest()[:16]
        base, n = k, 1
        while k in out:  # a repeated key (should not happen) still gets its own entry
            n += 1
            k = f"{base}#{n}"
        out[k] = d
    return out


def _canon(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if hasattr(v, "item"):  # numpy scalars
        return _canon(v.item())
    if isinstance(v, (list, tuple)) or hasattr(v, "tolist"):
        return [_canon(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    return v


def seal(folder: str | Path, altered: list[str] | None = None, note: str | None = None) -> str:
    """Write ``checksums.json`` over every file of ``folder``, then the ``COMPLETE`` marker (last).

    ``altered``: problems a verification found before a regeneration that was told to go on anyway; they
    are kept in the seal, so the folder never verifies as unaltered afterwards. Returns the SHA-256 of
    ``checksums.json``.
    """
    d = Path(folder)
    check_regular(d)  # a symbolic link would be invisible to the seal and lead a reader out of the folder
    (d / io.COMPLETE).unlink(missing_ok=True)  # while the seal is rewritten the folder is unfinished
    files, tables = {}, {}
    for rel in _sealable(d):
        p = d / rel
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        if rel in TABLE_KEYS:
            tables[rel] = {"key": [c for c in TABLE_KEYS[rel]],
                           "rows": row_digests(pd.read_parquet(p), TABLE_KEYS[rel])}
    record = {
        "format": FORMAT,
        "sealed_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": io.package_versions().get("diffusion-membership-audit", "unknown"),
        "altered": list(altered or []),
        "note": note,
        "files": files,
        "tables": tables,
    }
    blob = json.dumps(record, indent=1, sort_keys=True).encode()
    tmp = d / (io.CHECKSUMS + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, d / io.CHECKSUMS)
    digest = hashlib.sha256(blob).hexdigest()
    (d / io.COMPLETE).write_text(digest + "\n")
    return digest


@dataclass
class Verification:
    folder: Path
    problems: list[str] = field(default_factory=list)  # every difference found (empty = verified)
    notes: list[str] = field(default_factory=list)  # what was checked
    checksums_sha256: str | None = None
    complete: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"verified: {self.folder} ({'; '.join(self.notes)})"
        return f"NOT verified: {self.folder}: " + "; ".join(self.problems)


def verify(folder: str | Path, recompute: bool = True) -> Verification:
    """Check a results folder against its seal and (``recompute``) its analysis against its scores."""
    d = Path(folder)
    v = Verification(d)
    if not d.is_dir():
        v.problems.append("not a folder")
        return v
    manifest_path, marker = d / io.CHECKSUMS, d / io.COMPLETE
    if not marker.is_file():
        v.problems.append("unfinished: no completion marker (the run was interrupted or failed before it ended)")
    if not manifest_path.is_file():
        v.problems.append(f"no {io.CHECKSUMS}: nothing to verify the files against")
        return v
    blob = manifest_path.read_bytes()
    v.checksums_sha256 = hashlib.sha256(blob).hexdigest()
    if marker.is_file():
        v.complete = True
        if marker.read_text().strip() != v.checksums_sha256:
            v.problems.append(f"{io.CHECKSUMS} was changed after the folder was sealed (it does not match {io.COMPLETE})")
    try:
        sealed = json.loads(blob)
        files, tables = dict(sealed["files"]), dict(sealed.get("tables", {}))
    except (ValueError, KeyError, TypeError) as e:
        v.problems.append(f"{io.CHECKSUMS} is not a valid seal: {e}")
        return v
    if sealed.get("altered"):
        v.problems.append("sealed as made from altered data: " + "; ".join(map(str, sealed["altered"])))
    regen = d / io.REGENERATED
    if regen.is_file() and not regen.is_symlink():  # the regeneration's own record of what failed stays binding
        try:
            listed = json.loads(regen.read_text()).get("verification_problems") or []
        except (ValueError, AttributeError):
            listed = ["regenerated.json is not readable"]
        if listed and not sealed.get("altered"):
            v.problems.append(f"{io.REGENERATED} says the report was regenerated from data that failed verification "
                              "(" + "; ".join(map(str, listed))[:300] + "), but the seal does not")

    for bad in not_regular(d):
        v.problems.append(f"not allowed in a results folder (not followed): {bad}")
    missing_records = [r for r in REQUIRED if r not in files]
    if missing_records:
        v.problems.append("not an audit's results: the seal does not cover " + ", ".join(missing_records))
    present = set(_sealable(d))
    for rel, entry in sorted(files.items()):
        p = d / rel
        if rel not in present:
            v.problems.append(f"missing file: {rel}")
            continue
        got = sha256_file(p)
        if got != entry.get("sha256"):
            detail = ""
            if rel in tables:
                detail = _table_diff(p, tables[rel])
            v.problems.append(f"changed file: {rel} (SHA-256 {str(entry.get('sha256'))[:12]}… sealed, {got[:12]}… now)"
                              + (f": {detail}" if detail else ""))
    for rel in sorted(present - set(files)):
        v.problems.append(f"added file (not in the seal): {rel}")
    v.notes.append(f"{len(files)} files match their SHA-256")

    try:
        version = int(str(sealed.get("format", "")).rsplit("/", 1)[-1])
    except ValueError:
        version = 0
    if recompute and (d / io.ANALYSIS).is_file() and not (d / io.ANALYSIS).is_symlink():
        v.problems.extend(check_reports(d, v.notes, version))  # the report states the analysis it names
    if recompute and (d / io.SCORES).is_file() and (d / io.ANALYSIS).is_file() and not not_regular(d):
        v.problems.extend(_recompute(d, v.notes))
    if recompute and (d / "blackbox").is_dir():  # a black-box run: its scores must follow from its request log
        from audit.blackbox.verify import check_request_log

        v.problems.extend(check_request_log(d, v.notes))
    return v


def _table_diff(path: Path, sealed: dict[str, Any]) -> str:
    """Which rows of a table were changed, deleted or added, by their key."""
    try:
        now = row_digests(pd.read_parquet(path), tuple(sealed.get("key", ())))
    except Exception as e:  # not even a parquet file any more
        return f"unreadable as a table ({type(e).__name__})"
    before = dict(sealed.get("rows", {}))
    changed = [k for k in before if k in now and now[k] != before[k]]
    deleted = [k for k in before if k not in now]
    added = [k for k in now if k not in before]
    key = "|".join(sealed.get("key", ()))
    parts = []
    for label, keys in (("changed", changed), ("deleted", deleted), ("added", added)):
        if keys:
            shown = ", ".join(_short_key(k) for k in keys[:_MAX_LISTED])
            more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
            parts.append(f"{len(keys)} row(s) {label} [{shown}{more}]")
    if not parts:
        return "the same rows and values, different bytes"
    return f"rows keyed by ({key}): " + "; ".join(parts)


def _short_key(k: str) -> str:
    return "|".join(p[:12] + "…" if len(p) > 16 else p for p in k.split("|"))


def _recompute(d: Path, notes: list[str]) -> list[str]:
    """Recompute the analysis from the stored scores with the recorded plan; differences as problems."""
    from audit.stats import analyze

    try:
        run = io.read_run(d)
        recorded = json.loads((d / io.ANALYSIS).read_text())
        plan = io.plan_from_values(recorded.get("plan"), where=f"{io.ANALYSIS} plan")
        plan_json = io.read_json(d / io.PLAN, {})
        declared = plan_json.get("sha256") or (run.metadata.get("analysis_plan") or {}).get("sha256")
        result = analyze(run.scores, run.images, plan, features=run.features, recorded_plan_sha256=declared)
    except Exception as e:
        return [f"the analysis could not be recomputed from the stored files: {type(e).__name__}: {e}"]
    fresh = json.loads(json.dumps(result.to_dict(), default=io._json_default))
    made_by = recorded.pop(PRODUCED_BY, None) if isinstance(recorded, dict) else None
    now = statistics_code()
    other_code = made_by != now
    diffs = _json_diff(recorded, fresh, "")
    if not diffs:
        notes.append("the analysis recomputed from the scores equals analysis.json"
                     + (f" — made by {_describe_code(made_by)}, recomputed by {_describe_code(now)}" if other_code else ""))
        return []
    shown = "; ".join(diffs[:_MAX_LISTED]) + (f"; and {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else "")
    why = ""
    if other_code:
        why = (f" — {io.ANALYSIS} was made by {_describe_code(made_by)} and recomputed by {_describe_code(now)}: "
               "a difference can be a change of the method between versions; recompute with the version that made it")
    return [f"{io.ANALYSIS} differs from the analysis recomputed from the stored scores ({len(diffs)} value(s)): "
            + shown + why]


#: How closely a recomputed number must equal the recorded one. Not 1e-9: the blind-baseline gate's and the
#: cross-fit test's logistic fits stop where their line search can no longer see the objective decrease, which
#: fixes the coefficients (and the out-of-fold scores made from them) only to about √ε ≈ 1e-8 relative, and
#: another CPU's BLAS kernels (AVX-512 against AVX2 OpenBLAS, measured: up to 1.1e-8) land elsewhere in that
#: band. 1e-6 is a hundred times that and three orders finer than any figure a report prints; counts, decisions,
#: verdicts, texts and hashes are compared exactly.
FLOAT_REL_TOL = 1e-6
FLOAT_ABS_TOL = 1e-8
#: the key of ``analysis.json`` that names the code that computed it (:func:`statistics_code`)
PRODUCED_BY = "produced_by"


def statistics_code(root: Path | None = None) -> dict[str, str]:
    """What computes an analysis: the package's version and the SHA-256 of the statistics' source files
    (``audit/stats/**/*.py``, each as its relative path and bytes, in path order). Written into ``analysis.json``
    as ``produced_by``; when a recomputation differs, :func:`verify` says whether the folder was made by other
    statistics code — a changed method between versions, not necessarily an edited folder."""
    from importlib import metadata

    root = Path(__file__).resolve().parent / "stats" if root is None else root
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    try:
        version = metadata.version("diffusion-membership-audit")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"package": "diffusion-membership-audit", "version": version, "statistics_sha256": h.hexdigest()}


def _describe_code(code: Any) -> str:
    if not isinstance(code, dict) or not code.get("statistics_sha256"):
        return "a version that did not record its statistics code"
    return f"version {code.get('version', '?')} (statistics code {str(code['statistics_sha256'])[:12]}…)"


def numbers_agree(a: float, b: float) -> bool:
    """Whether a recorded and a recomputed number are the same figure (see :data:`FLOAT_REL_TOL`)."""
    return math.isclose(a, b, rel_tol=FLOAT_REL_TOL, abs_tol=FLOAT_ABS_TOL)


def _json_diff(a: Any, b: Any, path: str) -> list[str]:
    """Differences between two JSON values, as ``path: recorded → recomputed`` (numbers to
    :data:`FLOAT_REL_TOL`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            p = f"{path}.{k}" if path else str(k)
            if k not in b:
                out.append(f"{p}: only in {io.ANALYSIS}")
            elif k not in a:
                out.append(f"{p}: missing from {io.ANALYSIS}")
            else:
                out.extend(_json_diff(a[k], b[k], p))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} entries recorded, {len(b)} recomputed"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, f"{path}[{i}]")]
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if a == b else [f"{path}: {a!r} → {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return [] if numbers_agree(a, b) else [f"{path}: {a!r} → {b!r}"]
    return [] if a == b else [f"{path}: {_brief(a)} → {_brief(b)}"]


def _brief(x: Any) -> str:
    s = repr(x)
    return s if len(s) <= 80 else s[:77] + "..."


# ------------------------------------------------------------------------ optional Ed25519 seal
def keygen(path: Path) -> Path:
    """Write a new Ed25519 private key to ``path`` (PEM, mode 0600) and its public key to ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def sign(folder: str | Path, private_key: Path) -> Path:
    """Sign the folder's ``checksums.json`` with an Ed25519 key (after it verifies): ``checksums.json.sig``.
    Anyone holding the public key can then check that no sealed file changed since the expert signed."""
    import base64

    from cryptography.hazmat.primitives import serialization

    d = Path(folder)
    key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    sig = key.sign((d / io.CHECKSUMS).read_bytes())
    out = d / SIGNATURE
    out.write_text(base64.b64encode(sig).decode() + "\n")
    return out


def check_signature(folder: str | Path, public_key: Path) -> str | None:
    """None if ``checksums.json.sig`` is a valid signature of ``checksums.json`` under ``public_key``, else why not."""
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    d = Path(folder)
    if not (d / SIGNATURE).is_file():
        return f"no signature ({SIGNATURE}) to check against the public key"
    pub = serialization.load_pem_public_key(Path(public_key).read_bytes())
    try:
        pub.verify(base64.b64decode((d / SIGNATURE).read_text().strip()), (d / io.CHECKSUMS).read_bytes())
    except (InvalidSignature, ValueError):
        return f"{SIGNATURE} is not a valid signature of {io.CHECKSUMS} under {public_key}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="audit-verify", description="Check a results folder: every SHA-256 of its "
                                 "seal, every table row, and the analysis recomputed from its scores.")
    ap.add_argument("folder", type=Path, help="a results folder written by audit-run (or scripts/report.py)")
    ap.add_argument("--no-recompute", action="store_true", help="check the hashes only (skip the analysis)")
    ap.add_argument("--public-key", type=Path, help="also check the folder's Ed25519 signature with this key (PEM)")
    ap.add_argument("--sign", type=Path, metavar="PRIVATE_KEY",
                    help="after a successful verification, sign checksums.json with this Ed25519 key (PEM)")
    ap.add_argument("--keygen", action="store_true",
                    help="write a new Ed25519 key pair: FOLDER is then the private key's path (public: .pub)")
    ap.add_argument("--rescore", metavar="N", default=None,
                    help="also recompute N of the stored scores (or 'all') with the model and the works on disk "
                         "(audit.rescore); the reused ones first")
    ap.add_argument("--target-source", default=None, help="with --rescore: where the model lies on this machine")
    ap.add_argument("--device", default="cpu", help="with --rescore: cpu, cuda or cuda:N (default cpu)")
    args = ap.parse_args(argv)
    if args.keygen:
        print(f"public key: {keygen(args.folder)}")
        return 0
    if not args.folder.is_dir():
        print(f"audit-verify: {args.folder} is not a folder", file=sys.stderr)
        return 2
    v = verify(args.folder, recompute=not args.no_recompute)
    if args.rescore is not None:
        from audit.rescore import rescore

        if str(args.rescore) != "all" and not str(args.rescore).isdigit():
            print("audit-verify: error: --rescore takes a number of scores or 'all'", file=sys.stderr)
            return 2
        problems, notes = rescore(args.folder, None if args.rescore == "all" else int(args.rescore),
                                  target_source=args.target_source, device=args.device)
        v.problems.extend(problems)
        v.notes.extend(notes)
    if args.public_key is not None:
        bad = check_signature(args.folder, args.public_key)
        if bad:
            v.problems.append(bad)
        else:
            v.notes.append(f"signature valid under {args.public_key}")
    if v.ok and args.sign is not None:
        print(f"signed: {sign(args.folder, args.sign)}")
    if v.ok:
        print(v.summary())
        print(f"checksums.json SHA-256: {v.checksums_sha256}")
        return 0
    print(f"NOT verified: {args.folder}")
    for p in v.problems:
        print(f"  - {p}")
    return 1


def console() -> None:  # pragma: no cover - the console script
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `audit-verify ... | head`: the reader stopped listening; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except ValueError as e:  # a folder refused (symbolic links), a bad argument: one line
        print(f"audit-verify: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        code = 2
    sys.exit(code)
