"""Run configured attacks over an evidence set and collect a ScoreTable."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from audit.attacks.base import Attack, Batch, NoiseSource
from audit.targets.base import Target
from audit.types import EvidenceSet, ScoreTable, params_hash


def score_evidence(
    target: Target,
    evidence: EvidenceSet,
    attacks: Mapping[str, Attack],
    *,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> ScoreTable:
    """Score every accepted image with every attack.

    Images are encoded (and captions embedded) once per batch and shared by all attacks. Each attack's
    target check runs before any work, so a misconfigured run fails at once with a one-line reason.
    """
    if not attacks:
        raise ValueError("no attacks configured")
    for attack in attacks.values():
        attack.check_target(target)
    hashes = {name: params_hash(a.params()) for name, a in attacks.items()}
    columns: dict[str, list] = {k: [] for k in ("image_id", "role", "attack", "attack_params_hash", "score")}
    n = len(evidence)
    bar = tqdm(total=n, desc="scoring", unit="img", disable=not progress)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            recs = evidence.records[start:stop]
            ids = [r.image_id for r in recs]
            captions = [r.caption for r in recs]
            pixels = evidence.batch(start, stop)
            batch = Batch(
                x0=target.encode(pixels),
                cond=target.encode_text(captions) if target.conditional else None,
                captions=captions,
                image_ids=ids,
                noise_source=NoiseSource(seed, ids),
                pixels=pixels,
            )
            for name, attack in attacks.items():
                s = attack.score(target, batch).detach().float().cpu().tolist()
                columns["image_id"] += ids
                columns["role"] += [r.role for r in recs]
                columns["attack"] += [name] * len(ids)
                columns["attack_params_hash"] += [hashes[name]] * len(ids)
                columns["score"] += s
            bar.update(stop - start)
    bar.close()
    df = pd.DataFrame(columns)
    df["target_fingerprint"] = target.fingerprint
    df["seed"] = int(seed)
    return ScoreTable(df)
