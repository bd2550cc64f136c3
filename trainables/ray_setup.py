"""Starting or joining Ray with the environment every trial worker needs, quiet unless asked."""

from __future__ import annotations

import logging
import os

# Quiet, telemetry-free workers: Train V2 otherwise tees each worker print into its logger.
WORKER_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # one "View run" line per trial otherwise
    "PYTHONUNBUFFERED": "1",
    # Ray workers run many threads, and glibc gives each its own heap arena, kept once grown: two
    # arenas took a Moons trial process from ~1.35 to ~1.23 GB resident here (docs/benchmarks.md).
    "MALLOC_ARENA_MAX": "2",
}
# Ray 2.60 warns at every start of a local cluster that token auth is on (it is: we keep it on).
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_driver_logs(verbose: bool) -> None:
    """Keep Ray's, Tune's and MLflow's INFO lines (and Ray's token-auth notice) out of the sweep's console.

    Call before MLflow is imported: it sets its loggers' level from MLFLOW_LOGGING_LEVEL at import.
    A variable the user set is left as it is.
    """
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # MLflow prints "View run ... at" for every run closed against a server (the parent, stopped trials).
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # Tune's new output engine prints its configuration box even at verbose=0; the legacy one is silent at 0.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    level = logging.INFO if verbose else logging.WARNING
    for name in ("ray", "mlflow"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.INFO if verbose else logging.ERROR)


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = True):
    """Join address / RAY_ADDRESS (a cluster, or inside `ray job submit`), else start a local Ray.

    verbose=False keeps Ray's start-up lines out of the console and does not forward the trial
    processes' output to this driver (trial errors still reach it through Tune).
    """
    import ray

    if ray.is_initialized():
        return ray
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    quiet_driver_logs(verbose)
    options = {"logging_level": logging.INFO if verbose else logging.WARNING, "log_to_driver": verbose}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # No runtime_env here: inside a Ray job it would replace the job's working_dir.
        ray.init(address=address, **options)
    else:
        # A local Ray's processes inherit this process's environment, WORKER_ENV included.
        # The dashboard is what Train's state polling talks to; without it, warnings every few seconds.
        ray.init(num_cpus=num_cpus, include_dashboard=True, **options)
    return ray
