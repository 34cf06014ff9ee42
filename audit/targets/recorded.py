"""The merge job's target: what the merge needs of the target, read from the shard records (no model loaded).

A sharded run's merge job (:mod:`audit.parallel.shards`) scores nothing: every score is in the shards' store, so
it needs only the identity, placement and description the shards recorded. It conforms to
:class:`~audit.targets.protocol.AuditTarget` and offers none of the optional capabilities (no process, no encode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from audit.targets.protocol import AuditTarget


@dataclass
class RecordedTarget(AuditTarget):
    """What the merge needs of the target, read from the shard records instead of loading the model."""

    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    info: Any
    unet_evals: int = 0
    conditional: bool = False
    #: a sharded run scores a model (the merge treats it as one, as the shards did)
    access: ClassVar[str] = "white"


class _Info:
    """A recorded ``target_info`` (``TargetInfo.to_dict()`` as the shards wrote it)."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)
        self.resolution = int(values["resolution"])
        self.conditional = bool(values.get("conditional", False))
        self.fingerprint = str(values.get("fingerprint", ""))
        self.kind = str(values.get("kind", ""))

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)
