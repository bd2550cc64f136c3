"""Starting or joining Ray with the environment every trial worker needs, quiet unless asked."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

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


class RayUnavailable(RuntimeError):
    """The Ray cluster to join does not answer; the message says where the address came from and what to change."""


def current_cluster_file() -> Path:
    """Where `ray start` records the cluster that `ray.init()` with no address joins (Ray 2.60's rule)."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(temp) / "ray" / "ray_current_cluster"


def _host_port(address: str) -> tuple[str, int] | None:
    """('127.0.0.1', 6379) from '127.0.0.1:6379' or 'ray://host:10001'; None when there is no port."""
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    return (host or "127.0.0.1", int(port)) if sep and port.isdigit() else None


def answers(host: str, port: int, timeout: float) -> bool:
    """True when a TCP connection to host:port opens within timeout (retrying: a head may be starting)."""
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            if time.time() >= deadline:
                return False
            time.sleep(1)


def resolve_ray_address(address: str | None = None, timeout: float = 15.0) -> str | None:
    """The Ray cluster a driver joins, checked to answer; None means "start a local Ray".

    In Ray's order: the address given (--address), RAY_ADDRESS, then the current-cluster file a
    `ray start` left. Ray itself retries a dead address for minutes without a word: this refuses it
    within `timeout` seconds, naming where the address came from.
    """
    source = "--address"
    if not address:
        address, source = os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS"
    if address == "local":
        return None
    if address and address.startswith(("http://", "https://")):
        raise RayUnavailable(f"{source}={address} is a dashboard (job API) address: a driver joins the cluster at its "
                             f"GCS address, host:6379 (keep the http:// one in RAY_API_SERVER_ADDRESS for `ray job submit`)")
    stale = None
    if not address or address == "auto":
        file = current_cluster_file()
        recorded = file.read_text().strip() if file.is_file() else ""
        if not recorded:
            if address == "auto":
                raise RayUnavailable(f"{source}=auto but no Ray cluster is recorded in {file}: start one with `ray start "
                                     f"--head`, or unset RAY_ADDRESS to start a local Ray")
            return None
        address, source, stale = recorded, f"Ray's current-cluster file {file}", file
    where = _host_port(address)
    if where is None:
        raise RayUnavailable(f"Ray address {address!r} (from {source}) has no port: pass host:port to --address / RAY_ADDRESS")
    if not answers(*where, timeout=timeout):
        fix = (f"delete {stale} (a Ray head that stopped uncleanly leaves it), or pass --address / set RAY_ADDRESS"
               if stale else "start the cluster, or fix --address / RAY_ADDRESS (unset both for a local Ray)")
        raise RayUnavailable(f"no Ray cluster answers at {address} (from {source}) within {timeout:.0f} s: {fix}")
    return address


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = True):
    """Join address / RAY_ADDRESS / the recorded cluster (checked to answer), else start a local Ray.

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
    address = resolve_ray_address(address)
    if address:
        # No runtime_env here: inside a Ray job it would replace the job's working_dir.
        ray.init(address=address, **options)
    else:
        # A local Ray's processes inherit this process's environment, WORKER_ENV included.
        # The dashboard is what Train's state polling talks to; without it, warnings every few seconds.
        ray.init(num_cpus=num_cpus, include_dashboard=True, **options)
    return ray


def node_tags() -> dict[str, str]:
    """The Ray node this process runs on (id and address), as run tags: which node ran a trial."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    # The address the node joined with (--node-ip-address), not this host's first interface.
    ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), "")
    return {"ray.node_id": node_id, "ray.node_ip": ip}
