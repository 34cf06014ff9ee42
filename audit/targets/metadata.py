"""Training-metadata forensics: what a LoRA or checkpoint file says about its own training.

Trainers write metadata into the safetensors header: kohya's sd-scripts ``ss_*`` keys (resolution, T5 token
length and attention mask, guidance, timestep sampling, number of images, dataset folders with image counts,
caption tag frequencies, training start / end times, the base model's hashes, the output name, …) and the
Stability model-spec ``modelspec.*`` keys (architecture, title, author, date, resolution, trigger phrase). For an
expert this is evidence in its own right; for the audit it says how the model was trained, so that it can be
scored the same way (:func:`scoring_defaults`).

The file is untrusted input. The header is JSON of a declared length (the first 8 bytes, little-endian): the
length is checked against :data:`MAX_HEADER_BYTES` and the file size before anything is parsed, the JSON is
parsed by :func:`safetensors.safe_open` only after that, every value must be a string (as the format says), the
number of keys and the size of the JSON-in-string values (``ss_tag_frequency``, ``ss_dataset_dirs``,
``ss_datasets``) are bounded, and strings are kept as text (the report escapes them; nothing is ever rendered as
markup or executed). A file that fails any check is *refused*: the record says why, no scoring default comes from
it, and the audit goes on (the weights themselves are checked again when they are loaded).

No tensor is read.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "MetadataRefused", "TrainingMetadata", "read_training_metadata",
           "scoring_defaults", "metadata_notes", "check_base_hashes", "kohya_model_hash", "kohya_addnet_hash"]

#: the largest header accepted (safetensors itself stops at 100 MB; real LoRA headers with tag frequencies are < 2 MB)
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: most metadata keys accepted
MAX_KEYS = 4096
#: largest single value parsed as JSON (ss_tag_frequency of a big dataset is a few hundred kB)
MAX_JSON_VALUE = 4 * 1024 * 1024
#: longest string shown in the exhibit (the full value stays in the file, whose SHA-256 is recorded)
MAX_SHOWN = 300
#: most tags listed per dataset folder in the exhibit
MAX_TAGS = 25

# keys whose value is JSON inside the string
_JSON_KEYS = ("ss_tag_frequency", "ss_dataset_dirs", "ss_datasets", "ss_bucket_info", "ss_reg_dataset_dirs",
              "ss_network_args", "ss_optimizer_args")
# trainer settings shown in the exhibit, in this order, with what they mean
SETTINGS: dict[str, str] = {
    "ss_output_name": "output name",
    "ss_base_model_version": "base model version",
    "ss_sd_model_name": "base model file name",
    "ss_network_module": "network module",
    "ss_network_dim": "LoRA rank",
    "ss_network_alpha": "LoRA alpha",
    "ss_resolution": "training resolution",
    "ss_max_token_length": "CLIP token length",
    "ss_t5xxl_max_token_length": "T5 token length",
    "ss_apply_t5_attn_mask": "T5 attention mask",
    "ss_guidance_scale": "guidance scale",
    "ss_guidance_scale_flux": "guidance scale (Flux)",
    "ss_timestep_sampling": "timestep sampling",
    "ss_discrete_flow_shift": "flow shift",
    "ss_model_prediction_type": "prediction type",
    "ss_num_train_images": "training images",
    "ss_num_reg_images": "regularisation images",
    "ss_num_epochs": "epochs",
    "ss_max_train_steps": "training steps",
    "ss_learning_rate": "learning rate",
    "ss_caption_dropout_rate": "caption dropout",
    "ss_clip_skip": "CLIP skip",
    "ss_seed": "seed",
    "ss_mixed_precision": "precision",
    "modelspec.architecture": "architecture (modelspec)",
    "modelspec.implementation": "implementation (modelspec)",
    "modelspec.title": "title (modelspec)",
    "modelspec.author": "author (modelspec)",
    "modelspec.date": "date (modelspec)",
    "modelspec.resolution": "resolution (modelspec)",
    "modelspec.trigger_phrase": "trigger phrase (modelspec)",
    "modelspec.prediction_type": "prediction type (modelspec)",
    "modelspec.description": "description (modelspec)",
}
_TIME_KEYS = {"ss_training_started_at": "training started", "ss_training_finished_at": "training finished"}


class MetadataRefused(ValueError):
    """The file's header is malformed or hostile; the message says which check failed."""


@dataclass
class TrainingMetadata:
    """The metadata of one file, parsed and bounded; ``status`` is ``read``, ``none`` (no training keys) or
    ``refused`` (with ``reason``)."""

    file: str  # the file's name (the path is in the target's file list with its SHA-256)
    role: str  # "lora", "single file", "weights in the model folder"
    status: str
    reason: str = ""
    raw: dict[str, str] = field(default_factory=dict)  # every key, each value a string (bounded)
    parsed: dict[str, Any] = field(default_factory=dict)  # JSON-in-string values, parsed (bounded)
    header_bytes: int = 0
    tensor_data_sha256: str | None = None  # sha256 of the bytes after the header (kohya's sshs_model_hash)
    legacy_hash: str | None = None  # kohya's sshs_legacy_hash of this file

    @property
    def training_keys(self) -> dict[str, str]:
        return {k: v for k, v in self.raw.items() if k.startswith(("ss_", "sshs_", "modelspec."))}

    def to_dict(self) -> dict[str, Any]:
        """For run.json and the report: status, the trainer's settings, dataset folders, tags, dates, hashes."""
        out: dict[str, Any] = {"file": self.file, "role": self.role, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.status != "read":
            return out
        out["n_keys"] = len(self.raw)
        out["header_bytes"] = self.header_bytes
        out["settings"] = {k: _short(self.raw[k]) for k in SETTINGS if k in self.raw}
        out["dates"] = {k: _date(self.raw[k]) for k in _TIME_KEYS if k in self.raw}
        out["datasets"] = _datasets(self.parsed)
        out["tags"] = _tags(self.parsed)
        own = {}
        for key, mine in (("sshs_model_hash", self.tensor_data_sha256), ("sshs_legacy_hash", self.legacy_hash)):
            if key in self.raw and mine is not None:
                own[key] = {"recorded": _short(self.raw[key]), "computed": mine,
                            "matches": self.raw[key].strip().lower() == mine}
        out["file_hashes"] = own
        base = {k: _short(self.raw[k]) for k in ("ss_sd_model_hash", "ss_new_sd_model_hash", "ss_sd_model_name",
                                                   "modelspec.hash_sha256") if k in self.raw}
        out["base_recorded"] = base
        out["other_keys"] = sorted(k for k in self.training_keys if k not in SETTINGS and k not in _TIME_KEYS
                                   and k not in _JSON_KEYS)[:200]
        out["unparsed"] = sorted(k for k in _JSON_KEYS if k in self.raw and k not in self.parsed)
        return out


def _short(value: Any, n: int = MAX_SHOWN) -> str:
    s = str(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def _date(value: str) -> str:
    try:
        return datetime.fromtimestamp(float(value), timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return _short(value, 60)


def _datasets(parsed: dict[str, Any]) -> list[dict[str, Any]]:
    """ss_dataset_dirs ({folder: {n_repeats, img_count}}) as rows."""
    dirs = parsed.get("ss_dataset_dirs")
    rows = []
    if isinstance(dirs, dict):
        for name, d in list(dirs.items())[:100]:
            d = d if isinstance(d, dict) else {}
            rows.append({"folder": _short(name, 120), "images": _int_or_none(d.get("img_count")),
                         "repeats": _int_or_none(d.get("n_repeats"))})
    return rows


def _tags(parsed: dict[str, Any]) -> list[dict[str, Any]]:
    """ss_tag_frequency ({folder: {tag: count}}): the most frequent caption tags per folder."""
    freq = parsed.get("ss_tag_frequency")
    out = []
    if isinstance(freq, dict):
        for name, tags in list(freq.items())[:50]:
            if not isinstance(tags, dict):
                continue
            counted = [(str(t), _int_or_none(c) or 0) for t, c in tags.items()]
            counted.sort(key=lambda tc: (-tc[1], tc[0]))
            out.append({"folder": _short(name, 120), "n_tags": len(counted),
                        "top": [{"tag": _short(t.strip(), 80), "count": c} for t, c in counted[:MAX_TAGS]]})
    return out


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _check_header(path: Path) -> int:
    """The declared header length, after checking it against the file size and :data:`MAX_HEADER_BYTES`."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise MetadataRefused("not a safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES:
        raise MetadataRefused(f"header of {n} bytes declared, more than the {MAX_HEADER_BYTES} accepted")
    if n < 2 or 8 + n > size:
        raise MetadataRefused(f"header length {n} does not fit the file's {size} bytes")
    with open(path, "rb") as f:
        f.seek(8)
        first = f.read(1)
    if first != b"{":
        raise MetadataRefused("header is not a JSON object")
    return n


def _hash_after(path: Path, offset: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def kohya_model_hash(path: str | Path) -> str:
    """A1111's / kohya's legacy model hash (``ss_sd_model_hash``, ``sshs_legacy_hash``): the first 8 hex digits of
    the SHA-256 of the 64 KiB at offset 1 MiB of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        h.update(f.read(0x10000))
    return h.hexdigest()[:8]


def kohya_addnet_hash(path: str | Path) -> str:
    """kohya's ``sshs_model_hash`` of a safetensors file: SHA-256 of everything after the header (the tensors),
    so it does not change when only the metadata is edited."""
    return _hash_after(Path(path), 8 + _check_header(Path(path)))


def read_training_metadata(path: str | Path, role: str = "lora") -> TrainingMetadata:
    """Read ``path``'s safetensors metadata without loading tensors; never raises for a bad file (``refused``)."""
    p = Path(path)
    rec = TrainingMetadata(file=p.name, role=role, status="none")
    if p.suffix != ".safetensors":
        rec.status, rec.reason = "refused", "not a .safetensors file (pickle files carry no readable metadata)"
        return rec
    try:
        n = _check_header(p)
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata()
        except Exception as e:  # the library's own header checks (bad JSON, offsets, dtypes)
            raise MetadataRefused(f"safetensors refused the header: {_short(str(e).splitlines()[0] if str(e) else type(e).__name__, 160)}") from e
        meta = meta or {}
        if not isinstance(meta, dict):
            raise MetadataRefused("__metadata__ is not a mapping")
        if len(meta) > MAX_KEYS:
            raise MetadataRefused(f"{len(meta)} metadata keys, more than the {MAX_KEYS} accepted")
        for k, v in meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise MetadataRefused("a metadata value is not a string (the format allows only strings)")
        rec.header_bytes = n
        rec.raw = dict(meta)
        for key in _JSON_KEYS:
            v = meta.get(key)
            if v is None or len(v) > MAX_JSON_VALUE:
                continue
            try:
                rec.parsed[key] = json.loads(v)
            except (ValueError, RecursionError):
                pass  # kept as text; listed as unparsed
        rec.status = "read" if rec.training_keys else "none"
        if rec.status == "none":
            rec.reason = "no training metadata (no ss_* or modelspec.* keys)"
        elif "sshs_model_hash" in meta or "sshs_legacy_hash" in meta:  # the trainer's hashes of this file: recompute
            rec.tensor_data_sha256 = _hash_after(p, 8 + n)
            rec.legacy_hash = kohya_model_hash(p)
    except MetadataRefused as e:
        rec.status, rec.reason, rec.raw, rec.parsed = "refused", str(e), {}, {}
    except OSError as e:
        rec.status, rec.reason = "refused", f"could not read the file: {type(e).__name__}"
    return rec


# ---------------------------------------------------------------------------------------------- scoring defaults
_INT = re.compile(r"\d{1,5}")


def _resolution(value: str) -> tuple[int, str] | None:
    """``(512, 512)``, ``[1024, 1024]``, ``1024,768``, ``1024x1024``, ``512`` → the square side to audit at."""
    nums = [int(x) for x in _INT.findall(value)][:2]
    if not nums or not all(8 <= v <= 16384 for v in nums):
        return None
    side = max(nums)
    note = "" if len(set(nums)) == 1 else f" (non-square {nums[0]}×{nums[1]}: audited at the longer side)"
    return side, note


def _bool(value: str) -> bool | None:
    v = value.strip().lower()
    return True if v in ("true", "1", "yes") else False if v in ("false", "0", "no") else None


def _float(value: str) -> float | None:
    try:
        f = float(value)
    except ValueError:
        return None
    return f if 0.0 <= f <= 100.0 else None


def scoring_defaults(records: list[TrainingMetadata]) -> dict[str, tuple[Any, str]]:
    """Scoring settings the training metadata implies: ``{option: (value, reason)}`` for ``resolution``,
    ``max_sequence_length``, ``t5_attention_mask``, ``guidance``. Only files whose metadata was read count; when two
    files disagree the first (the first LoRA) wins and the reason says so."""
    out: dict[str, tuple[Any, str]] = {}

    def put(option: str, value: Any, key: str, raw: str, rec: TrainingMetadata, note: str = "") -> None:
        why = f"{rec.file}: {key}={_short(raw, 40)}{note}"
        if option in out:
            if out[option][0] != value:
                out[option] = (out[option][0], out[option][1] + f"; {rec.file} says {key}={_short(raw, 40)}, not used")
            return
        out[option] = (value, why)

    for rec in records:
        if rec.status != "read":
            continue
        raw = rec.raw
        for key in ("ss_resolution", "modelspec.resolution"):
            if key in raw and (r := _resolution(raw[key])) is not None:
                put("resolution", r[0], key, raw[key], rec, r[1])
                break
        if "ss_t5xxl_max_token_length" in raw:
            v = _int_or_none(raw["ss_t5xxl_max_token_length"])
            if v is not None and 1 <= v <= 4096:
                put("max_sequence_length", v, "ss_t5xxl_max_token_length", raw["ss_t5xxl_max_token_length"], rec)
        if "ss_apply_t5_attn_mask" in raw and (b := _bool(raw["ss_apply_t5_attn_mask"])) is not None:
            put("t5_attention_mask", b, "ss_apply_t5_attn_mask", raw["ss_apply_t5_attn_mask"], rec)
        for key in ("ss_guidance_scale_flux", "ss_guidance_scale"):
            if key in raw and (g := _float(raw[key])) is not None:
                put("guidance", g, key, raw[key], rec)
                break
    return out


def metadata_notes(records: list[TrainingMetadata]) -> list[str]:
    """Training settings the metadata names that the audit cannot reproduce (said in plan.json and the report)."""
    notes = []
    for rec in records:
        if rec.status != "read":
            continue
        v = rec.raw.get("ss_max_token_length", "").strip()
        if v and v.lower() not in ("none", "75", "77"):
            notes.append(f"{rec.file}: ss_max_token_length={_short(v, 20)} (kohya's chunked CLIP prompts of up to "
                         f"{_short(v, 20)} tokens) is not reproduced: CLIP prompts are encoded in one window")
        if rec.raw.get("ss_caption_prefix") or rec.raw.get("ss_caption_suffix"):
            notes.append(f"{rec.file}: a caption prefix / suffix was used in training; set target.caption_template "
                         "to reproduce it")
    return notes


def check_base_hashes(records: list[TrainingMetadata], base: str | Path | None) -> list[dict[str, Any]]:
    """Compare each file's recorded base-model hashes with the base the user gave (``target.base`` or the source
    the LoRA is applied to). kohya hashes the base *checkpoint file*: ``ss_sd_model_hash`` = the legacy 8-digit
    hash, ``ss_new_sd_model_hash`` = the file's SHA-256. Computable when the base is a single file; for a diffusers
    folder the check says it cannot be made (kohya records no hash of a folder)."""
    out = []
    for rec in records:
        if rec.status != "read":
            continue
        old, new = rec.raw.get("ss_sd_model_hash"), rec.raw.get("ss_new_sd_model_hash")
        if not old and not new:
            continue
        row: dict[str, Any] = {"file": rec.file, "recorded_legacy": _short(old or "", 80) or None,
                               "recorded_sha256": _short(new or "", 80) or None, "base": str(base) if base else None}
        p = Path(str(base)).expanduser() if base else None
        if p is None:
            row.update(status="not checked", reason="no base model was given")
        elif p.is_file():
            legacy, full = kohya_model_hash(p), _hash_after(p, 0)
            row.update(computed_legacy=legacy, computed_sha256=full)
            checks = []
            if old:
                checks.append(old.strip().lower() == legacy)
            if new:
                checks.append(new.strip().lower() == full)
            row["status"] = "matches" if all(checks) else "differs"
            row["reason"] = ("the given base file has the recorded hash" if all(checks) else
                             "the given base file is NOT the file the trainer recorded")
        else:
            row.update(status="not computable",
                       reason="the base was given as a model folder or hub id; the trainer hashed a single checkpoint "
                              "file, so only that file's hash can be compared")
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- report exhibit
_OPTION_LABELS = {"resolution": "resolution (px)", "max_sequence_length": "prompt length (tokens)",
                  "t5_attention_mask": "T5 attention mask", "guidance": "distilled guidance",
                  "caption_template": "caption template"}


def exhibit_context(target_info: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``audit/report/templates/_training_metadata.html.j2`` shows, from run.json's ``target`` record: how the
    works and prompts were conditioned (each decision with its source and reason) and what the model files say
    about their training. Every value is a plain string or number; the template is autoescaped. None when there
    is nothing to show (an unconditional model without metadata)."""
    info = target_info or {}
    cond = info.get("conditioning") or {}
    meta = info.get("training_metadata") or {}
    files = meta.get("files") or []
    if not files and not info.get("conditional"):
        return None
    rows = [{"option": _OPTION_LABELS.get(k, k), "key": k,
             "value": "—" if c.get("value") is None else _short(c.get("value"), 120),
             "source": str(c.get("source", "")), "reason": _short(c.get("reason", ""), 400)}
            for k, c in cond.items()]
    out_files = []
    for f in files:
        if not isinstance(f, dict):
            continue
        settings = [{"label": SETTINGS.get(k, k), "key": k, "value": _short(v)}
                    for k, v in (f.get("settings") or {}).items()]
        dates = [{"label": _TIME_KEYS.get(k, k), "value": _short(v, 60)} for k, v in (f.get("dates") or {}).items()]
        hashes = [{"key": k, "recorded": _short(h.get("recorded", ""), 80), "computed": _short(h.get("computed", ""), 80),
                   "matches": "yes" if h.get("matches") else "NO"} for k, h in (f.get("file_hashes") or {}).items()]
        out_files.append({
            "file": _short(f.get("file", ""), 120), "role": _short(f.get("role", ""), 40),
            "status": _short(f.get("status", ""), 20), "reason": _short(f.get("reason", ""), 300),
            "settings": settings, "dates": dates, "datasets": f.get("datasets") or [], "tags": f.get("tags") or [],
            "hashes": hashes, "base_recorded": [{"key": k, "value": _short(v, 80)}
                                                 for k, v in (f.get("base_recorded") or {}).items()],
            "other_keys": ", ".join(_short(k, 60) for k in (f.get("other_keys") or [])[:60]),
            "unparsed": ", ".join(f.get("unparsed") or []),
        })
    base = [{"file": _short(b.get("file", ""), 120), "status": _short(b.get("status", ""), 30),
             "reason": _short(b.get("reason", ""), 300), "base": _short(b.get("base") or "—", 200),
             "recorded": _short(b.get("recorded_sha256") or b.get("recorded_legacy") or "—", 80)}
            for b in (meta.get("base_check") or []) if isinstance(b, dict)]
    return {"conditioning": rows, "files": out_files, "base_check": base, "note": _short(meta.get("note", ""), 200),
            "not_reproduced": [_short(n, 300) for n in (meta.get("notes") or [])[:20]]}
