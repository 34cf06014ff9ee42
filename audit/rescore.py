"""``audit-verify <folder> --rescore N``: recompute a sample of a results folder's scores with the model.

The seal and the recomputed analysis show that the analysis follows from the stored scores; they cannot show that
the scores follow from the model and the works (a run that reused scores from a store took them on trust, issue
25). This recomputes ``N`` scores (``--rescore all``: every one), drawn with a fixed seed from the attacks whose
scores were reused (``run.json`` ``score_provenance``; all attacks when it does not say), from the works on disk —
each file must still have the recorded SHA-256 — and the model named in the folder's ``config.yaml``, and compares
them with ``scores.parquet``.

What is instantiated: the folder's ``target`` and ``attack`` sections after :func:`audit.safety.check_instantiable`
(only the project's own classes and :func:`audit.targets.load_target`; nothing else a crafted folder names).
``--target-source`` points at the model where it lies on this machine (its fingerprint must be the recorded one).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from audit import io

__all__ = ["rescore"]

#: scores of the same image computed in another batch differ in the last float32 digits only
RTOL, ATOL = 1e-4, 1e-5


def _config(d: Path) -> dict[str, Any]:
    from audit.safety import check_instantiable

    cfg = yaml.safe_load((d / io.CONFIG).read_text()) if (d / io.CONFIG).is_file() else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("target"), dict) or not isinstance(cfg.get("attack"), dict):
        raise ValueError(f"{d / io.CONFIG}: no target and attack configuration to rescore with")
    check_instantiable({"target": cfg["target"], "attack": cfg["attack"]})
    return cfg


def rescore(folder: str | Path, n: int | None, *, target_source: str | None = None, device: str = "cpu",
            seed: int = 0, batch_size: int = 8) -> tuple[list[str], list[str]]:
    """Recompute ``n`` (None: all) stored scores of ``folder``. Returns ``(problems, notes)``."""
    from hydra.utils import instantiate

    from audit.attacks import score_evidence
    from audit.data import ImageRejected, validate_and_load
    from audit.types import EvidenceSet, ImageRecord, params_hash

    d = Path(folder)
    cfg = _config(d)
    run = io.read_run(d)
    scores = run.scores.df
    prov = (run.metadata.get("score_provenance") or {}).get("attacks") or {}
    reused = [a for a, p in prov.items() if int(p.get("reused", 0)) > 0]
    pool = scores[scores["attack"].isin(reused)] if reused else scores
    pool = pool[pool["attack"].isin(list(cfg["attack"]))]
    if pool.empty:
        return [], ["no stored score to rescore (no attack of the folder's config)"]
    k = len(pool) if n is None else min(int(n), len(pool))
    sample = pool.sample(n=k, random_state=seed) if k < len(pool) else pool
    tcfg = dict(cfg["target"])
    if target_source:
        tcfg["source"] = target_source
    tcfg["device"], tcfg["local_files_only"] = device, True
    target = instantiate(tcfg, _convert_="all")
    recorded_fp = set(scores["target_fingerprint"].astype(str))
    if {str(target.fingerprint)} != recorded_fp:
        return [f"rescore: the model loaded has fingerprint {str(target.fingerprint)[:16]}…, the scores were computed "
                f"with {sorted(recorded_fp)[0][:16]}…"], []
    images = run.images.set_index("image_id") if not run.images.empty else pd.DataFrame()
    problems, n_same, worst = [], 0, 0.0
    seed_run = int(run.metadata.get("seed", cfg.get("seed", 0)))
    for attack_name, rows in sample.groupby("attack", sort=False):
        spec = cfg["attack"][attack_name]
        attack = instantiate(spec, _convert_="all")
        if params_hash(attack.params()) not in set(rows["attack_params_hash"]):
            problems.append(f"rescore: attack {attack_name!r} of config.yaml has other parameters than its scores")
            continue
        records, pixels = [], []
        for iid in dict.fromkeys(rows["image_id"]):
            if iid not in images.index:
                problems.append(f"rescore: image {iid[:12]}… is not in {io.IMAGES}")
                continue
            rec = images.loc[iid]
            try:
                arr, _ = validate_and_load(str(rec["path"]), target.info.resolution, expected_sha256=str(iid))
            except ImageRejected as e:
                problems.append(f"rescore: {rec['path']}: {e.reason}")
                continue
            records.append(ImageRecord(image_id=str(iid), path=str(rec["path"]), role=str(rec["role"]),
                                       caption=str(rec.get("caption", "") or "")))
            pixels.append(torch.from_numpy(arr).permute(2, 0, 1))
        if not records:
            continue
        ev = EvidenceSet(records, torch.stack(pixels))
        fresh = score_evidence(target, ev, {attack_name: attack}, batch_size=batch_size, seed=seed_run,
                               progress=False).df.set_index("image_id")["score"]
        for r in rows.itertuples(index=False):
            if r.image_id not in fresh.index:
                continue
            now, stored = float(fresh[r.image_id]), float(r.score)
            same = math.isclose(now, stored, rel_tol=RTOL, abs_tol=ATOL) or (np.isnan(now) and np.isnan(stored))
            worst = max(worst, abs(now - stored) / max(abs(stored), 1e-12)) if np.isfinite(now - stored) else worst
            if same:
                n_same += 1
            else:
                problems.append(f"rescore: {attack_name} score of {r.image_id[:12]}… is {stored!r} in {io.SCORES}, "
                                f"{now!r} recomputed with the model")
    notes = [f"{n_same} of {len(sample)} sampled scores recomputed with the model agree (largest relative "
             f"difference {worst:.1e})"]
    return problems, notes
