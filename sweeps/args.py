"""Flags shared by every sweep entry script (tracking, storage, Ray, naming)."""

from __future__ import annotations

import argparse


def add_sweep_arguments(parser: argparse.ArgumentParser, experiment: str) -> None:
    """Where results go and how the sweep runs."""
    group = parser.add_argument_group("sweep")
    group.add_argument("--name", default=None, help="sweep name; rerunning with the same name resumes it (default: derived from task and size)")
    group.add_argument("--experiment", default=experiment, help="MLflow experiment (default %(default)s)")
    group.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else sqlite under runs/)")
    group.add_argument("--storage-path", default=None, help="Ray storage for trial checkpoints: a local path, NFS, or s3:// (default $RCGM_STORAGE_PATH, else runs/ray-results)")
    group.add_argument("--address", default=None, help="Ray cluster address (default RAY_ADDRESS, else a local Ray)")
    group.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once (default: what the CPUs/GPUs fit)")
    group.add_argument("--no-report", action="store_true", help="skip the dashboards report at the end")
    group.add_argument("--dry-run", action="store_true", help="validate and print the plan, start nothing")
    group.add_argument("--verbose", action="store_true", help="Ray's and Tune's own output (start-up lines, trial "
                       "tables, trial processes' logs) instead of the compact progress view")
    group.add_argument("--trial-runner", default="auto", help="inline: a trial runs in its Tune process (fast start); train: a Ray Train "
                       "TorchTrainer per trial; auto (default): inline for one-worker trials, train for DDP")
