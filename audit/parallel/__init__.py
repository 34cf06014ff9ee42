"""Scale-out: one audit over several processes (``accelerate launch``) or cluster jobs (Hydra's submitit
launcher, ``launcher=local|slurm``), merged through the content-keyed score store into one results folder; and
the denoiser's throughput settings. See :mod:`audit.parallel.executors` (one executor per mode),
:mod:`audit.parallel.shards` (batch assignment, shard records), :mod:`audit.parallel.launcher`, :mod:`audit.parallel.speed`."""
from audit.parallel.executors import EXECUTORS, DistributedRun, MergeJob, ScaleRun, ShardJob, SingleRun
from audit.parallel.shards import (MERGE, EvalProgress, assign_batches, batch_keys, record_name, shard_batches,
                                   validate_scale_config)
from audit.parallel.speed import apply_speed_settings, probe_batch_size, validate_speed_config

__all__ = ["EXECUTORS", "DistributedRun", "MergeJob", "ScaleRun", "ShardJob", "SingleRun", "MERGE", "EvalProgress",
           "assign_batches", "batch_keys", "record_name", "shard_batches", "validate_scale_config", "apply_speed_settings", "probe_batch_size", "validate_speed_config"]
