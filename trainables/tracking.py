"""MLflow tracking: every MLflow write of a sweep and its trials (a parent run per sweep, a child run per trial).

Trials write from rank 0 only. The MLflow client is imported inside the functions that use it,
so the sweep drivers and the dashboards can import this module cheaply.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from trainables.locations import REPO_ROOT
from trainables.status import Status
from trainables.tracking_queue import WriteQueue, call_through_outage

TRIAL_KEY_TAG = "rcgm.trial_key"
# The view MLflow 3's UI gives the experiment when its workflow switch is off; with the switch on
# (3.17's default) the page address picks it: locations.mlflow_ui_command adds ?workflowType=machine_learning.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The MLflow client's own retries in a trial process (unless the user set MLFLOW_HTTP_REQUEST_MAX_RETRIES).
CLIENT_RETRIES = 2
PACKAGES = ("torch", "ray", "mlflow", "timm", "optuna", "rcgm-sweeps")


# The statuses a trial ends itself with, recorded with its final step: nothing left to train.
ENDED = frozenset({str(Status.FINISHED), str(Status.DIVERGED), str(Status.COLLAPSED), str(Status.OUT_OF_MEMORY)})


class TrackingUnavailable(RuntimeError):
    """The tracking URI cannot be used; the message says what to change."""


class SweepRunConflict(RuntimeError):
    """A sweep of this name exists with other settings; the message says how to resume or start anew."""


@dataclass(frozen=True)
class TrialTracking:
    """Where one trial's child run lives and what identifies it across retries and resumes."""

    uri: str
    experiment: str
    trial_key: str  # stable across retries and resumes: how a retry finds its run again
    run_name: str
    parent_run_id: str | None = None
    sweep: str | None = None
    tags: dict = field(default_factory=dict)

    def with_tags(self, tags: dict) -> "TrialTracking":
        """A copy with more tags on the run (e.g. the Ray job id, known only inside Ray)."""
        return dataclasses.replace(self, tags={**self.tags, **{k: str(v) for k, v in tags.items()}})


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
    """The experiment id, creating it (artifacts under runs/ for a local SQLite store) as a model-training one."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if any(exp.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):
            for key, value in EXPERIMENT_KIND.items():  # experiments made before the tag existed
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # Without this, artifacts land in ./mlruns of whichever process creates the run.
        location = (Path(uri[len("sqlite:///"):]).parent / "artifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def find_run(uri: str, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The id of the newest run carrying all these tags, or None."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = _client(uri).search_runs([experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def child_runs(uri: str, experiment: str, parent_run_id: str, extra_filter: str = "") -> list:
    """Every child run of a sweep (following MLflow's pages), optionally filtered further."""
    client = _client(uri)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" + (f" and {extra_filter}" if extra_filter else "")
    runs, token = [], None
    while True:
        page = client.search_runs([ensure_experiment(uri, experiment)], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_run_id(uri: str, experiment: str, trial_key: str) -> str | None:
    """The child run of a trial, by its key."""
    return find_run(uri, ensure_experiment(uri, experiment), {TRIAL_KEY_TAG: trial_key})


def open_sweep_run(uri: str, experiment: str, sweep: str, settings: dict, tags: dict) -> tuple[str, bool]:
    """The sweep's parent run, created or found again by name; returns (run_id, created).

    A sweep found with other settings is refused (SweepRunConflict): the same name with the same
    settings is a resume, with other settings a clash.
    """
    from mlflow.entities import Param

    settings = {k: str(v) for k, v in settings.items()}
    exp_id = ensure_experiment(uri, experiment)
    client = _client(uri)
    found = find_run(uri, exp_id, {"rcgm.kind": "sweep", "rcgm.sweep": sweep})
    if found:
        stored = client.get_run(found).data.params
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        if changed:
            raise SweepRunConflict(
                f"sweep {sweep!r} already exists in experiment {experiment!r} with other settings "
                f"({', '.join(f'{k}: {stored.get(k)} -> {settings[k]}' for k in changed)}); pass --name NEW_NAME "
                f"for a new sweep, or the same flags to resume it"
            )
        client.update_run(found, status="RUNNING")
        return found, False
    run = client.create_run(exp_id, run_name=sweep, tags={"rcgm.kind": "sweep", "rcgm.sweep": sweep, **tags, **git_info()})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in settings.items()])
    return run.info.run_id, True


def close_sweep_run(uri: str, run_id: str, wall_s: float, status: str = "FINISHED", reason: str = "") -> None:
    """Record the sweep's wall time and close its parent run (with why, when it did not finish)."""
    client = _client(uri)
    client.log_metric(run_id, "sweep_wall_time_s", wall_s)
    if reason:
        client.set_tag(run_id, "status_reason", reason)
    elif "status_reason" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "status_reason")  # a resumed sweep that finished: the interruption is history
    client.set_terminated(run_id, status=status)


def mark_stopped_trials(uri: str, experiment: str, parent_run_id: str, reason: str = "") -> int:
    """Child runs still 'running' after Tune ended were stopped (ASHA, or an interrupted sweep): mark them; how many."""
    client = _client(uri)
    runs = child_runs(uri, experiment, parent_run_id, f"tags.status = '{Status.RUNNING}'")
    for run in runs:
        # A torn-down trial cannot say so itself; Tune's end is the only witness.
        client.set_tag(run.info.run_id, "status", str(Status.STOPPED))
        if reason:
            client.set_tag(run.info.run_id, "status_reason", reason)
        client.set_terminated(run.info.run_id, status=Status.STOPPED.mlflow_run_status)
    return len(runs)


def sweep_outcome(uri: str, experiment: str, parent_run_id: str) -> tuple[list[str], int]:
    """(status of every child run, how many resumed from a checkpoint after an error or a restart)."""
    runs = child_runs(uri, experiment, parent_run_id)
    resumed = sum(1 for run in runs if "resumed_from_step" in run.data.metrics and run.data.tags.get("status") != Status.FAILED)
    return [run.data.tags.get("status", str(Status.FAILED)) for run in runs], resumed


def recorded_result(tracking: TrialTracking) -> dict | None:
    """The last result of a trial whose MLflow run already ended it (finished, diverged, ...), else None.

    Tune saves its own state every few seconds: a head or driver lost in between forgets trials
    that had finished, and a resumed sweep would train them again. The run is the record.
    """
    def read():
        run_id = trial_run_id(tracking.uri, tracking.experiment, tracking.trial_key)
        return None if run_id is None else _client(tracking.uri).get_run(run_id)

    run = call_through_outage(f"MLflow at {tracking.uri}", f"looking up trial {tracking.trial_key!r}", read)
    if run is None:
        return None
    status = run.data.tags.get("status")
    if status not in ENDED or "final_step" not in run.data.metrics:
        return None  # running, stopped or failed: those train (again) from their checkpoints
    return {**run.data.metrics, "step": int(run.data.metrics["final_step"]), "status": status}


def mark_trial_failed(tracking: TrialTracking, reason: str) -> None:
    """Record a trial that raised (for a TorchTrainer: retries exhausted) as failed, if its run exists (waiting out an outage)."""
    def write():
        run_id = trial_run_id(tracking.uri, tracking.experiment, tracking.trial_key)
        if run_id:
            client = _client(tracking.uri)
            client.set_tag(run_id, "status", str(Status.FAILED))
            client.set_tag(run_id, "status_reason", reason)
            client.set_terminated(run_id, status=Status.FAILED.mlflow_run_status)

    call_through_outage(f"MLflow at {tracking.uri}", f"recording trial {tracking.trial_key!r} as failed", write)


class TrialTracker:
    """One trial's child run: found again by trial key so retries and resumes never duplicate it.

    Every write goes through a WriteQueue: an MLflow outage delays writes (in order), it does not
    stop training or drop a point (trainables/tracking_queue.py says exactly what is guaranteed).
    """

    def __init__(self, tracking: TrialTracking):
        # MLflow retries a failed request for ~4 minutes by default, blocking the training loop all
        # that time; the queue keeps the writes instead, so the client's own retries can be short.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(CLIENT_RETRIES))
        self.tracking = tracking
        self.client = _client(tracking.uri)
        self.queue = WriteQueue(f"MLflow at {tracking.uri}")
        self.run_id: str | None = None

    def start(self, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        """Create the child run, or reopen the one a previous attempt of this trial made (waiting out an outage)."""
        from mlflow.entities import Param, RunTag

        t = self.tracking
        all_tags = {TRIAL_KEY_TAG: t.trial_key, "rcgm.kind": "trial", "status": str(Status.RUNNING), **git_info(),
                    **package_versions(), **t.tags, **(tags or {})}
        if t.parent_run_id:
            all_tags["mlflow.parentRunId"] = t.parent_run_id
        if t.sweep:
            all_tags["rcgm.sweep"] = t.sweep

        def find_or_create() -> str:
            exp_id = ensure_experiment(t.uri, t.experiment)
            found = find_run(t.uri, exp_id, {TRIAL_KEY_TAG: t.trial_key})
            if found is None:
                found = self.client.create_run(exp_id, run_name=t.run_name, tags=all_tags).info.run_id
                self.client.log_batch(found, params=[Param(k, v) for k, v in params.items()])
            else:
                self.client.update_run(found, status="RUNNING")
                self.client.log_batch(found, tags=[RunTag(k, v) for k, v in all_tags.items()])
            return found

        # Searching again on a retry finds a run whose creation reached the server before its answer was lost.
        self.run_id = self.queue.call(f"opening run {t.run_name!r}", find_or_create)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log finite metrics at a step in one batch (one SQLite write per evaluation)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v and abs(v) != float("inf")]
        if batch:
            run_id = self.run_id
            self.queue.put(f"metrics at step {step}", lambda: self.client.log_batch(run_id, metrics=batch))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set several tags at once."""
        from mlflow.entities import RunTag

        run_id, batch = self.run_id, [RunTag(k, str(v)) for k, v in tags.items()]
        self.queue.put(f"tags {sorted(tags)}", lambda: self.client.log_batch(run_id, tags=batch))

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        """Upload one file to the run's artifact store (the file must stay until the queue is drained)."""
        run_id = self.run_id
        self.queue.put(f"artifact {Path(path).name}", lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def settle(self) -> None:
        """Wait for this trial's queued writes while the server answers (not during an outage)."""
        self.queue.settle()

    def finish(self, status: Status, reason: str = "") -> None:
        """Record the trial's status as data and close the run with the matching MLflow status, after every queued write."""
        status = Status(status)
        self.set_tags({"status": str(status), "status_reason": reason or str(status)})
        run_id = self.run_id
        self.queue.put("closing the run", lambda: self.client.set_terminated(run_id, status=status.mlflow_run_status))
        self.queue.drain(f"trial {self.tracking.run_name!r}")
