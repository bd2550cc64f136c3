"""MLflow tracking: a parent run per sweep, a child run per trial, written from rank 0 only."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TRIAL_KEY_TAG = "rcgm.trial_key"
PACKAGES = ("torch", "ray", "mlflow", "timm", "optuna", "rcgm-sweeps")


class TrackingUnavailable(RuntimeError):
    """The tracking URI cannot be used; the message says what to change."""


def runs_dir() -> Path:
    """Where the embedded default keeps its SQLite store, artifacts, checkpoints and reports."""
    return Path(os.environ.get("RCGM_RUNS_DIR", REPO_ROOT / "runs")).resolve()


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else SQLite under runs/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_dir() / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> str:
    """Refuse an unusable tracking URI before any compute; return it normalised."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingUnavailable(f"cannot create the folder of the SQLite store {db}: {err}; pass another --tracking-uri") from err
        return f"sqlite:///{db.resolve()}"
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status == 200:
                    return uri
                problem = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as err:
            problem = str(getattr(err, "reason", err))
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({problem}): start it, fix --tracking-uri / "
            f"MLFLOW_TRACKING_URI, or leave both unset to track to SQLite under runs/"
        )
    raise TrackingUnavailable(
        f"tracking URI {uri!r} is not supported: use sqlite:///path/to/mlflow.db or an http(s):// "
        f"MLflow server (MLflow 3.17 refuses the ./mlruns file store)"
    )


def git_info() -> dict[str, str]:
    """Git commit and dirty flag: from the submitter (env) or from this checkout."""
    commit = os.environ.get("RCGM_GIT_COMMIT")
    dirty = os.environ.get("RCGM_GIT_DIRTY")
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout
            dirty = "true" if status.strip() else "false"
        except (OSError, subprocess.SubprocessError):
            commit, dirty = "unknown", "unknown"
    return {"git.commit": commit, "git.dirty": dirty or "unknown"}


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide what a number means."""
    out = {}
    for name in PACKAGES:
        try:
            out[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"version.{name}"] = "absent"
    return out


def _client(uri: str):
    """An MlflowClient for uri (imported late: dashboards and tests import this module cheaply)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment id, creating it with artifacts under runs/ for a local SQLite store."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # Without this, artifacts land in ./mlruns of whichever process creates the run.
        location = (Path(uri[len("sqlite:///"):]).parent / "artifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def find_run(uri: str, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The id of the newest run carrying all these tags, or None."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = _client(uri).search_runs([experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def ensure_parent_run(uri: str, experiment: str, sweep: str, params: dict, tags: dict) -> tuple[str, bool]:
    """The sweep's parent run (found again by name on resume); returns (run_id, created)."""
    exp_id = ensure_experiment(uri, experiment)
    found = find_run(uri, exp_id, {"rcgm.kind": "sweep", "rcgm.sweep": sweep})
    client = _client(uri)
    if found:
        client.update_run(found, status="RUNNING")
        return found, False
    run = client.create_run(exp_id, run_name=sweep, tags={"rcgm.kind": "sweep", "rcgm.sweep": sweep, **tags, **git_info()})
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id, True


class TrialTracker:
    """One trial's child run: found again by trial key so retries and resumes never duplicate it."""

    def __init__(self, uri: str, experiment: str, trial_key: str, parent_run_id: str | None = None, sweep: str | None = None, run_name: str | None = None):
        self.uri, self.experiment = uri, experiment
        self.trial_key, self.parent_run_id, self.sweep = trial_key, parent_run_id, sweep
        self.run_name = run_name or trial_key
        self.client = _client(uri)
        self.run_id: str | None = None
        self.resumed = False

    def start(self, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        """Create the child run, or reopen the one a previous attempt of this trial made."""
        from mlflow.entities import Param, RunTag

        exp_id = ensure_experiment(self.uri, self.experiment)
        self.run_id = find_run(self.uri, exp_id, {TRIAL_KEY_TAG: self.trial_key})
        self.resumed = self.run_id is not None
        all_tags = {TRIAL_KEY_TAG: self.trial_key, "rcgm.kind": "trial", "status": "running", **git_info(), **package_versions(), **(tags or {})}
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        if self.sweep:
            all_tags["rcgm.sweep"] = self.sweep
        if self.run_id is None:
            self.run_id = self.client.create_run(exp_id, run_name=self.run_name, tags=all_tags).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log finite metrics at a step in one batch (one SQLite write per evaluation)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v and abs(v) != float("inf")]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set several tags at once."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        """Upload one file to the run's artifact store."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str, reason: str = "") -> None:
        """Record the trial's status as data and close the run (KILLED when stopped early by a scheduler)."""
        self.set_tags({"status": status, "status_reason": reason or status})
        self.client.set_terminated(self.run_id, status="KILLED" if status == "stopped" else ("FAILED" if status == "failed" else "FINISHED"))

    @property
    def ui_hint(self) -> str:
        """The command that opens the MLflow UI on this store."""
        return f"mlflow ui --backend-store-uri {self.uri}" if self.uri.startswith("sqlite") else self.uri
