"""Text-conditional attacks (CLiD, Wen et al.) and reference calibration on a real tiny fine-tune case.

The scenario of docs/methodology.md §2 at CPU size: a tiny Stable-Diffusion-layout base model is trained on a broad
set of procedural artworks (five artists), then a LoRA is fine-tuned on 20 works of one artist
("circles"). The audit question is whether fine-tune members can be told apart from 40 held-out works
of the same artist, in the same style, neither of which the base model saw. Each work has its own
title-like caption ("quiet harbour by circles"), as the works of a real fine-tuning set have their
own captions; members and held-out works are a seeded random split of one pool, so captions and images
are exchangeable between the two roles.

Measured here (CPU, seed 0; AUC [95% bootstrap CI], 20 members vs 40 held-out works, attacks at their
defaults): loss 0.77 [0.64, 0.89], base-calibrated loss 0.99 [0.97, 1.00], CLiD 0.91 [0.83, 0.97],
Wen (image start) 0.55 [0.39, 0.70], Wen (the paper's noise start) 0.51 [0.35, 0.67]. Over other seeds,
artists and splits (exploration, same sizes): loss 0.62–0.74, calibrated 0.92–0.97, CLiD 0.80–0.87, Wen
0.41–0.61. Wen et al.'s detector targets strongly memorised prompts: on a LoRA that memorises 8 works
(600 steps) the image-start variant reaches AUC ≈ 0.79 while the noise start stays at ≈ 0.47, which is
why ``start="image"`` is the default for artwork audits; at this moderate memorisation neither separates.
"""
from __future__ import annotations

import hashlib
import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from audit.attacks import AttackSetupError, LossAttack, score_evidence  # noqa: E402
from audit.attacks.calibrated import Calibrated  # noqa: E402
from audit.attacks.clid import CLiD, clip_caption  # noqa: E402
from audit.attacks.wen import Wen, sampling_timesteps  # noqa: E402
from audit.groundtruth.synthetic import ARTISTS, render_artwork  # noqa: E402
from audit.stats import auc_with_ci  # noqa: E402
from audit.targets import Target, load_target  # noqa: E402
from audit.types import EvidenceSet, ImageRecord  # noqa: E402
from tests.conftest import count_forward_calls

RES = 16  # pixels; latents are 8x8
ARTIST = "circles"  # the artist whose works the LoRA is fine-tuned on
N_MEMBERS = 20
POOL = 60  # works of ARTIST split at random into members and held-out works
SEED = 7  # rendering seed of the procedural artworks

_ADJ = ("quiet", "red", "late", "bright", "cold", "golden", "lost", "open", "small", "wild", "pale", "deep")
_NOUN = ("harbour", "garden", "window", "morning", "river", "field", "tower", "dance", "mirror", "forest",
         "storm", "bridge")


def title(artist: str, index: int) -> str:
    """A deterministic title-like caption per work, e.g. "quiet harbour by circles"."""
    h = zlib.crc32(f"{artist}:{index}".encode())
    return f"{_ADJ[h % 12]} {_NOUN[(h // 12) % 12]} by {artist}"


def _pixels(artist: str, indices) -> torch.Tensor:
    arr = np.stack([render_artwork(artist, int(i), size=RES, seed=SEED) for i in indices])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]


def _float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div(127.5).sub(1)


def _evidence(members, held_out, caption=title) -> EvidenceSet:
    """Members (role 'member') then held-out works (role 'nonmember') of ARTIST, with their captions."""
    records, pixels = [], []
    for role, indices in (("member", members), ("nonmember", held_out)):
        px = _pixels(ARTIST, indices)
        for i, p in zip(indices, px):
            records.append(ImageRecord(image_id=hashlib.sha256(p.numpy().tobytes()).hexdigest(),
                                       path=f"mem://{ARTIST}/{i}", role=role, caption=caption(ARTIST, i)))
        pixels.append(px)
    return EvidenceSet(records, torch.cat(pixels))


@dataclass
class FineTune:
    base_dir: Path
    lora_dir: Path
    base: Target  # the public base model (never saw ARTIST's pool)
    tuned: Target  # base + LoRA fine-tuned on the members
    members: list[int]
    held_out: list[int]

    def evidence(self, n_members: int | None = None, n_held_out: int | None = None, **kw) -> EvidenceSet:
        return _evidence(self.members[:n_members], self.held_out[:n_held_out], **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machines two threads under contention made a tiny-UNet
    training step 7-35x slower in CPU time (measured: 0.26 s vs 9.3 s at batch 32 on 16x16 latents)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def finetune(tmp_path_factory) -> FineTune:
    from audit.groundtruth.sd import build_tiny_sd, make_lora, train_tiny_sd

    root = tmp_path_factory.mktemp("finetune")
    # base model: 24 works of each of the five artists (indices 100.., disjoint from the audited pool)
    base_idx = range(100, 124)
    x = torch.cat([_float(_pixels(a, base_idx)) for a in ARTISTS])
    caps = [title(a, i) for a in ARTISTS for i in base_idx]
    build_tiny_sd(root / "init", resolution=RES, seed=0, text_max_length=24)
    base_dir = train_tiny_sd(root / "init", x, caps, steps=80, batch_size=32, lr=2e-3, seed=0,
                             out_dir=root / "base")
    # the fine-tune: a LoRA on a random 20 of ARTIST's works 10..69; the other 40 are held out
    pool = [int(i) for i in 10 + np.random.default_rng(0).permutation(POOL)]
    members, held_out = pool[:N_MEMBERS], pool[N_MEMBERS:]
    lora_dir = make_lora(base_dir, root / "lora", rank=4, seed=0, train_images=_float(_pixels(ARTIST, members)),
                         captions=[title(ARTIST, i) for i in members], steps=200, lr=1e-2, batch_size=N_MEMBERS)
    base = load_target(str(base_dir), local_files_only=True, device="cpu")
    tuned = load_target(str(base_dir), lora=str(lora_dir), local_files_only=True, device="cpu")
    return FineTune(base_dir, lora_dir, base, tuned, members, held_out)


def _score(target, evidence, attacks, batch_size=64, seed=0):
    return score_evidence(target, evidence, attacks, batch_size=batch_size, seed=seed, progress=False)


def _auc(table, attack):
    return auc_with_ci(table.scores(attack, "member"), table.scores(attack, "nonmember"), n_boot=1000, seed=0)


@pytest.fixture(scope="module")
def audit_scores(finetune):
    """The full audit set (20 members, 40 held-out works) scored by every attack at its defaults, as one suite."""
    attacks = {
        "loss": LossAttack(),
        "loss_calibrated": Calibrated(LossAttack(), reference=finetune.base),
        "clid": CLiD(),
        "wen": Wen(),
        "wen_noise": Wen(start="noise"),
    }
    table = _score(finetune.tuned, finetune.evidence(), attacks)
    aucs = {name: _auc(table, name) for name in attacks}
    print("\n" + "\n".join(f"{n:16s} AUC {a.auc:.3f} [{a.lo:.3f}, {a.hi:.3f}]  "
                           f"({a.n_pos} members, {a.n_neg} held out)" for n, a in aucs.items()))
    return table, aucs


# ---------------------------------------------------------------------------------------------- detection
def test_base_calibration_beats_uncalibrated_loss_on_the_fine_tune(audit_scores):
    """docs/methodology.md §2: uncalibrated loss ≈ 0.54 → base-calibrated ≈ 0.90 on a held-out LoRA fine-tune."""
    _, auc = audit_scores
    cal, raw = auc["loss_calibrated"], auc["loss"]
    assert cal.auc > raw.auc + 0.1, (cal, raw)
    assert cal.lo > 0.5 and cal.auc > 0.85, cal


def test_clid_detects_fine_tune_members(audit_scores):
    _, auc = audit_scores
    assert auc["clid"].lo > 0.5, auc["clid"]


def test_calibrated_score_is_exactly_zero_when_reference_is_the_target(finetune):
    ev = finetune.evidence(6, 6)
    same_object = {"cal": Calibrated(LossAttack(timesteps=[100, 300], n_noise=1), reference=finetune.base),
                   "clid_cal": Calibrated(CLiD(timesteps=[500]), reference=finetune.base)}
    table = _score(finetune.base, ev, same_object, batch_size=5)
    assert (table.df["score"] == 0.0).all(), table.df["score"].tolist()
    # the same base model loaded a second time from its folder (the config path) gives exactly 0 too
    reloaded = Calibrated(LossAttack(timesteps=[100, 300], n_noise=1),
                          reference={"source": str(finetune.base_dir), "local_files_only": True, "device": "cpu"})
    table = _score(finetune.base, ev, {"cal": reloaded}, batch_size=5)
    assert (table.df["score"] == 0.0).all(), table.df["score"].tolist()
    # ... while against the fine-tune it is not
    table = _score(finetune.tuned, ev, {"cal": reloaded}, batch_size=5)
    assert (table.df["score"] != 0.0).all()


def test_empty_caption_gives_zero_text_signal(finetune):
    """With caption "" the caption and null conditions coincide: CLiD's gap and Wen's magnitude are exactly 0."""
    ev = finetune.evidence(3, 3, caption=lambda artist, i: "")
    table = _score(finetune.tuned, ev, {"clid": CLiD(timesteps=[300, 500]), "wen": Wen(n_generations=1),
                                        "wen_noise": Wen(start="noise", n_steps=2, n_generations=1)})
    assert (table.df["score"] == 0.0).all(), table.df


# ---------------------------------------------------------------------------------------------- setup
@pytest.mark.parametrize("attack", [CLiD(), Wen(), Wen(start="noise")], ids=["clid", "wen", "wen_noise"])
def test_text_attacks_refuse_unconditional_models(untrained_ddpm, attack):
    # any unconditional DDPM will do; the untrained one costs no training when this module runs alone
    target = load_target(str(untrained_ddpm.model_dir), local_files_only=True, device="cpu")
    with pytest.raises(AttackSetupError, match="text-conditional target"):
        attack.check_target(target)


def test_setup_errors_are_one_line_reasons(finetune):
    with pytest.raises(AttackSetupError, match="reference.source is missing"):
        Calibrated(LossAttack(), reference={"source": "???"}).check_target(finetune.tuned)
    not_a_model = Calibrated(LossAttack(), reference={"source": str(finetune.lora_dir), "local_files_only": True})
    with pytest.raises(AttackSetupError, match="could not load the reference"):
        not_a_model.check_target(finetune.tuned)
    with pytest.raises(AttackSetupError, match="weak conditions"):
        CLiD(weak=["shuffle"]).check_target(finetune.tuned)
    with pytest.raises(AttackSetupError, match="quoted"):  # YAML's bare null
        CLiD(weak=["clip", None]).check_target(finetune.tuned)
    with pytest.raises(AttackSetupError, match="outside the model"):
        CLiD(timesteps=[1000]).check_target(finetune.tuned)
    with pytest.raises(AttackSetupError, match="start must be"):
        Wen(start="prompt").check_target(finetune.tuned)


def test_calibrated_loads_reference_once_and_names_it(finetune, tmp_path):
    attack = Calibrated(LossAttack(), reference={"source": str(finetune.base_dir), "local_files_only": True,
                                                 "device": "cpu", "dtype": "float32"})
    assert attack.evaluations_per_image() == 2 * LossAttack().evaluations_per_image()
    attack.check_target(finetune.tuned)
    ref = attack.reference_target()
    assert attack.reference_target() is ref and ref.fingerprint == finetune.base.fingerprint
    params = attack.params()
    assert params["reference"]["fingerprint"] == finetune.base.fingerprint
    # by content, not by path: the same base in another folder is the same statistic (stored scores stay valid)
    import shutil

    from audit.types import params_hash

    moved = shutil.copytree(finetune.base_dir, tmp_path / "moved_base")
    same = Calibrated(LossAttack(), reference={"source": str(moved), "local_files_only": True, "device": "cpu",
                                               "dtype": "float32"})
    same.check_target(finetune.tuned)
    assert params_hash(same.params()) == params_hash(params)
    assert same.describe()["reference"]["source"] == str(moved)
    assert params["base"] == LossAttack().params()
    described = attack.describe()
    assert described["name"] == "loss_calibrated" and described["evaluations_per_image"] == 12
    assert described["reference"]["fingerprint"] == finetune.base.fingerprint
    assert described["reference"]["source"] == str(finetune.base_dir)
    # another reference is another statistic: its params (and so its cache/ScoreTable hash) differ
    other = Calibrated(LossAttack(), reference=finetune.tuned)
    assert other.params()["reference"]["fingerprint"] != params["reference"]["fingerprint"]


def test_loss_calibrated_config_builds_and_needs_a_reference(finetune):
    from hydra import compose, initialize_config_dir

    from audit.cli import CONFIG_DIR
    from audit.pipeline import build_attacks

    def build(*overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return build_attacks(compose(config_name="audit", overrides=["attack=[loss_calibrated,clid,wen]",
                                                                          *overrides]))

    attacks = build()
    # the config files hold the classes' documented defaults
    assert attacks["loss_calibrated"].attack == LossAttack()
    assert attacks["clid"] == CLiD() and attacks["wen"] == Wen()
    with pytest.raises(AttackSetupError, match="reference.source is missing"):
        attacks["loss_calibrated"].check_target(finetune.tuned)
    attacks = build(f"attack.loss_calibrated.reference.source={finetune.base_dir}",
                    "attack.loss_calibrated.reference.local_files_only=true")
    attacks["loss_calibrated"].check_target(finetune.tuned)
    assert attacks["loss_calibrated"].params()["reference"]["fingerprint"] == finetune.base.fingerprint


# ---------------------------------------------------------------------------------------------- invariants
def _suite(finetune):
    return {
        "loss_cal": Calibrated(LossAttack(timesteps=[100, 300], n_noise=1), reference=finetune.base),
        "clid": CLiD(timesteps=[300, 500]),
        "wen": Wen(n_steps=2, n_generations=2),
        "wen_noise": Wen(start="noise", n_steps=2, n_generations=1),
    }


def test_same_seed_same_scores_other_seed_differs(finetune):
    ev = finetune.evidence(3, 3)
    a = _score(finetune.tuned, ev, _suite(finetune), seed=7)
    b = _score(finetune.tuned, ev, _suite(finetune), seed=7)
    c = _score(finetune.tuned, ev, _suite(finetune), seed=8)
    assert a.df["score"].tolist() == b.df["score"].tolist()
    for name in _suite(finetune):
        sa, sc = (t.df[t.df.attack == name]["score"].to_numpy() for t in (a, c))
        assert not np.allclose(sa, sc), name


def test_batch_size_invariant(finetune):
    ev = finetune.evidence(3, 3)
    one = _score(finetune.tuned, ev, _suite(finetune), batch_size=1)
    six = _score(finetune.tuned, ev, _suite(finetune), batch_size=6)
    m = one.df.merge(six.df, on=["image_id", "attack"], suffixes=("_1", "_6"))
    assert len(m) == len(one.df) == 6 * 4
    np.testing.assert_allclose(m["score_1"], m["score_6"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["loss_cal", "clid", "wen", "wen_noise"])
def test_declared_evaluations_match_unet_calls(finetune, name):
    from diffusers import UNet2DConditionModel

    attack = _suite(finetune)[name]
    ev = finetune.evidence(3, 2)
    before = finetune.tuned.unet_evals, finetune.base.unet_evals
    with count_forward_calls(UNet2DConditionModel) as calls:
        _score(finetune.tuned, ev, {name: attack}, batch_size=4)
    on_target = finetune.tuned.unet_evals - before[0]
    on_reference = finetune.base.unet_evals - before[1]
    assert calls["n"] == attack.evaluations_per_image() * 5 == on_target + on_reference
    # a calibrated attack spends half of its evaluations on the reference, counted there
    assert on_reference == (on_target if name == "loss_cal" else 0)


def test_suite_shares_the_caption_and_null_predictions(finetune):
    """CLiD reuses LossAttack's true-caption ε̂; Wen's image start (t = 481) reuses both of CLiD's ε̂ there."""
    assert sampling_timesteps(finetune.tuned, 50)[25] == 481
    suite = {"loss": LossAttack(timesteps=[100, 481], n_noise=1),
             "clid": CLiD(timesteps=[100, 481], n_noise=1, weak=["null"]),
             "wen": Wen(start="image", strength=0.5, n_generations=1)}
    ev = finetune.evidence(3, 2)
    before = finetune.tuned.unet_evals
    together = _score(finetune.tuned, ev, suite)
    alone = sum(a.evaluations_per_image() for a in suite.values())
    assert alone == 2 + 4 + 2
    assert finetune.tuned.unet_evals - before == 5 * (alone - 2 - 2)  # 2 shared by CLiD, 2 by Wen
    for name, attack in suite.items():
        single = _score(finetune.tuned, ev, {name: attack})
        np.testing.assert_allclose(single.df["score"], together.df[together.df.attack == name]["score"], rtol=1e-6)


def test_clid_caption_clipping_covers_the_caption():
    caption = "quiet harbour by circles"
    pieces = [clip_caption(caption, j, 3) for j in range(3)]
    assert "".join(pieces) == caption and all(pieces)
    assert CLiD().evaluations_per_image() == 3 * 1 * (1 + 3 + 1)
    assert CLiD(weak=["null"], n_noise=2).evaluations_per_image() == 3 * 2 * 2
