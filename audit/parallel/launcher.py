"""Sharded audits through Hydra's submitit launcher plugin (``hydra-submitit-launcher``).

``audit-run -m launcher=local|slurm runtime.shards=N <overrides>`` turns each point of the sweep into N shard jobs
(a job array on SLURM) and one merge-and-report job that depends on them (``afterok`` on SLURM; run after the
shards finished with the local executor). The launchers below are the plugin's own ``LocalLauncher`` /
``SlurmLauncher`` (``hydra_plugins.audit_scale``: Hydra takes launchers only from that namespace) with one change,
:meth:`ShardedMixin.launch`: which jobs are made from a sweep point. Every
job runs exactly what ``audit-run`` runs (the plugin's ``__call__``), with ``runtime.shard=<i>`` or
``runtime.shard=merge`` and ``runtime.shard_dir=<sweep dir>/<n>_shards``.

``hydra.launcher.dry_run=true`` submits nothing: it writes, into the sweep folder, the SLURM submission a cluster
would get as plain scripts — ``shards.sbatch`` (a job array, one task per shard), ``merge.sbatch`` and
``submit.sh`` (submits the array, then the merge with ``--dependency=afterok:<array id>``) — whose ``#SBATCH``
header is made by submitit from the same parameters (partition, GPUs, time, array parallelism, …), and
``launch.json`` with every job's overrides. A failed or pre-empted shard is rerun alone with the command printed
for it (``runtime.shard=<i>``) and reuses the batches it had finished (the score store).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

_SHARD_KEYS = ("runtime.shard=", "runtime.shards=", "runtime.shard_dir=", "launcher=", "+launcher=")


def worker_rank_argv(argv: list[str]) -> list[str]:
    """``accelerate launch`` / ``torchrun`` ranks > 0 get a throw-away Hydra run folder: only rank 0 writes the
    results folder (its plan, scores, analysis, report and seal)."""
    from audit.parallel.shards import _distributed_env

    env = _distributed_env()
    if env is None or env[0] == 0 or any(a in ("-m", "--multirun") for a in argv):
        return argv
    tmp = tempfile.mkdtemp(prefix=f"audit-rank{env[0]}-")
    return [*argv, f"hydra.run.dir={_q(tmp)}", "hydra.output_subdir=null"]


def _q(value: Any) -> str:
    """A value as a Hydra override value (quoted unless it is a plain path / word)."""
    s = str(value)
    if re.fullmatch(r"[\w./:@+-]+", s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shard_overrides(overrides: Sequence[str], n: int, shard_dir: Path, sweep_dir: Path, point: int
                    ) -> tuple[list[list[str]], list[str]]:
    """(the N shard jobs' overrides, the merge job's overrides) for one sweep point."""
    base = [o for o in overrides if not o.startswith(_SHARD_KEYS)]
    common = base + [f"runtime.shards={n}", f"runtime.shard_dir={_q(shard_dir)}", f"hydra.sweep.dir={_q(sweep_dir)}"]
    shards = [common + [f"runtime.shard={i}", f"hydra.sweep.subdir={point}_shard-{i}-of-{n}"] for i in range(n)]
    merge = common + ["runtime.shard=merge", f"hydra.sweep.subdir={point}_merge"]
    return shards, merge


class ShardedMixin:
    """Expands each sweep point into shard jobs + a dependent merge job (see the module docstring)."""

    def __init__(self, shards: int | None = None, dry_run: bool = False, **params: Any) -> None:
        super().__init__(**params)  # type: ignore[call-arg]
        self.shards = shards
        self.dry_run = bool(dry_run)

    # the plugin's executor set-up (BaseSubmititLauncher.launch), kept as it is there
    def _executor(self) -> Any:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        params = self.params  # type: ignore[attr-defined]
        init_params = {"folder": params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items()  # type: ignore[attr-defined]
                              if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)  # type: ignore[attr-defined]
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{x if x in baseparams else f"{self._EXECUTOR}_{x}": y  # type: ignore
                                      for x, y in params.items() if x not in init_keys})
        return executor

    def _n_shards(self, overrides: Sequence[str]) -> int:
        n = self.shards
        for o in overrides:
            if o.startswith("runtime.shards="):
                n = o.split("=", 1)[1]
        if n is None:
            n = self.config.runtime.get("shards", 1)  # type: ignore[attr-defined]
        try:
            n = int(n)
        except (TypeError, ValueError):
            n = -1
        if n < 1:
            raise ValueError(f"runtime.shards must be a positive integer, got {n!r}")
        return n

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from hydra.core.singleton import Singleton

        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()  # type: ignore[attr-defined]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        results = []
        plans = []
        for k, overrides in enumerate(job_overrides):
            point = initial_job_idx + k
            n = self._n_shards(overrides)
            shard_dir = sweep_dir / f"{point}_shards"
            shard_ovs, merge_ov = shard_overrides(overrides, n, shard_dir, sweep_dir, point)
            plans.append({"point": point, "overrides": list(overrides), "shards": n, "shard_dir": str(shard_dir),
                          "shard_jobs": shard_ovs, "merge_job": merge_ov})
            if self.dry_run:
                self._write_dry_run(sweep_dir, point, n, shard_dir, overrides)
                continue
            executor = self._executor()
            first = point * (n + 1)
            state = Singleton.get_state()
            log.info("sweep point #%d: %d shard jobs + a merge job (shards meet in %s)", point, n, shard_dir)
            jobs = executor.map_array(self, shard_ovs, ["hydra.sweep.dir"] * n, list(range(first, first + n)),
                                      [f"shard_{point}_{i}" for i in range(n)], [state] * n)
            if self._EXECUTOR == "slurm":  # type: ignore[attr-defined]
                array_id = str(jobs[0].job_id).split("_")[0]
                extra = dict(self.params.get("additional_parameters") or {})  # type: ignore[attr-defined]
                extra["dependency"] = f"afterok:{array_id}"
                executor.update_parameters(slurm_additional_parameters=extra)
                print(f"submitted shards as array job {array_id}; merge-and-report job depends on it (afterok)")
            else:
                self._wait_for_shards(jobs, shard_ovs)
            merge = executor.submit(self, merge_ov, "hydra.sweep.dir", first + n, f"merge_{point}", state)
            print(f"merge-and-report job {merge.job_id} (results in {sweep_dir / f'{point}_merge'})")
            results.append(merge.results()[0])
        (sweep_dir / "launch.json").write_text(json.dumps({"executor": self._EXECUTOR,  # type: ignore
                                                           "dry_run": self.dry_run, "points": plans}, indent=1))
        return results

    @staticmethod
    def _wait_for_shards(jobs: list[Any], shard_ovs: list[list[str]]) -> None:
        failed = []
        for i, job in enumerate(jobs):
            try:
                job.results()
            except Exception as e:  # noqa: BLE001 - collect every failed shard, then one line naming them
                failed.append((i, job, e))
        if failed:
            lines = [f"shard {i} failed ({type(e).__name__}; log: {job.paths.stderr}); rerun it alone: "
                     + rerun_command(shard_ovs[i]) for i, job, e in failed]
            for line in lines:
                print(line, file=sys.stderr)
            raise ValueError(f"{len(failed)} of {len(jobs)} shard jobs failed ({', '.join(str(i) for i, _, _ in failed)}): "
                             "rerun them alone (they reuse their finished batches), then the merge "
                             "(runtime.shard=merge)")

    # ------------------------------------------------------------------ dry run: the SLURM submission as files
    def _write_dry_run(self, sweep_dir: Path, point: int, n: int, shard_dir: Path, overrides: Sequence[str]) -> None:
        from submitit.slurm.slurm import _make_sbatch_string

        params = self._slurm_parameters()
        base = [o for o in overrides if not o.startswith(_SHARD_KEYS)]
        common = base + [f"runtime.shards={n}", f"runtime.shard_dir={_q(shard_dir)}"]
        py = [sys.executable, "-u", "-m", "audit"]
        logs = sweep_dir / ".submitit" / f"{point}_%j"
        shard_cmd = " ".join([*map(shlex.quote, py), *map(shlex.quote, common), "runtime.shard=${SLURM_ARRAY_TASK_ID}",
                              shlex.quote(f"hydra.run.dir={sweep_dir}/{point}_shard-") + "${SLURM_ARRAY_TASK_ID}"
                              + shlex.quote(f"-of-{n}")])
        merge_cmd = " ".join([*map(shlex.quote, py), *map(shlex.quote, common), "runtime.shard=merge",
                              shlex.quote(f"hydra.run.dir={sweep_dir}/{point}_merge")])
        shard_params = {**params, "job_name": f"{params.get('job_name', 'audit')}-shards"}
        merge_params = {k: v for k, v in params.items() if k not in ("gpus_per_node", "gpus_per_task", "gres")}
        merge_params.update(job_name=f"{params.get('job_name', 'audit')}-merge", **self._merge_resources())
        folder = sweep_dir / f"{point}_slurm"
        folder.mkdir(parents=True, exist_ok=True)
        shards_txt = _make_sbatch_string(command=shard_cmd, folder=logs, map_count=n, **shard_params)
        merge_txt = _make_sbatch_string(command=merge_cmd, folder=logs, **merge_params)
        (folder / "shards.sbatch").write_text(shards_txt)
        (folder / "merge.sbatch").write_text(merge_txt)
        submit = ["#!/bin/bash", "# Submits the shard array, then the merge-and-report job once every shard succeeded.",
                  "set -euo pipefail", f"cd {shlex.quote(os.getcwd())}",
                  f"array=$(sbatch --parsable {shlex.quote(str(folder / 'shards.sbatch'))})",
                  'array=${array%%;*}',
                  f"merge=$(sbatch --parsable --dependency=afterok:$array {shlex.quote(str(folder / 'merge.sbatch'))})",
                  'echo "shards: array job $array; merge-and-report: job $merge"', ""]
        (folder / "submit.sh").write_text("\n".join(submit))
        os.chmod(folder / "submit.sh", 0o755)
        reruns = [rerun_command(common + [f"runtime.shard={i}"]) for i in range(n)]
        (folder / "rerun_one_shard.txt").write_text("\n".join(reruns) + "\n")
        print(f"dry run: SLURM submission for {n} shards written to {folder} (submit.sh, shards.sbatch, merge.sbatch); "
              "nothing submitted")

    def _slurm_parameters(self) -> dict[str, Any]:
        """The sbatch parameters submitit would use: the plugin's keys mapped and checked by submitit's own
        SlurmExecutor (made here without its check for ``srun``, so that a dry run works off the cluster)."""
        from submitit.slurm.slurm import SlurmExecutor

        class DryRunSlurm(SlurmExecutor):
            @classmethod
            def affinity(cls) -> int:
                return 1

        ex = DryRunSlurm(folder=tempfile.mkdtemp(prefix="audit-dry-"))
        params = {k: v for k, v in self.params.items()  # type: ignore[attr-defined]
                  if k not in ("submitit_folder", "max_num_timeout") and v is not None}
        ex.update_parameters(**ex._convert_parameters(params))
        return dict(ex.parameters)

    def _merge_resources(self) -> dict[str, Any]:
        return {}


def rerun_command(overrides: Sequence[str]) -> str:
    """The command that reruns one job alone (no launcher): ``audit-run <overrides>``."""
    return " ".join(["audit-run", *(shlex.quote(o) for o in overrides if not o.startswith("hydra.sweep."))])
