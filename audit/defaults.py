"""Defaults that depend on what is audited, decided before the plan is recorded.

A target given as base model + LoRA is a fine-tune: its members differ from other works of the same artist
mostly in what the LoRA changed, so the measured default is reference calibration against the base
(docs/methodology.md §2: on a held-out LoRA audit the plain loss answered p = 0.77 for 30 trained works, the
base-calibrated loss p = 8e-10). :func:`add_lora_calibration` adds that attack and makes it the primary
statistic unless the user chose one; ``calibrate_lora=false`` switches it off. A full fine-tune (every weight
changed, no LoRA) whose public base is named with ``target.base`` is audited the same way, against that base.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

__all__ = ["add_lora_calibration", "adjustment_decision", "choose_default_primary", "conditioning_decision",
           "fit_default_attacks",
           "CALIBRATED_NAME", "DEFAULT_ATTACKS"]

CALIBRATED_NAME = "loss_calibrated"
# the attack list of configs/audit.yaml: a run that did not choose its attacks gets this list, fitted to the target
DEFAULT_ATTACKS = ("loss", "pia", "pian")
# load_target keywords that describe the LoRA, not the base model
_LORA_KEYS = ("_target_", "lora", "lora_scale", "lora_strict", "base")


def add_lora_calibration(cfg: DictConfig, attacks: dict[str, Any], plan: Any) -> tuple[dict[str, Any], Any, str]:
    """When ``cfg.target`` has a LoRA or names its base (``target.base``: a full fine-tune of a public model) and
    ``cfg.calibrate_lora`` (default true): add ``loss_calibrated`` (the configured ``loss`` attack, or its defaults,
    minus the same attack on the base model = ``target.base``, else the target's source without the LoRA) and,
    when the plan names no primary statistic, make it the primary one.
    Returns the attacks, the plan and a sentence saying what was decided."""
    from audit.attacks.calibrated import Calibrated

    target = cfg.get("target")
    base_model = target.get("base") if target is not None else None
    base_model = None if base_model in (None, "", "???") else base_model
    if target is None or not (target.get("lora") or base_model):
        return attacks, plan, ""
    what = "LoRA target" if target.get("lora") else f"Fine-tune of base {base_model!r} (target.base)"
    if not cfg.get("calibrate_lora", True):
        return attacks, plan, f"{what} without base calibration (calibrate_lora=false)."
    if any(isinstance(a, Calibrated) for a in attacks.values()):
        return attacks, plan, f"{what}: a calibrated attack is configured already; no default one added."
    if CALIBRATED_NAME in attacks:
        return attacks, plan, f"{what}: an attack named {CALIBRATED_NAME!r} exists; no default one added."
    tcfg = OmegaConf.to_container(target, resolve=True)
    reference = {k: v for k, v in tcfg.items() if k not in _LORA_KEYS}
    if base_model:  # the named base, not the fine-tune's own source
        reference["source"] = str(base_model)
        if not str(base_model).endswith((".safetensors", ".ckpt")):
            reference["config"] = None
    spec = cfg.get("attack") or {}
    base = OmegaConf.to_container(spec["loss"], resolve=True) if "loss" in spec else {"_target_":
                                                                                        "audit.attacks.LossAttack"}
    cal = instantiate({"_target_": "audit.attacks.calibrated.Calibrated", "_recursive_": False, "attack": base,
                       "reference": reference}, _convert_="all")
    attacks = {CALIBRATED_NAME: cal, **attacks}
    why = (f"{what}: added {CALIBRATED_NAME!r} = loss(target) − loss(base model {reference.get('source')!r}"
           + (" without the LoRA)" if not base_model else ")"))
    if plan.primary_attack is None and not plan.features:
        plan = replace(plan, primary_attack=CALIBRATED_NAME)
        why += " as the primary statistic (calibrate_lora=true, the default; no stats.primary_attack was set)."
    else:
        why += "; the plan's own primary statistic is kept."
    return attacks, plan, why


def fit_default_attacks(attacks: dict[str, Any], target: Any) -> tuple[dict[str, Any], str]:
    """With the default attack list (:data:`DEFAULT_ATTACKS`, i.e. the user chose none), leave out the attacks
    that do not support this target (e.g. PIAN on a flow-matching model) instead of stopping the run, and say
    so; a black-box service (``target=http``), which none of them supports, gets :data:`BLACK_BOX_DEFAULTS`.
    A list the user chose is kept as it is: an attack there that cannot run stops the run in one line."""
    from audit.attacks.base import AttackSetupError

    if set(attacks) != set(DEFAULT_ATTACKS):
        return attacks, ""
    kept, dropped = {}, []
    for name, attack in attacks.items():
        try:
            attack.check_target(target)
            kept[name] = attack
        except AttackSetupError as e:
            dropped.append(f"{name} ({str(e).rstrip('.')})")
    if not kept and target.access == "outputs":  # collected outputs, no model (audit.outputs)
        from audit.outputs.statistics import OUTPUT_DEFAULTS

        return black_box_defaults(OUTPUT_DEFAULTS), ("Default statistics fitted to collected outputs: "
                                                     + ", ".join(OUTPUT_DEFAULTS) + " (no model); "
                                                     + OUTPUT_DEFAULTS[0] + " is the primary statistic.")
    if not kept and target.access == "black":
        return black_box_defaults(), ("Default attacks fitted to a black-box service: " + ", ".join(BLACK_BOX_DEFAULTS)
                                      + " (the model's own attacks need its weights); " + ", ".join(BLACK_BOX_DEFAULTS[:1])
                                      + " is the primary statistic.")
    if not dropped or not kept:
        return attacks, ""  # nothing to leave out, or nothing would be left: the scoring step names the reason
    return kept, "Default attacks fitted to the target: left out " + "; ".join(dropped) + "."


#: the default attacks against a hosted service (target=http), from configs/attack/<name>.yaml; the first is
#: primary (results/blackbox/: the variation distance was the strongest black-box statistic)
BLACK_BOX_DEFAULTS = ("bb_variation", "bb_img2img")


def black_box_defaults(names: tuple[str, ...] = BLACK_BOX_DEFAULTS) -> dict[str, Any]:
    """The attacks ``names`` as configured in ``configs/attack/<name>.yaml``."""
    from pathlib import Path

    from audit import CONFIG_DIR

    folder = Path(CONFIG_DIR) / "attack"
    out = {}
    for name in names:
        spec = OmegaConf.load(folder / f"{name}.yaml")[name]
        out[name] = instantiate(spec, _convert_="all")
    return out


#: where the default primary statistic was measured (scripts/default_primary.py)
DEFAULT_PRIMARY_TABLE = "results/default_primary/default_primary.md"


def choose_default_primary(cfg: DictConfig, plan: Any, attacks: dict[str, Any], n_suspect: int
                           ) -> tuple[Any, str]:
    """The default primary statistic, chosen by measurement (:data:`DEFAULT_PRIMARY_TABLE`).

    When the run uses the default attack list (fitted to the target) and the plan names neither
    ``stats.primary_attack`` nor ``stats.features`` nor a test, the attacks' scores are combined by the
    cross-fitted test (``features`` = the default attacks that run). On the DDPM benchmarks this needed as few
    suspects as the best single attack and 2.5× fewer than the plain loss, at the same false-positive rate.

    A LoRA target keeps ``loss_calibrated`` alone (set by :func:`add_lora_calibration`): adding the uncalibrated
    attacks to it helped on the SD-layout LoRA benchmark but diluted the only useful signal on the flow LoRA
    (power 0.18 vs 0.42 with 30 suspects), and on a held-out LoRA audit the calibrated loss alone gave p = 8e-10.
    A run with its own attack list keeps its first attack, unless the list holds a reference-calibrated attack
    (the README's explicit fine-tune examples, ``'attack=[loss,loss_calibrated]'
    attack.loss_calibrated.reference.source=…``): then the first calibrated attack is primary, for the reason a
    LoRA target's default is (the calibrated score is the fine-tune's signal; the plain loss was useless there).
    With fewer than 2 suspects no cross-fit is possible and the first attack stays primary."""
    from audit.attacks.calibrated import Calibrated

    stats_cfg = cfg.get("stats") or {}
    if stats_cfg.get("primary_attack") is not None or stats_cfg.get("features") or plan.features:
        return plan, ""  # the user named the primary statistic
    calibrated = [n for n, a in attacks.items() if isinstance(a, Calibrated)]
    if calibrated and plan.primary_attack is None:
        plan = replace(plan, primary_attack=calibrated[0])
        return plan, (f"Primary statistic: {calibrated[0]!r}, the first reference-calibrated attack of the list (a "
                      "fine-tune's signal is what it changed against its base; stats.primary_attack overrides).")
    if str(stats_cfg.get("test", "auto")) != "auto" or CALIBRATED_NAME in attacks:
        return plan, ""
    names = list(attacks)
    if len(names) < 2 or not set(names) <= set(DEFAULT_ATTACKS):
        return plan, ""  # the user's own attack list (or one attack left): the first attack stays primary
    if n_suspect < 2:
        return plan, (f"Primary statistic: the first attack (a cross-fitted feature set needs at least 2 suspects; "
                      f"{n_suspect} accepted).")
    plan = replace(plan, features=tuple(names), primary_attack=None, test="auto")
    return plan, (f"Primary statistic: the default attacks' scores combined by the cross-fitted test "
                  f"(features {', '.join(names)}; per-work p-values from {names[0]}), the default chosen by "
                  f"measurement ({DEFAULT_PRIMARY_TABLE}).")


def conditioning_decision(target: Any) -> str:
    """One sentence for plan.json: how works and prompts are conditioned and why (``target.info.conditioning``,
    decided at load time from the options, the training metadata and the model's config)."""
    chosen = target.conditioning or {}
    parts = []
    for key, c in chosen.items():
        if c.get("source") == "not applicable" and "not applied" not in str(c.get("reason", "")):
            continue
        value = c.get("value")
        shown = "none" if value is None else value
        parts.append(f"{key} = {shown} ({c.get('source')}: {c.get('reason')})")
    notes = list((target.training_metadata or {}).get("notes") or [])
    if not parts and not notes:
        return ""
    out = "Target conditioning (scored as trained): " + "; ".join(parts) + "."
    return out + (" Not reproduced: " + "; ".join(notes) + "." if notes else "")


#: where the difficulty-adjustment default was measured (scripts/difficulty_benchmark.py, scripts/gating_simulation.py)
ADJUSTMENT_TABLES = ("results/difficulty/difficulty.md", "results/gating/gating.md")


def adjustment_decision(cfg: DictConfig, plan: Any) -> str:
    """One sentence for plan.json: whether the scores are difficulty-adjusted and why (``stats.adjust``).

    The default (``features``, configs/stats/default.yaml) was chosen by measurement: on every committed ground
    truth it measured (the demo DDPM, the SD-layout LoRA, two Flux-layout LoRAs) it needed as few or fewer suspects
    for 80% power at α = 0.01 at the same null false-positive rate (e.g. a Flux LoRA: power at 30 suspects 0.53 →
    0.90), and in the simulated 0.5-SD model-free confound it turned most false convictions into non-rejections."""
    if plan.adjust == "features":
        return ("Scores difficulty-adjusted before testing (stats.adjust=features): each score minus what the "
                "model-free image features predict (cross-fitted ridge, fitted on all works without their roles, so "
                "every test stays exact); the default chosen by measurement (" + ", ".join(ADJUSTMENT_TABLES) + "). "
                "stats.adjust=none tests the raw scores.")
    return "Raw scores tested (stats.adjust=none): no difficulty adjustment."
