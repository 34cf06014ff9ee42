"""The config's plain values, declared once: type, allowed values and the one-line message of every key
(issue 26), and :func:`check`, which validates a composed config against them.

Each section of ``configs/audit.yaml`` whose plain values the run reads is a dataclass here —
:class:`TopLevelSchema` (``name``, ``seed``, ``score_store``, ``plan_commitment``, ``calibrate_lora``),
:class:`RuntimeSchema` (``runtime.*``: device, precision, batch, throughput and scale-out keys),
:class:`DataSchema` (``data.*``) and :class:`ReportSchema` (``report.*``: formats, file names, language,
jurisdiction). A field's annotation is its type, its default the value a missing key means, and its
:class:`Rule` the allowed values and the words of the message: ``<key> must be <allowed>, got <value>``. The
analysis plan (``stats.*``) is declared by :class:`audit.stats.AnalysisPlan` itself (it is also rebuilt from
stored values, so its ranges stay in its ``__post_init__``): its keys, and a rule for each from the field's
annotation, are read from that dataclass, and :func:`check` builds the plan so its ranges are checked at
composition too. The reconstruction group is checked by its own dataclasses
(:meth:`audit.reconstruction.ReconstructionConfig.from_any`), called from here. ``runtime`` and ``data`` are
closed: an unknown key (``runtime.batchsize``) is refused naming the closest known one, as are unknown
``stats`` keys; the top level and ``report`` stay open (experiment overlays and older report keys add to them).

How it is checked at composition. Not by registering these dataclasses with Hydra's ConfigStore: a structured
config type-checks on merge, but its errors are several lines (``full_key``, ``object_type``, the merge
stack), name neither the allowed values nor a range (``runtime.batch_size=0`` is a valid ``int``), and it
would have to replace the YAML group files as the source of defaults. Instead :func:`check` is the first thing
``audit-run`` and ``audit-plan`` do with the composed config (through :func:`audit.prepare.check_config`), so
every refusal is one :class:`ConfigRefused` line (a :class:`audit.errors.UserError`: exit status 2) before
anything is built, loaded or written. What needs the machine (CUDA present) or a file (the expert file) is
checked right after, by :func:`audit.prepare.validate_config`; the modes of a sharded run (launcher, process
count, score store) by :func:`audit.parallel.shards.validate_scale_config`.

Adding a key: declare it in the section's dataclass with a rule, then document it in the YAML file and README
(CONTRIBUTING.md, "Add a config key"); ``tests/test_config_schema.py`` enumerates the declared keys.
"""
from __future__ import annotations

import difflib
import re
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterator, Mapping

from audit.errors import ConfigRefused

__all__ = ["ConfigRefused", "Rule", "TopLevelSchema", "RuntimeSchema", "DataSchema", "ReportSchema", "SECTIONS",
           "REQUIRED", "RECORD_NAMES", "REPORT_FORMATS", "ATTENTION", "COMPILE_MODES", "DTYPES", "check",
           "check_section", "declared_keys", "section_rules"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of a key that must be set (``runtime.batch_size``, ``seed``)
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Rule:
    """What a key accepts. ``allowed``: the words after "must be" (a function of the section's values when the
    allowed values depend on another key); ``test(value, section)``; ``bad``: values it refuses (examples)."""

    allowed: str | Callable[[Mapping[str, Any]], str]
    test: Callable[[Any, Mapping[str, Any]], bool]
    bad: tuple[Any, ...] = ()

    def words(self, section: Mapping[str, Any]) -> str:
        return self.allowed(section) if callable(self.allowed) else self.allowed

    def accepts(self, value: Any, section: Mapping[str, Any]) -> bool:
        try:
            return bool(self.test(value, section))
        except (TypeError, ValueError, KeyError):
            return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None, *, null: bool = False, words: str | None = None) -> Rule:
    if words is None:
        words = ("a positive integer" if lo == 1 and hi is None else
                 f"an integer ≥ {lo}" if lo is not None and hi is None else
                 f"an integer from {lo} to {hi}" if lo is not None else "an integer")
        words = f"null or {words}" if null else words
    bad = tuple(b for b in ((lo - 1) if lo is not None else None, (hi + 1) if hi is not None else None, "many", 2.5,
                            True) if b is not None)
    return Rule(words, lambda v, s: (null and v is None) or (_is_int(v) and (lo is None or v >= lo)
                                                             and (hi is None or v <= hi)), bad)


def number(*, positive: bool = False, null: bool = False, words: str | None = None) -> Rule:
    words = words or ("a positive number" if positive else "a number")
    words = f"null or {words}" if null and not words.startswith("null") else words
    return Rule(words, lambda v, s: (null and v is None) or (_is_number(v) and (not positive or v > 0)),
                ((0, "long", True) if positive else ("long", True)))


def boolean(*, null: bool = False) -> Rule:
    return Rule("null, true or false" if null else "true or false",
                lambda v, s: isinstance(v, bool) or (null and v is None), ("yes", 1))


def one_of(choices: tuple[str, ...] | Callable[[], tuple[str, ...]], *, null: bool = False,
           shown: tuple[str, ...] | None = None, also: tuple[str, ...] = ()) -> Rule:
    """One of ``choices`` (a tuple, or a function giving it: allowed values declared where they are used);
    ``also``: accepted spellings not shown in the message (``fp16``)."""
    def values() -> tuple[str, ...]:
        return tuple(choices()) if callable(choices) else tuple(choices)

    def words(_: Mapping[str, Any]) -> str:
        return ("null or " if null else "") + "one of " + ", ".join(shown or values())

    return Rule(words, lambda v, s: (null and v is None) or (isinstance(v, str) and (v in values() or v in also)),
                ("nonsense", 3))


def pattern(regex: str, words: str, bad: tuple[Any, ...] = ("nonsense",)) -> Rule:
    return Rule(words, lambda v, s: isinstance(v, str) and re.fullmatch(regex, v) is not None, bad + (7,))


def path(*, null: bool = True, what: str = "a path") -> Rule:
    """A file or folder path (text; an empty value counts as null where null is allowed)."""
    return Rule(f"null or {what}" if null else what,
                lambda v, s: (null and v in (None, "")) or (isinstance(v, str) and v.strip() != ""),
                ((3, ["a", "b"]) if null else (None, "", 3)))


def list_of(rule_or_choices: Rule | tuple[str, ...], *, nonempty: bool = False, words: str | None = None,
            null: bool = False) -> Rule:
    item = rule_or_choices if isinstance(rule_or_choices, Rule) else one_of(rule_or_choices)
    words = words or ("null or " if null else "") + ("a non-empty list" if nonempty else "a list") + " of " + \
        (item.words({}).removeprefix("a ").removeprefix("an ") if isinstance(rule_or_choices, Rule)
         else str(list(rule_or_choices)))
    return Rule(words, lambda v, s: (null and v is None) or (isinstance(v, (list, tuple)) and (bool(v) or not nonempty)
                                                              and all(item.accepts(x, s) for x in v)),
                ("html", [["nested"]]) + (([],) if nonempty else ()))


def key(default: Any, rule: Rule, doc: str = "") -> Any:
    """A declared key: its default (what a missing key means; :data:`REQUIRED` = must be set), rule, comment."""
    return field(default=default, metadata={"rule": rule, "doc": doc})


# ---------------------------------------------------------------------------------------------- allowed values
DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = ("fp32", "fp16", "bf16")
ATTENTION = ("auto", "sdpa", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
REPORT_FORMATS = ("html", "pdf")
#: files a run writes besides the report; a report file name can never be one of these
RECORD_NAMES = frozenset({"scores.parquet", "images.parquet", "features.parquet", "plan.json", "rejected.json",
                          "run.json", "config.yaml", "analysis.json", "checksums.json", "checksums.json.sig",
                          "COMPLETE", "regenerated.json", "committed_plan.json", "evidence_inventory.csv",
                          "reconstruction.html"})
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}")


def _report_name(suffix: str) -> Rule:
    return Rule(f"a plain file name ending in {suffix} that is not one of the run's records",
                lambda v, s: isinstance(v, str) and _PLAIN_NAME.fullmatch(v) is not None and ".." not in v
                and v.endswith(suffix) and v not in RECORD_NAMES,
                (f"../../escape{suffix}", "plan.json", "scores.parquet", f"report{suffix}x", 5))


def _compile_ok(v: Any, s: Mapping[str, Any]) -> bool:
    return isinstance(v, bool) or v in COMPILE_MODES


def _shard_words(s: Mapping[str, Any]) -> str:
    n = s.get("shards", 1)
    n = n if _is_int(n) and n >= 1 else 1
    return f"null, 'merge' or an integer 0..{n - 1} (runtime.shards={n})"


def _shard_ok(v: Any, s: Mapping[str, Any]) -> bool:
    n = s.get("shards", 1)
    return v is None or v == "merge" or (_is_int(v) and _is_int(n) and 0 <= v < n)


def _languages() -> tuple[str, ...]:
    from audit.report.i18n import REPORT_LANGUAGES  # declared with the translations

    return tuple(REPORT_LANGUAGES)


def _jurisdictions() -> tuple[str, ...]:
    from audit.report.i18n import JURISDICTIONS

    return tuple(JURISDICTIONS)


# ---------------------------------------------------------------------------------------------- the sections
@dataclass(frozen=True)
class TopLevelSchema:
    """The top-level keys of ``configs/audit.yaml`` (the config groups are sections of their own)."""

    name: str = key("audit", Rule("a non-empty run name", lambda v, s: (isinstance(v, str) and v.strip() != "")
                                  or _is_int(v), (None, "", ["a"])), "names the results folder")
    seed: int = key(REQUIRED, integer(0, 2 ** 63 - 1, words="an integer from 0 to 2**63 - 1"),
                    "seeds every noise draw and resampling")
    score_store: str | None = key(None, path(what="a folder"), "the content-keyed score store; null = none")
    plan_commitment: str | None = key(None, path(what="the path of a committed_plan.json"),
                                      "a plan committed with audit-plan")
    calibrate_lora: bool = key(True, boolean(), "a LoRA target's loss calibrated against its base")


@dataclass(frozen=True)
class RuntimeSchema:
    """``runtime.*`` (``configs/runtime/*.yaml``): where and how fast the scores are computed, and how a run is
    split into shards (:mod:`audit.parallel`)."""

    device: str = key("cpu", pattern(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N", ("gpu0", "cuda:x")),
                      "auto | cpu | cuda | cuda:N | mps")
    dtype: str = key("float32", one_of(DTYPES, also=_DTYPE_ALIASES), "model weights' precision")
    batch_size: int = key(REQUIRED, integer(1), "images per denoiser batch")
    num_threads: int | None = key(None, integer(1, null=True), "torch CPU threads; null = torch's default")
    progress: bool = key(True, boolean(), "tqdm progress bars")
    attention: str = key("auto", one_of(ATTENTION), "attention processors (audit/parallel/speed.py)")
    channels_last: bool = key(False, boolean(), "denoiser weights in channels-last memory format")
    compile: bool | str = key(False, Rule("false, true or one of " + ", ".join(COMPILE_MODES), _compile_ok,
                                          ("fast", 1)), "torch.compile of the denoiser")
    shards: int = key(1, integer(1), "split the scoring into this many shards")
    shard: int | str | None = key(None, Rule(_shard_words, _shard_ok, (-1, "all", True)),
                                  "one job's part (an index, or merge); set by the launcher")
    shard_dir: str | None = key(None, path(what="a folder"), "where the shard jobs' records meet")
    dist_timeout_h: float | None = key(72, number(positive=True, null=True, words="a positive number of hours"),
                                       "how long rank 0 waits for the slowest shard")


@dataclass(frozen=True)
class DataSchema:
    """``data.*`` (``configs/data/*.yaml``): where the works are listed. Which of manifest / folder is set is
    checked when they are read (:func:`audit.prepare.read_entries_from_config`)."""

    manifest: str | None = key(None, path(what="the path of a CSV or JSONL manifest"), "the works' manifest")
    folder: str | None = key(None, path(what="a folder with role sub-folders"), "or a folder of role sub-folders")
    max_pixels: int = key(100_000_000, integer(1, words="a positive integer (width × height)"),
                          "larger images are rejected before decoding")


@dataclass(frozen=True)
class ReportSchema:
    """``report.*`` (``configs/report/*.yaml``): the report's formats, file names (plain names in the results folder
    that cannot overwrite the run's records), language and jurisdiction."""

    enabled: bool = key(True, boolean(), "write the report")
    formats: tuple[str, ...] = key(REPORT_FORMATS, list_of(REPORT_FORMATS, nonempty=True), "html, pdf")
    filename: str = key("report.html", _report_name(".html"), "the HTML report's file name")
    pdf_filename: str = key("report.pdf", _report_name(".pdf"), "the PDF report's file name")
    thumbnails: int = key(24, integer(0, null=True, words="null or an integer ≥ 0"), "suspects drawn with controls")
    language: str | None = key("en", one_of(_languages, null=True), "en | zh | en+zh")
    jurisdiction: str | None = key("neutral", one_of(_jurisdictions, null=True), "the declaration's wording")


def _stats_schema() -> type:
    from audit.stats.plan import AnalysisPlan

    return AnalysisPlan


def _report_names_differ(values: Mapping[str, Any]) -> None:
    if values.get("enabled", True) and values["filename"] == values["pdf_filename"]:
        raise ConfigRefused("report.filename and report.pdf_filename must differ")


#: checks across the keys of one section, after each key passed its rule
_ACROSS: dict[str, Callable[[Mapping[str, Any]], None]] = {"report": _report_names_differ}

#: section name ("" = the top level) → (its dataclass, or a function giving it; closed: unknown keys refused)
SECTIONS: dict[str, tuple[type | Callable[[], type], bool]] = {
    "": (TopLevelSchema, False),
    "runtime": (RuntimeSchema, True),
    "data": (DataSchema, True),
    "report": (ReportSchema, False),
    "stats": (_stats_schema, True),
}


# ---------------------------------------------------------------------------------------------- rules
def _rule_for_type(hint: Any) -> Rule:
    """A rule from a dataclass field's annotation (the analysis plan's fields)."""
    args = typing.get_args(hint)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        base = _rule_for_type(inner[0] if len(inner) == 1 else typing.Union[tuple(inner)])
        return Rule(lambda s: "null or " + base.words(s), lambda v, s: v is None or base.accepts(v, s), base.bad)
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        item = _rule_for_type(args[0]) if args else Rule("a value", lambda v, s: True)
        plural = {str: "names", float: "numbers", int: "integers"}.get(args[0] if args else None, "values")
        return list_of(item, words=f"a list of {plural}")
    if hint is bool:
        return boolean()
    if hint is int:
        return integer()
    if hint is float:
        return number()
    if hint is str:
        return Rule("a text", lambda v, s: isinstance(v, str), (3, True))
    return Rule("a plain value", lambda v, s: not isinstance(v, (dict, list)), ({"a": 1},))


def section_rules(section: str) -> dict[str, tuple[Rule, Any, str]]:
    """``{key: (rule, default, comment)}`` of a declared section, in declaration order."""
    schema, _ = SECTIONS[section]
    if not is_dataclass(schema):
        schema = schema()
    hints = typing.get_type_hints(schema)
    out = {}
    for f in fields(schema):
        rule = f.metadata.get("rule") or _rule_for_type(hints[f.name])
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING
                                                              else REQUIRED)
        out[f.name] = (rule, default, f.metadata.get("doc", ""))
    return out


def declared_keys() -> Iterator[tuple[str, Rule, Any]]:
    """Every declared key as (dotted key, rule, default)."""
    for section in SECTIONS:
        for name, (rule, default, _) in section_rules(section).items():
            yield (f"{section}.{name}" if section else name), rule, default


# ---------------------------------------------------------------------------------------------- checking
def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _missing(node: Any, name: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    return isinstance(node, DictConfig) and OmegaConf.is_missing(node, name)


def _where(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def check_section(section: str, node: Any, *, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check ``node`` (a DictConfig or a plain mapping) against the declared section ``section``: every present key
    against its rule (``only``: just these keys, no unknown-key check), required keys present, unknown keys refused
    where the section is closed. Returns the checked values (defaults filled in). One-line ConfigRefused."""
    rules = section_rules(section)
    closed = SECTIONS[section][1]
    present = [str(k) for k in node.keys()] if node is not None else []  # keys(): `in` on a DictConfig skips ???
    if closed and only is None:
        for k in present:
            if k not in rules and not k.startswith("_"):
                close = difflib.get_close_matches(k, list(rules), n=1, cutoff=0.6)
                hint = f" (did you mean {_where(section, close[0])}?)" if close else ""
                raise ConfigRefused(f"{_where(section, k)} is not a known key{hint}; the {section} keys are "
                                    f"{', '.join(rules)}")
    values: dict[str, Any] = {}
    unset = {name for name in rules if name in present and _missing(node, name)}  # ??? left unset
    for name, (_, default, _) in rules.items():  # every value first: a rule may read another key (runtime.shard)
        if name in present and name not in unset:
            values[name] = _plain(node[name])
        elif default is not REQUIRED and name not in unset:
            values[name] = default
    for name, (rule, default, _) in rules.items():
        if only is not None and name not in only:
            continue
        if name not in values:
            if name in unset:
                raise ConfigRefused(f"{_where(section, name)} must be set (it is ???): "
                                    f"{rule.words(values).removeprefix('null or ')}")
            if only is None:
                raise ConfigRefused(f"{_where(section, name)} must be {rule.words(values)}, got None")
            continue
        if name in present and not rule.accepts(values[name], values):
            raise ConfigRefused(f"{_where(section, name)} must be {rule.words(values)}, got {values[name]!r}")
    if only is None and section in _ACROSS:
        _ACROSS[section](values)
    return values


_PLAN_TARGETS = ("audit.stats.AnalysisPlan", "audit.stats.plan.AnalysisPlan")


def check(cfg: Any) -> None:
    """Validate a composed config's plain values against the declared sections (and the analysis plan's and the
    reconstruction group's own dataclasses): the first refusal is one :class:`ConfigRefused` line (a
    ``ValueError`` from the plan's or the reconstruction's range checks) naming the key, what it accepts and the
    value given. Sections absent from ``cfg`` are not checked."""
    for section in SECTIONS:
        if section == "":
            check_section("", cfg)
            continue
        node = cfg.get(section)
        if node is None:
            continue
        if section == "stats" and node.get("_target_") not in _PLAN_TARGETS:
            continue  # another plan class: its own checks
        check_section(section, node)
        if section == "stats":  # the plan's ranges (alpha in (0, 1), test, strata, ...), declared by the plan
            from audit.stats.plan import AnalysisPlan

            AnalysisPlan(**{k: v for k, v in _plain(node).items() if not str(k).startswith("_")})
    rec = cfg.get("reconstruction")
    if rec is not None and rec.get("enabled", False):  # its dataclasses refuse unknown keys and bad ranges
        from audit.reconstruction.config import ReconstructionConfig

        ReconstructionConfig.from_any(rec)
