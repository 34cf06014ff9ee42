"""Hydra launcher plugins of diffusion-membership-audit (Hydra accepts launchers only from the ``hydra_plugins``
namespace): hydra-submitit-launcher's Local / Slurm launchers, each sweep point expanded into score-shard jobs and
a dependent merge-and-report job. The logic lives in :mod:`audit.parallel.launcher`; selected by ``launcher=local``
/ ``launcher=slurm`` (configs/launcher/, configs/hydra/launcher/audit_*.yaml)."""
from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # pragma: no cover - the optional [scale] extra is not installed
    LocalLauncher = SlurmLauncher = None

if LocalLauncher is not None:
    from audit.parallel.launcher import ShardedMixin

    class ShardedLocalLauncher(ShardedMixin, LocalLauncher):
        """``launcher=local``: shard jobs as local processes (submitit's local executor), then the merge job."""

    class ShardedSlurmLauncher(ShardedMixin, SlurmLauncher):
        """``launcher=slurm``: a SLURM job array of shards and a merge-and-report job with ``afterok`` on it."""
else:  # pragma: no cover
    from hydra.plugins.launcher import Launcher

    class _Missing(Launcher):
        def __init__(self, **params: Any) -> None:
            raise ValueError("launcher=local|slurm needs hydra-submitit-launcher: pip install "
                             "'diffusion-membership-audit[scale]' (or pip install hydra-submitit-launcher)")

        def setup(self, **kwargs: Any) -> None: ...

        def launch(self, job_overrides: Any, initial_job_idx: int) -> Any: ...

    class ShardedLocalLauncher(_Missing):
        pass

    class ShardedSlurmLauncher(_Missing):
        pass
