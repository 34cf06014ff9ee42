"""Contracts every registered piece keeps, enumerated from the registries (issue 26), never from a hand-kept list:
a new attack config, model family, set-level test, validity gate or scale-out executor is checked here the moment
it is registered, and fails here if it breaks the contract the rest of the code relies on.

* attacks — every ``configs/attack/*.yaml`` builds an :class:`~audit.attacks.Attack` whose parameters are plain
  values with a stable hash, and on the tiny pixel DDPM and the tiny Stable-Diffusion model either refuses in one
  line or scores with exactly its declared number of denoiser evaluations (a black-box statistic, run on a local
  model through the service's operations, declares none: it counts requests), finite and seed-reproducible scores;
  every attack class of the package is reachable from a config;
* families — every registered family has a tiny builder (so ``tests/test_families.py`` runs it);
* set-level tests and gates — every entry of ``SET_TESTS`` × the plan's gates detects a real shift, does not
  convict a null, gives the same numbers for the same seed, names itself in the report's Methods sentence and has
  its label and title in the Chinese catalogue;
* executors — every scale-out mode has an executor and every executor a mode.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import compose_audit, count_forward_calls

ROOT = Path(__file__).resolve().parents[1]
ATTACK_CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "attack").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def contract_targets(untrained_ddpm, tiny_sd):
    from audit.targets import load_target

    pixel = load_target(str(untrained_ddpm.model_dir), local_files_only=True, device="cpu")
    sd = load_target(str(tiny_sd[0]), local_files_only=True, device="cpu")
    return {"pixel": (pixel, untrained_ddpm.model_dir), "sd": (sd, tiny_sd[0])}


def _evidence(target, n: int = 2):
    from audit.groundtruth.synthetic import render_artwork
    from audit.types import EvidenceSet, ImageRecord

    res = int(target.info.resolution)
    imgs = [render_artwork(["stripes", "circles"][i % 2], 900 + i, size=res, seed=3) for i in range(n)]
    pixels = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # uint8, as EvidenceSet keeps them
    records = [ImageRecord(image_id=f"{i:064x}", path=f"w{i}.png", role="suspect" if i % 2 else "control",
                           caption="a painting", artist="a") for i in range(n)]
    return EvidenceSet(records=records, pixels=pixels)


#: fewer repeats for the costly statistics (the contract is about behaviour, not the shipped repeat counts)
SMALL = {"bb_generate": ["n=1"], "bb_img2img": ["n=1"], "bb_variation": ["n=1"], "rediffuse": ["n=1"],
         "wen": ["n_generations=1"], "pfami": ["strengths=[0.9]"]}


def _build(name: str, model_dir: Path):
    from audit.prepare import build_attacks

    extra = [f"attack.{name}.reference.source={model_dir}"] if name == "loss_calibrated" else []
    extra += [f"attack.{name}.{o}" for o in SMALL.get(name, [])]
    cfg = compose_audit(["experiment=own_model", f"target.source={model_dir}", f"attack=[{name}]", *extra])
    return build_attacks(cfg)[name]


@pytest.mark.slow  # about 2 minutes on 2 cores: every attack config on two tiny models
@pytest.mark.parametrize("name", ATTACK_CONFIGS)
def test_every_attack_config_keeps_the_attack_contract(name, contract_targets):
    from audit.attacks import Attack, AttackSetupError, score_evidence
    from audit.types import params_hash

    scored_on = []
    for kind, (target, model_dir) in contract_targets.items():
        attack = _build(name, model_dir)
        assert isinstance(attack, Attack) and attack.name == name, (name, type(attack))
        params = attack.params()
        json.dumps(params)  # plain values only: they are hashed into the score store's keys and recorded
        assert params_hash(params) == params_hash(_build(name, model_dir).params())  # same config, same key
        per_image = attack.evaluations_per_image()
        assert isinstance(per_image, int) and per_image >= 0
        assert isinstance(attack.describe(), dict)
        try:
            attack.check_target(target)
        except AttackSetupError as err:
            assert "\n" not in str(err) and str(err).strip(), str(err)  # one line
            continue
        ev = _evidence(target)
        with count_forward_calls(type(target.denoiser)) as calls:
            first = score_evidence(target, ev, {name: attack}, batch_size=2, seed=0, progress=False)
        if attack.service_operations:  # a service's statistic counts requests, not evaluations (audit.blackbox)
            assert per_image == 0
        else:
            assert calls["n"] == per_image * len(ev), (name, kind, calls["n"], per_image)  # the declared cost
        again = score_evidence(target, ev, {name: _build(name, model_dir)}, batch_size=2, seed=0, progress=False)
        s1, s2 = first.df["score"].to_numpy(), again.df["score"].to_numpy()
        assert np.isfinite(s1).all() and np.array_equal(s1, s2), (name, kind)  # same seed, same scores
        scored_on.append(kind)
    if name.startswith("out_"):  # a collection's statistic: no model target takes it
        assert scored_on == []
    else:
        assert scored_on, f"{name} refuses both tiny models: it is checked nowhere"


def test_every_attack_class_is_reachable_from_a_config():
    import audit.blackbox  # noqa: F401  (registers the black-box statistics)
    import audit.outputs  # noqa: F401  (and the collected-outputs ones)
    from audit.attacks import Attack
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    concrete = {c for c in subclasses(Attack) if not inspect.isabstract(c) and c.__module__.startswith("audit.")
                and not c.__name__.startswith("_")}
    configured = set()
    for name in ATTACK_CONFIGS:
        spec = OmegaConf.load(ROOT / "configs" / "attack" / f"{name}.yaml")[name]
        configured.add(get_class(spec["_target_"]))
    # a class with no config must be a base of others (BlackBoxAttack, OutputStatistic); every leaf is configured
    missing = sorted(c.__qualname__ for c in concrete - configured if not c.__subclasses__())
    assert not missing, f"attack classes with no configs/attack/*.yaml: {missing}"


# ---------------------------------------------------------------------------------------------- families
def test_every_registered_family_has_a_tiny_builder():
    import audit.targets.families  # noqa: F401  (each module registers itself)
    from audit.groundtruth.families import FAMILY_BUILDERS
    from audit.targets import FAMILIES

    own = {"pixel", "sd"}  # audit.groundtruth.ddpm and audit.groundtruth.sd
    assert set(FAMILIES) == set(FAMILY_BUILDERS) | own, (sorted(FAMILIES), sorted(FAMILY_BUILDERS))
    for fam in FAMILIES.values():
        assert fam.pipelines and fam.pipeline_class and fam.title, fam.name


# ---------------------------------------------------------------------------------------------- statistics
def _table(shift: float, seed: int):
    """Suspects (shifted by ``shift``), controls, known members (shifted by 1.5) and non-members; three artists,
    two attacks; model-free features independent of the scores."""
    from audit.types import ScoreTable

    rng = np.random.default_rng(seed)
    rows, imgs, feats = [], [], []
    for role, n, s in (("suspect", 16, shift), ("control", 64, 0.0), ("member", 20, 1.5), ("nonmember", 30, 0.0)):
        for i in range(n):
            iid = f"{role}{i:04d}".ljust(64, "0")
            art = "abc"[i % 3]
            for atk, w in (("loss", 1.0), ("pia", 0.8)):
                rows.append(dict(image_id=iid, role=role, attack=atk, attack_params_hash="p", target_fingerprint="f",
                                 seed=0, score=float(w * s + rng.normal())))
            imgs.append(dict(image_id=iid, role=role, artist=art))
            feats.append(dict(image_id=iid, role=role, px_a=float(rng.normal()), px_b=float(rng.normal())))
    return ScoreTable(pd.DataFrame(rows)), pd.DataFrame(imgs), pd.DataFrame(feats)


def _plan_for(test: str):
    from audit.stats import AnalysisPlan
    from audit.stats.settests import SET_TESTS

    spec = SET_TESTS[test]
    kw: dict = dict(n_permutations=199, crossfit_permutations=49, n_bootstrap=50, n_placebo=40, n_power_resamples=20,
                    auto_strata=False)
    if spec.feature_set:
        kw["features"] = ["loss", "pia"]
    else:
        kw["primary_attack"] = "loss"
    if spec.needs_strata:
        kw["strata"] = ["artist"]
    else:
        kw["test"] = test
    return AnalysisPlan(**kw)


def _set_tests():
    from audit.stats.settests import SET_TESTS

    return list(SET_TESTS)


@pytest.mark.parametrize("test", _set_tests())
def test_every_set_test_detects_a_shift_not_a_null_reproducibly_with_every_gate(test):
    from audit.stats import analyze
    from audit.stats.gates import GATE_REGISTRY

    plan = _plan_for(test)
    assert plan.gates == tuple(GATE_REGISTRY)  # the default plan runs every registered gate
    shifted = analyze(*_table(1.2, seed=1)[:2], plan, _table(1.2, seed=1)[2], recorded_plan_sha256=plan.sha256())
    null = analyze(*_table(0.0, seed=2)[:2], plan, _table(0.0, seed=2)[2], recorded_plan_sha256=plan.sha256())
    again = analyze(*_table(1.2, seed=1)[:2], plan, _table(1.2, seed=1)[2], recorded_plan_sha256=plan.sha256())
    d_shift, d_null = shifted.to_dict(), null.to_dict()
    assert d_shift["verdict"]["p_value"] <= plan.alpha and shifted.verdict.decision == "reject_h0", d_shift["verdict"]
    assert d_null["verdict"]["p_value"] > plan.alpha and null.verdict.decision == "fail_to_reject", d_null["verdict"]
    assert json.dumps(again.to_dict(), sort_keys=True, default=str) == json.dumps(d_shift, sort_keys=True, default=str)
    gates = {g["name"]: g["status"] for g in d_shift["gates"]}
    assert set(gates) == set(GATE_REGISTRY), gates  # every registered gate reports, in a known state
    assert set(gates.values()) <= {"pass", "fail", "not_run", "info"}
    assert not any(s == "fail" for s in gates.values()), gates  # valid, exchangeable data: no gate withholds


@pytest.mark.parametrize("test", _set_tests())
def test_every_set_test_names_itself_in_both_languages(test):
    from audit.report.i18n import catalogue_messages
    from audit.stats.settests import SET_TESTS

    spec = SET_TESTS[test]
    assert spec.label and spec.method(_plan_for(test)).strip()
    zh = catalogue_messages("zh")
    assert zh.get(spec.label), f"set test label {spec.label!r} has no Chinese translation in the catalogue"


def test_every_gate_declares_what_its_failure_and_absence_mean_in_both_languages():
    from audit.report.i18n import catalogue_messages
    from audit.stats.gates import GATE_REGISTRY

    zh = catalogue_messages("zh")
    for name, spec in GATE_REGISTRY.items():
        assert spec.title and callable(spec.run) and callable(spec.absence), name
        assert isinstance(spec.withholds, bool) and isinstance(spec.required, bool), name
        assert zh.get(spec.title), f"gate title {spec.title!r} has no Chinese translation in the catalogue"


# ---------------------------------------------------------------------------------------------- executors
def test_every_scale_out_mode_has_one_executor():
    from audit.parallel import EXECUTORS, ScaleRun
    from audit.parallel.shards import MERGE

    assert set(EXECUTORS) == {"single", "shard", "distributed", MERGE}
    for mode, cls in EXECUTORS.items():
        assert issubclass(cls, ScaleRun) and cls.mode == mode
        assert cls.score is not ScaleRun.score, f"{cls.__name__} does not say how it scores"
