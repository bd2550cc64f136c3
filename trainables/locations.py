"""Where things go by default: the runs folder, the MLflow store, checkpoints, reports, caches.

Standard library only, so every layer may import it (the parts layer for its caches, the
dashboards for the tracking URI). Anchored to the repository, not the working directory: Ray
workers run in per-trial directories, where a relative path would land somewhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def runs_dir() -> Path:
    """$RCGM_RUNS_DIR, else runs/ in the repository: the embedded default's store, checkpoints and reports."""
    return Path(os.environ.get("RCGM_RUNS_DIR") or REPO_ROOT / "runs").resolve()


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set, else SQLite under the runs folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_dir() / 'mlflow.db'}"


def default_storage_path() -> str:
    """Ray Train/Tune storage for checkpoints and Tune state: $RCGM_STORAGE_PATH, else runs/ray-results.

    A cluster's nodes set RCGM_STORAGE_PATH to the folder (or s3:// URI) they all share.
    """
    return os.environ.get("RCGM_STORAGE_PATH") or str(runs_dir() / "ray-results")


def default_optuna_storage() -> str:
    """The Optuna study database beside the MLflow store (optuna-dashboard opens it)."""
    return f"sqlite:///{runs_dir() / 'optuna.db'}"


def safe_name(text: str) -> str:
    """A name safe for folders and Ray run names."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-") or "unnamed"


def reports_dir(label: str) -> Path:
    """runs/reports/<label>/: where a sweep's HTML report, figures and parquet go."""
    return runs_dir() / "reports" / safe_name(label)


def cache_dir() -> Path:
    """$RCGM_CACHE_DIR, else runs/.cache in the repository: datasets' derived files, metric weights."""
    return Path(os.environ.get("RCGM_CACHE_DIR") or REPO_ROOT / "runs" / ".cache")


def data_root() -> Path:
    """Where torchvision datasets live: $RCGM_DATA_DIR, else <cache>/data."""
    return Path(os.environ.get("RCGM_DATA_DIR") or cache_dir() / "data")


class TemporaryLocation(RuntimeError):
    """A default location would land in a folder that Ray deletes; the message says what to set."""


def temporary_checkout() -> bool:
    """True when this code runs from Ray's temporary copy of a job's working dir (`ray job submit --working-dir`).

    Ray unpacks the working dir under <ray temp>/session_*/runtime_resources/working_dir_files/ and
    deletes it with the session: anything written relative to the code is lost.
    """
    return "runtime_resources" in REPO_ROOT.parts and "working_dir_files" in REPO_ROOT.parts


def _local_path(location: str | None) -> str | None:
    """The file or folder a location writes to on this disk (a sqlite URI's file), None for a server or s3://."""
    if not location:
        return None
    if location.startswith("sqlite:///"):
        return location[len("sqlite:///"):]
    return None if "://" in location else location


def lost_with_the_job(tracking_uri: str, storage_path: str, optuna_storage: str | None = None) -> list[str]:
    """The results that would be written into the job's temporary copy, as 'what (the setting that moves it)'."""
    if not temporary_checkout():
        return []
    checks = [("the MLflow store (set MLFLOW_TRACKING_URI to a server every node reaches, or --tracking-uri)", tracking_uri),
              ("the checkpoints (set RCGM_STORAGE_PATH to a folder every node shares, or --storage-path)", storage_path),
              ("the Optuna study (set RCGM_RUNS_DIR, or --optuna-storage)", optuna_storage)]
    inside = []
    for what, location in checks:
        path = _local_path(location)
        if path and Path(path).resolve().is_relative_to(REPO_ROOT):
            inside.append(what)
    return inside


def check_not_temporary(tracking_uri: str, storage_path: str, optuna_storage: str | None = None) -> None:
    """Refuse a job whose tracking, checkpoints or study would default into Ray's temporary copy of the code."""
    lost = lost_with_the_job(tracking_uri, storage_path, optuna_storage)
    if lost:
        raise TemporaryLocation(f"this runs as a Ray job from Ray's temporary copy of the working dir ({REPO_ROOT}), which "
                                f"Ray deletes with the job; " + " and ".join(lost) + " would be written there. Give the "
                                "job these settings: in the nodes' environment (the local cluster's nodes have them), with "
                                "ray job submit --runtime-env-json '{\"env_vars\": {...}}', or with python -m sweeps.submit, "
                                "which forwards them from your shell.")


class StorageUnavailable(RuntimeError):
    """The checkpoint storage path cannot be written; the message says what to change."""


def check_storage_path(storage_path: str, flag: str = "--storage-path or RCGM_STORAGE_PATH") -> None:
    """Refuse a local storage path that cannot be created or written (s3:// and other URIs are the cloud's to check).

    Looks at the nearest folder that exists, without creating anything: a dry run stays free of side effects.
    flag: what the message tells the user to change.
    """
    if "://" in storage_path and not storage_path.startswith("file://"):
        return
    path = Path(storage_path.removeprefix("file://")).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if existing is not None and not existing.is_dir() else "cannot be written"
        raise StorageUnavailable(f"storage path {storage_path} {what} (nearest existing: {existing}): change "
                                 f"{flag} to a folder you can write, shared by every node")
    if existing.resolve().is_relative_to(Path("/proc")) or existing.resolve().is_relative_to(Path("/sys")):
        raise StorageUnavailable(f"storage path {storage_path} is inside {existing}, a kernel file system: change "
                                 f"{flag}")


def mlflow_ui_command(uri: str, experiment_id: str | None = None) -> str:
    """The command (or address) that opens the MLflow UI on this store, at the experiment's runs when given.

    MLflow 3.17's UI opens every experiment on its GenAI overview (traces, token usage) unless the
    page address asks for the model-training view with ?workflowType=machine_learning.
    """
    page = f"/#/experiments/{experiment_id}?workflowType=machine_learning" if experiment_id else ""
    if uri.startswith("sqlite"):
        return f"mlflow ui --backend-store-uri {uri}" + (f", then http://127.0.0.1:5000{page}" if page else "")
    return uri.rstrip("/") + page


def optuna_dashboard_command(storage: str) -> str:
    """The command that opens an Optuna study database in optuna-dashboard, and where it serves it."""
    return f"optuna-dashboard {storage}, then http://127.0.0.1:8080/dashboard"
