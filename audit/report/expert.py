"""The formal parts of an expert report: who gives it, for whom, on what question, from which materials, under which
assumptions; the declaration in the wording of the chosen jurisdiction; and the signature block.

Sources, later ones overriding earlier ones: the legacy ``report.expert`` block (name, qualifications,
instructing_party), the ``expert`` config group (``configs/expert/``), then a YAML file named by ``expert.file``
(safe loader, plain values only, unknown keys refused in one line, every size bounded). The merged record is written
into the results folder as the exhibit ``expert.yaml`` and quoted by SHA-256; a report regenerated from a folder
reads that exhibit only, never a path named inside the folder.

The declaration quotes only what the records show. In particular it never asks the expert to attest that a hash
shows a time order: a SHA-256 identifies a plan, it does not date it. What the records say about the order of plan
and scores (the procedure record, :mod:`audit.report.procedure`) is stated as *what the records show*, with the
clocks they come from.

The materials examined are generated from the run's own records (the manifest named in ``config.yaml``, the works'
inventory ``evidence_inventory.csv``, the model files and their SHA-256 in ``run.json``, the case file exhibit, the
analysis records), followed by anything else the expert lists in the file.

Every sentence is a catalogue message (:mod:`audit.report.i18n`), so the block is written in the report's language.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from audit.report.i18n import _, check_jurisdiction, format_integer
from audit.errors import ConfigRefused

__all__ = ["EXPERT_EXHIBIT", "EXPERT_KEYS", "ExpertFileRefused", "load_expert", "materials_examined", "declaration",
           "formal_elements", "signature_block", "public_key_fingerprint", "expert_block"]

EXPERT_EXHIBIT = "expert.yaml"
_MAX_FILE_BYTES = 256 * 1024

#: key → (kind, bound): "text" (characters), "list" (items, characters per item), "date", "choice"
EXPERT_KEYS: dict[str, tuple[str, Any]] = {
    "name": ("text", 200),
    "qualifications": ("text", 4000),
    "affiliation": ("text", 500),
    "instructing_party": ("text", 500),
    "appointment": ("choice", ("party", "court")),  # instructed by a party / appointed by the court
    "question": ("text", 4000),                     # the question put to the expert
    "assumptions": ("list", (50, 2000)),
    "materials": ("list", (200, 1000)),             # materials examined besides those the records list
    "publications": ("list", (200, 1000)),          # us_federal: publications of the previous 10 years
    "prior_testimony": ("list", (200, 1000)),       # us_federal: cases of the previous 4 years
    "compensation": ("text", 1000),                 # us_federal: compensation for the study and testimony
    "public_key": ("text", 1000),                   # path to the PEM public key of audit-verify --keygen
    "public_key_fingerprint": ("text", 100),        # or its fingerprint (SHA-256 of the key), as recorded
    "place": ("text", 200),                         # where the declaration is signed
    "date": ("date", None),                         # when (YYYY-MM-DD); blank lines are printed otherwise
}


class ExpertFileRefused(ConfigRefused):
    """An expert file that cannot be used (one line, exit status 2 in the commands)."""


def _refuse(msg: str) -> ExpertFileRefused:
    return ExpertFileRefused(msg)


def _text(where: str, value: Any, bound: int) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise _refuse(f"expert file: {where} must be text, got {type(value).__name__}")
    text = value.isoformat() if isinstance(value, date) else str(value).strip()
    if len(text) > bound:
        raise _refuse(f"expert file: {where} is longer than {bound} characters")
    if "\x00" in text:
        raise _refuse(f"expert file: {where} holds a NUL character")
    return text


def _check(key: str, value: Any) -> Any:
    kind, bound = EXPERT_KEYS[key]
    if kind == "text":
        return _text(key, value, bound)
    if kind == "choice":
        if value is None:
            return None
        if value not in bound:
            raise _refuse(f"expert file: {key} must be one of {', '.join(bound)}, got {value!r}")
        return value
    if kind == "date":
        if value is None or value == "":
            return None
        text = value.isoformat() if isinstance(value, date) else str(value).strip()
        try:
            date.fromisoformat(text)
        except ValueError:
            raise _refuse(f"expert file: date must be YYYY-MM-DD, got {text!r}") from None
        return text
    n_max, chars = bound
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _refuse(f"expert file: {key} must be a list of text, got {type(value).__name__}")
    if len(value) > n_max:
        raise _refuse(f"expert file: {key} has more than {n_max} entries")
    return [t for i, x in enumerate(value) if (t := _text(f"{key}[{i}]", x, chars)) is not None]


def _empty() -> dict[str, Any]:
    return {k: ([] if kind == "list" else None) for k, (kind, _b) in EXPERT_KEYS.items()}


def _merge(into: dict[str, Any], values: Any, origin: str) -> None:
    if values is None:
        return
    if not isinstance(values, dict):
        raise _refuse(f"{origin}: an expert record must be a mapping, got {type(values).__name__}")
    for k, v in values.items():
        if k == "file":
            continue
        if k not in EXPERT_KEYS:
            raise _refuse(f"{origin}: unknown expert key {k!r} (expected one of {', '.join(EXPERT_KEYS)}, file)")
        checked = _check(k, v)
        if checked not in (None, []):
            into[k] = checked


def _read_yaml(path: Path, origin: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"expert.file not found: {path}")
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise _refuse(f"{origin}: larger than {_MAX_FILE_BYTES // 1024} KiB; an expert file holds a few fields")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(f"{origin}: not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _refuse(f"{origin}: not valid YAML ({getattr(e, 'problem', None) or type(e).__name__})") from None


def public_key_fingerprint(path: str | Path) -> str:
    """``SHA256:<hex>`` of a PEM public key: the SHA-256 of its DER SubjectPublicKeyInfo (the bytes between the PEM
    lines), so the same key always gives the same fingerprint, whatever its line breaks."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"expert public_key not found: {p}")
    if p.stat().st_size > 16 * 1024:
        raise _refuse(f"expert public_key {p.name}: larger than 16 KiB, not a PEM public key")
    lines = p.read_text(encoding="ascii", errors="replace").strip().splitlines()
    if not lines or lines[0].strip() != "-----BEGIN PUBLIC KEY-----" or lines[-1].strip() != "-----END PUBLIC KEY-----":
        raise _refuse(f"expert public_key {p.name}: not a PEM public key (audit-verify --keygen writes <key>.pub)")
    try:
        der = base64.b64decode("".join(x.strip() for x in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(f"expert public_key {p.name}: the PEM body is not base64") from None
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def load_expert(cfg: dict[str, Any], folder: str | Path | None = None, regenerated: bool = False) -> dict[str, Any]:
    """The expert record of a run: every key of :data:`EXPERT_KEYS` plus ``stated`` (a name was given),
    ``origin``, ``exhibit`` ({name, sha256} or None) and ``jurisdiction``.

    ``cfg``: the run's resolved configuration (plain values). A regenerated report reads the folder's exhibit
    ``expert.yaml`` only; a run merges the sources and writes them to ``folder/expert.yaml``."""
    rec = _empty()
    cfg = cfg if isinstance(cfg, dict) else {}
    rep = cfg.get("report") if isinstance(cfg.get("report"), dict) else {}
    exhibit_path = Path(folder) / EXPERT_EXHIBIT if folder is not None else None
    origin = "not stated"
    data = None
    if regenerated:  # a report made again from a folder: its exhibit is the record, nothing named in the folder
        if exhibit_path is not None and exhibit_path.is_file() and not exhibit_path.is_symlink():
            data = exhibit_path.read_bytes()
            _merge(rec, _read_yaml(exhibit_path, EXPERT_EXHIBIT) or {}, EXPERT_EXHIBIT)
            origin = f"exhibit {EXPERT_EXHIBIT}"
    else:
        legacy = rep.get("expert")
        if isinstance(legacy, dict):
            _merge(rec, {k: v for k, v in legacy.items() if k in ("name", "qualifications", "instructing_party")},
                   "report.expert")
            origin = "report.expert"
        group = cfg.get("expert")
        if isinstance(group, dict):
            _merge(rec, group, "expert config")
            if any(rec[k] for k in EXPERT_KEYS):
                origin = "expert config group"
            file = group.get("file")
            if file:
                p = Path(str(file)).expanduser()
                _merge(rec, _read_yaml(p, f"expert.file {p.name}") or {}, f"expert.file {p.name}")
                origin = f"expert file {p.name}"
        if rec["public_key"] and not rec["public_key_fingerprint"]:
            rec["public_key_fingerprint"] = public_key_fingerprint(rec["public_key"])
        if exhibit_path is not None and any(rec[k] for k in EXPERT_KEYS):
            data = yaml.safe_dump({k: v for k, v in rec.items() if v not in (None, [])}, sort_keys=False,
                                  allow_unicode=True).encode("utf-8")
            exhibit_path.parent.mkdir(parents=True, exist_ok=True)
            exhibit_path.write_bytes(data)
        elif exhibit_path is not None and exhibit_path.is_file() and not exhibit_path.is_symlink():
            exhibit_path.unlink()  # an exhibit this run's configuration does not state must not stay beside it
    rec["stated"] = rec["name"] is not None
    rec["origin"] = origin
    rec["exhibit"] = {"name": EXPERT_EXHIBIT, "sha256": hashlib.sha256(data).hexdigest()} if data is not None else None
    rec["jurisdiction"] = check_jurisdiction(rep.get("jurisdiction"))
    return rec


# ---------------------------------------------------------------------------------------------- materials
def _cfg_manifest(cfg: dict[str, Any]) -> str | None:
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    m = data.get("manifest") or data.get("folder") or data.get("root")
    return Path(str(m)).name if m else None


def materials_examined(records: dict[str, Any], metadata: dict[str, Any], cfg: dict[str, Any],
                       role_counts: dict[str, int] | None, expert: dict[str, Any]) -> list[dict[str, Any]]:
    """What the opinion rests on, each with its identifying hash where the records hold one:
    ``[{"what": str, "detail": str, "sha256": str | None, "stated": bool}]`` (``stated``: listed by the expert,
    not derived from the records)."""
    out: list[dict[str, Any]] = []
    exhibits = {x["name"]: x for x in records.get("exhibits") or []}
    committed = ((metadata.get("analysis_plan") or {}).get("committed") or {})
    manifest = _cfg_manifest(cfg if isinstance(cfg, dict) else {})
    if manifest or committed.get("manifest_sha256"):
        out.append({"what": _("The manifest of the works"),
                    "detail": (manifest or "") + (_(" (committed with audit-plan)") if committed else ""),
                    "sha256": committed.get("manifest_sha256"), "stated": False})
    inv = metadata.get("inventory_exhibit") or exhibits.get("evidence_inventory.csv")
    counts = role_counts or {}
    by_role = _("; ").join(_("%(n)s %(role)s", n=format_integer(n), role=_(role)) for role, n in counts.items() if n)
    if inv or by_role:
        out.append({"what": _("The works: image files, each identified by its SHA-256 in the evidence inventory"),
                    "detail": by_role, "sha256": (inv or {}).get("sha256"), "stated": False})
    target = metadata.get("target") or {}
    files = target.get("files") or {}
    if target.get("fingerprint") or files:
        out.append({"what": _("The model audited (fingerprint over its files)"),
                    "detail": str(target.get("source") or ""), "sha256": target.get("fingerprint"), "stated": False})
        for name, sha in sorted(files.items()):
            out.append({"what": _("Model file"), "detail": str(name), "sha256": str(sha), "stated": False})
    for lora in target.get("lora") or []:
        if isinstance(lora, dict):
            out.append({"what": _("LoRA adapter"), "detail": str(lora.get("source") or lora.get("path") or ""),
                        "sha256": lora.get("sha256") or lora.get("fingerprint"), "stated": False})
    for a in metadata.get("attacks") or []:
        ref = a.get("reference") if isinstance(a, dict) else None
        if isinstance(ref, dict) and ref.get("fingerprint"):
            out.append({"what": _("Reference model"), "detail": str(ref.get("source") or a.get("name") or ""),
                        "sha256": ref.get("fingerprint"), "stated": False})
    case = (records.get("case") or {}).get("exhibit") or exhibits.get("case.yaml")
    if case:
        out.append({"what": _("The case file (who chose the works, when, the model's data cutoff)"),
                    "detail": case["name"], "sha256": case.get("sha256"), "stated": False})
    for name, what in (("committed_plan.json", _("The analysis plan committed beforehand")),
                       ("plan.json", _("The analysis plan as declared before scoring")),
                       ("scores.parquet", _("The membership scores")),
                       ("run.json", _("The run record")),
                       ("analysis.json", _("The analysis"))):
        if name in exhibits:
            out.append({"what": what, "detail": name, "sha256": exhibits[name]["sha256"], "stated": False})
    for m in expert.get("materials") or []:
        out.append({"what": _("Listed by the expert"), "detail": m, "sha256": None, "stated": True})
    return out


# ---------------------------------------------------------------------------------------------- declaration
def order_statement(proc: dict[str, Any]) -> str:
    """What the records show about the order of plan and scores, with the clocks they come from (never that a hash
    shows an order)."""
    if proc.get("order_ok") and proc.get("committed"):
        return _("The procedure record in this report shows the analysis plan committed with audit-plan before any "
                 "score used in it was computed (committed %(when)s, by the clock of the machine that committed it; "
                 "the scores' times by the clocks of the machines that computed them). The plan's SHA-256 identifies "
                 "the plan; it does not by itself show when the plan was fixed. I have not selected among analyses "
                 "after seeing their results.", when=proc.get("committed_utc") or _("time not recorded"))
    if proc.get("order_ok"):
        return _("The run's own records show the analysis plan declared inside the run (%(when)s) before any of its "
                 "scores was computed, by the clock of the machine that ran it; the plan was not committed beforehand. "
                 "The plan's SHA-256 identifies the plan; it does not by itself show when the plan was fixed. I have "
                 "not selected among analyses after seeing their results.",
                 when=proc.get("declared_utc") or _("time not recorded"))
    return _("The records do not show that the analysis plan preceded the scores (see the procedure record). Before I "
             "fixed this plan I had / had not (strike one) seen results of earlier runs that computed the reused "
             "scores, and I have not selected among analyses after seeing their results.")


def declaration(jurisdiction: str, proc: dict[str, Any], expert: dict[str, Any]) -> list[str]:
    """The statements of the declaration, in the wording of ``jurisdiction``, for the expert to confirm, amend or
    strike before signing."""
    jurisdiction = check_jurisdiction(jurisdiction)
    common = [
        order_statement(proc),
        _("I have set out every validity check the method ran, including those that failed or could not be run, and "
          "the limitations that apply."),
        _("The facts stated in this report are within my own knowledge or are identified as coming from the "
          "materials listed under \"Materials examined\", each identified by its SHA-256 where the records hold one; "
          "the opinions are my true and complete professional opinions."),
        _("I have drawn attention to every matter known to me that might adversely affect the validity of my "
          "opinion."),
    ]
    if jurisdiction == "us_federal":
        return [*common,
                _("This report contains the statements required of a retained expert's written report by Federal Rule "
                  "of Civil Procedure 26(a)(2)(B), each listed above with where it is found."),
                _("I declare under penalty of perjury under the laws of the United States of America that the "
                  "foregoing is true and correct (28 U.S.C. § 1746).")]
    if jurisdiction == "prc_civil":
        return [_("I undertake that I carried out this analysis and give this opinion objectively, impartially and "
                  "honestly; that I will appear in court to testify and answer questions if the court so requires; "
                  "and that I know I bear legal responsibility for a false opinion."),
                *common]
    return [_("I understand that my duty in giving this evidence is to the court, and that this duty overrides any "
              "obligation to the party instructing me."), *common]


def _or_missing(value: Any) -> tuple[str, bool]:
    if value in (None, [], ""):
        return _("not stated in the expert file"), False
    return ("; ".join(value) if isinstance(value, list) else str(value)), True


def formal_elements(jurisdiction: str, expert: dict[str, Any]) -> list[dict[str, Any]]:
    """The elements the jurisdiction asks a report to contain, each with where it is in this report or what the
    expert file says: ``[{"element", "where", "anchor", "present"}]``."""
    jurisdiction = check_jurisdiction(jurisdiction)
    if jurisdiction == "us_federal":
        quals = [x for x in (expert.get("qualifications"),) if x]
        pubs, has_pubs = _or_missing(expert.get("publications"))
        testimony, has_t = _or_missing(expert.get("prior_testimony"))
        comp, has_c = _or_missing(expert.get("compensation"))
        q, has_q = _or_missing(quals)
        return [
            {"element": _("(i) a complete statement of all opinions and the basis and reasons for them"),
             "where": _("Summary, Results, Validity gates, Alternative explanations"), "anchor": "summary",
             "present": True},
            {"element": _("(ii) the facts or data considered in forming them"),
             "where": _("Materials examined (below) and the exhibits of the appendix"), "anchor": "materials",
             "present": True},
            {"element": _("(iii) any exhibits that will be used to summarize or support them"),
             "where": _("Appendix: exhibits and reproducibility"), "anchor": "appendix", "present": True},
            {"element": _("(iv) the witness's qualifications, including a list of all publications authored in the "
                          "previous 10 years"), "where": q + " — " + pubs, "anchor": None,
             "present": has_q and has_pubs},
            {"element": _("(v) a list of all other cases in which, during the previous 4 years, the witness "
                          "testified as an expert at trial or by deposition"), "where": testimony, "anchor": None,
             "present": has_t},
            {"element": _("(vi) a statement of the compensation to be paid for the study and testimony in the case"),
             "where": comp, "anchor": None, "present": has_c},
        ]
    if jurisdiction == "prc_civil":
        party, has_party = _or_missing(expert.get("instructing_party"))
        question, has_q = _or_missing(expert.get("question"))
        quals, has_quals = _or_missing(expert.get("qualifications"))
        return [
            {"element": _("the court or party that gave the instruction"), "where": party, "anchor": None,
             "present": has_party},
            {"element": _("the matter and requirements of the instruction"), "where": question, "anchor": None,
             "present": has_q},
            {"element": _("the materials examined"), "where": _("Materials examined (below)"), "anchor": "materials",
             "present": True},
            {"element": _("the principles and methods relied on"), "where": _("Methods"), "anchor": "methods",
             "present": True},
            {"element": _("an account of the process"), "where": _("Question, plan and procedure record"),
             "anchor": "plan", "present": True},
            {"element": _("the opinion"), "where": _("Summary"), "anchor": "summary", "present": True},
            {"element": _("the undertaking"), "where": _("Declaration (below)"), "anchor": "declaration",
             "present": True},
            {"element": _("the signature or seal of the expert, with proof of qualification"), "where": quals,
             "anchor": None, "present": has_quals and bool(expert.get("name"))},
        ]
    return []


def jurisdiction_note(jurisdiction: str) -> str | None:
    """The rule the declaration follows, named (not quoted) so that counsel can check it against the text in force."""
    jurisdiction = check_jurisdiction(jurisdiction)
    if jurisdiction == "us_federal":
        return _("Arranged for a United States federal court: the elements of a retained expert's written report "
                 "under Federal Rule of Civil Procedure 26(a)(2)(B), and an unsworn declaration under 28 U.S.C. § 1746. "
                 "Counsel should confirm the rules and local rules in force; the tool checks none of them.")
    if jurisdiction == "prc_civil":
        return _("Arranged for a civil court of the People's Republic of China: the contents of an expert opinion "
                 "listed in Article 36 and the undertaking described in Article 33 of the Supreme People's Court's "
                 "Several Provisions on Evidence in Civil Procedure (as revised in 2019). Counsel should confirm the "
                 "provisions in force and whether the expert is an appraiser appointed by the court or a person with "
                 "specialised knowledge called by a party; the tool checks none of them.")
    return None


def signature_block(expert: dict[str, Any], folder: str | Path | None, regenerated: bool) -> dict[str, Any]:
    """What the signature block says: the key the seal is to be signed with (by its fingerprint) and whether the
    folder already holds a signature (which, for a regenerated report, covers the previous seal only)."""
    sig = Path(folder) / "checksums.json.sig" if folder is not None else None
    return {"fingerprint": expert.get("public_key_fingerprint"),
            "folder_signed": bool(sig is not None and sig.is_file() and not sig.is_symlink()),
            "regenerated": regenerated, "place": expert.get("place"), "date": expert.get("date")}


def expert_block(cfg: dict[str, Any], records: dict[str, Any], metadata: dict[str, Any],
                 role_counts: dict[str, int] | None, folder: str | Path | None) -> dict[str, Any]:
    """Everything ``_expert.html.j2`` prints (call it inside :func:`audit.report.i18n.use` for the language)."""
    regenerated = bool(metadata.get("regenerated_with"))
    expert = records.get("expert_record") or load_expert(cfg, folder, regenerated=regenerated)
    j = expert["jurisdiction"]
    return {"expert": expert, "jurisdiction": j, "jurisdiction_note": jurisdiction_note(j),
            "elements": formal_elements(j, expert),
            "materials": materials_examined(records, metadata, cfg, role_counts, expert),
            "declaration": declaration(j, records.get("procedure") or {}, expert),
            "signature": signature_block(expert, folder, regenerated),
            "unsigned": not expert["stated"]}
