"""A trial's status: one enum for the loop, MLflow tags, Tune results and the dashboards (no torch)."""

from enum import StrEnum


class Status(StrEnum):
    """What a trial is or ended as; the value is the `status` tag in MLflow."""

    RUNNING = "running"      # training, healthy so far
    FINISHED = "finished"    # reached its last step healthy
    DIVERGED = "diverged"    # loss or samples not finite, or samples far worse than noise
    COLLAPSED = "collapsed"  # samples no better than the noise itself, late in training
    OUT_OF_MEMORY = "oom"    # an allocation failed (device or host memory): ended with a checkpoint, not retried
    STOPPED = "stopped"      # ended early by a scheduler (ASHA) or an interrupted sweep
    FAILED = "failed"        # raised, or its retries ran out

    @property
    def unhealthy(self) -> bool:
        """True when the trial's numbers say nothing about its config (left out of cell means)."""
        return self in UNHEALTHY

    @property
    def mlflow_run_status(self) -> str:
        """The MLflow run status a run closed with this status gets."""
        return {Status.STOPPED: "KILLED", Status.FAILED: "FAILED", Status.OUT_OF_MEMORY: "FAILED",
                Status.RUNNING: "RUNNING"}.get(self, "FINISHED")


UNHEALTHY = frozenset({Status.DIVERGED, Status.COLLAPSED, Status.FAILED, Status.OUT_OF_MEMORY})
# Worst last when ranks disagree: every rank adopts the worst status any rank saw.
SEVERITY = (Status.RUNNING, Status.COLLAPSED, Status.DIVERGED, Status.OUT_OF_MEMORY)
# MLflow run status -> ours, for runs that died before tagging `status` themselves.
FROM_MLFLOW_RUN_STATUS = {"FINISHED": Status.FINISHED, "FAILED": Status.FAILED, "RUNNING": Status.RUNNING,
                          "KILLED": Status.STOPPED, "SCHEDULED": Status.RUNNING}
