"""The config's plain values are declared once (audit/schema.py, issue 26): every declared key refuses a bad value
in one line naming the key, what it accepts and the value given; the shipped values pass; every shipped config
file of the audit's groups passes; an unknown runtime key is refused naming the closest known one."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from audit import schema
from audit.cli import CONFIG_DIR
from audit.errors import user_error_line

KEYS = list(schema.declared_keys())  # enumerated from the schema, not a hand-kept list
# values a shipped file leaves unset (???) that a user gives on the command line
FILL_INS = {"data.manifest": "/works/manifest.csv", "data.folder": "/works", "target.source": "/models/m",
            "target.base_url": "https://api.example.com", "target.folder": "/outputs"}


def _compose(overrides: list[str] = ()):  # type: ignore[assignment]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="audit", overrides=list(overrides))


@pytest.fixture(scope="module")
def shipped():
    return _compose()


def _refusal(cfg) -> str:
    with pytest.raises(ValueError) as info:
        schema.check(cfg)
    assert isinstance(info.value, schema.ConfigRefused), info.value
    line = user_error_line(info.value)
    assert line == str(info.value) and "\n" not in line  # one line, as audit-run prints it (exit status 2)
    return line


def _section_values(cfg, dotted: str) -> dict:
    section = dotted.rpartition(".")[0]
    node = cfg if not section else cfg[section]
    return OmegaConf.to_container(node, resolve=True)


def test_the_schema_declares_every_key_of_the_runtime_and_data_files():
    declared = {k for k, _, _ in KEYS}
    for group in ("runtime", "data"):
        for f in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            keys = {k for k in (yaml.safe_load(f.read_text()) or {}) if k != "defaults"}
            assert {f"{group}.{k}" for k in keys} <= declared, f
    assert {"seed", "name", "score_store", "calibrate_lora", "runtime.batch_size", "report.formats",
            "stats.alpha"} <= declared


@pytest.mark.parametrize("dotted,rule,default", KEYS, ids=[k for k, _, _ in KEYS])
def test_each_declared_key_takes_the_shipped_value_and_refuses_a_bad_one_in_one_line(shipped, dotted, rule, default):
    section_values = _section_values(shipped, dotted)
    name = dotted.rpartition(".")[2]
    if name in section_values:
        assert rule.accepts(section_values[name], section_values), (dotted, section_values[name])
    if default is not schema.REQUIRED:
        assert rule.accepts(default, section_values), (dotted, default)
    schema.check(shipped)
    bad_values = [*rule.bad, {"nested": {"mapping": 1}}]  # the rule's own examples, and a mapping (no plain value)
    assert rule.bad, f"{dotted}: declare values the rule refuses"
    for bad in bad_values:
        cfg = copy.deepcopy(shipped)
        OmegaConf.update(cfg, dotted, bad, merge=False, force_add=True)
        line = _refusal(cfg)
        section_after = _section_values(cfg, dotted)
        assert line.startswith(f"{dotted} must be {rule.words(section_after)}, got "), line
        assert line.endswith(repr(OmegaConf.to_container(OmegaConf.create({"v": bad}))["v"])), line


def _shipped_options() -> list[tuple[str, str]]:
    """(group, option) for every config file of a group that configs/audit.yaml composes."""
    top = yaml.safe_load((Path(CONFIG_DIR) / "audit.yaml").read_text())
    groups = [next(iter(d)) for d in top["defaults"] if isinstance(d, dict)]
    out = []
    for group in groups:
        if group == "hydra":
            continue
        for f in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            out.append((group, f.stem))
    return out


@pytest.mark.parametrize("group,option", _shipped_options(), ids=lambda v: str(v))
def test_every_shipped_config_file_passes(group, option):
    cfg = _compose([f"{group}={option}"])
    for dotted, value in FILL_INS.items():
        section, _, name = dotted.partition(".")
        node = cfg.get(section)
        if node is not None and name in node.keys() and OmegaConf.is_missing(node, name):  # `in node` skips ???
            OmegaConf.update(cfg, dotted, value)
    schema.check(cfg)


@pytest.mark.parametrize("typo,closest", [("batchsize", "runtime.batch_size"), ("devise", "runtime.device"),
                                          ("shard_folder", "runtime.shard_dir")])
def test_an_unknown_runtime_key_is_refused_naming_the_closest_known_one(shipped, typo, closest):
    cfg = copy.deepcopy(shipped)
    OmegaConf.update(cfg, f"runtime.{typo}", 8, force_add=True)  # as a user's own runtime YAML would add it
    line = _refusal(cfg)
    assert line.startswith(f"runtime.{typo} is not a known key (did you mean {closest}?)"), line


def test_a_users_runtime_file_with_a_typo_is_refused_through_check_config(tmp_path):
    from audit.prepare import check_config

    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "mine.yaml").write_text("defaults:\n  - cpu\n  - _self_\nbatchsize: 8\n")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="audit", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "runtime=mine"])
    assert cfg.runtime.batchsize == 8
    with pytest.raises(schema.ConfigRefused, match=r"runtime\.batchsize is not a known key \(did you mean "
                                                   r"runtime\.batch_size\?\)"):
        check_config(cfg)


def test_cross_key_rules_and_unset_values(shipped):
    cfg = copy.deepcopy(shipped)
    OmegaConf.update(cfg, "runtime.shards", 4)
    OmegaConf.update(cfg, "runtime.shard", 3)
    schema.check(cfg)  # 3 < runtime.shards
    OmegaConf.update(cfg, "runtime.shard", 4)
    assert "integer 0..3 (runtime.shards=4), got 4" in _refusal(cfg)
    OmegaConf.update(cfg, "runtime.shard", "merge")
    schema.check(cfg)
    cfg = copy.deepcopy(shipped)
    OmegaConf.update(cfg, "report.pdf_filename", "same.pdf")
    OmegaConf.update(cfg, "report.filename", "same.html")
    schema.check(cfg)
    cfg = _compose(["data=manifest"])  # manifest: ??? left unset
    assert _refusal(cfg).startswith("data.manifest must be set (it is ???)")
    cfg = _compose(["+stats.alpah=0.1"])
    assert _refusal(cfg).startswith("stats.alpah is not a known key (did you mean stats.alpha?)")


def test_the_speed_and_report_checks_are_the_schemas(shipped):
    from audit.parallel.speed import validate_speed_config
    from audit.safety import ConfigRefused, check_report_names

    assert ConfigRefused is schema.ConfigRefused
    validate_speed_config({"attention": "sdpa"})  # a partial runtime mapping: only the throughput keys
    with pytest.raises(ConfigRefused, match="runtime.attention must be one of auto, sdpa, eager, got 'flash'"):
        validate_speed_config({"attention": "flash", "batch_size": 0})
    check_report_names({"enabled": True, "formats": ["html"], "filename": "a.html", "pdf_filename": "a.pdf"})
    with pytest.raises(ConfigRefused, match="report.filename must be a plain file name"):
        check_report_names({"filename": "plan.json"})


@pytest.mark.parametrize("overrides,message", [
    (["stats.alpha=1.5"], "alpha must be in (0, 1), got 1.5"),  # the plan's own range, checked at composition
    (["stats.features=[loss]"], "a feature set needs at least 2 attacks"),
    (["reconstruction=screen", "reconstruction.img2img.strength=2"], "reconstruction.img2img.strength must be in (0, 1]"),
    (["reconstruction=screen", "+reconstruction.generate.steps_=3"], "reconstruction.generate: unknown keys"),
])
def test_the_plan_and_the_reconstruction_group_are_checked_with_the_config(overrides, message):
    with pytest.raises(ValueError) as info:
        schema.check(_compose(overrides))
    assert message in str(info.value) and "\n" not in str(info.value)
