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
    """Ray Train/Tune storage for checkpoints and Tune state: runs/ray-results."""
    return str(runs_dir() / "ray-results")


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


def mlflow_ui_command(uri: str) -> str:
    """The command (or address) that opens the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else uri
