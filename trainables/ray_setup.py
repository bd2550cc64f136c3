"""Starting or joining Ray with the environment every trial worker needs."""

from __future__ import annotations

import os

# Quiet, telemetry-free workers: Train V2 otherwise tees each worker print into its logger.
WORKER_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONUNBUFFERED": "1",
}


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Join address / RAY_ADDRESS (a cluster, or inside `ray job submit`), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return ray
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # No runtime_env here: inside a Ray job it would replace the job's working_dir.
        ray.init(address=address)
    else:
        # A local Ray's processes inherit this process's environment, WORKER_ENV included.
        # The dashboard is what Train's state polling talks to; without it, warnings every few seconds.
        ray.init(num_cpus=num_cpus, include_dashboard=True)
    return ray
