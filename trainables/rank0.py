"""What only rank 0 does: evaluation, sample pictures and MLflow tracking."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from trainables.config import TrialConfig
from trainables.evaluation import Evaluator
from trainables.loop import Trainer
from trainables.process_memory import peak_resident_mb, resident_mb
from trainables.status import Status
from trainables.tracking import TrialTracker, TrialTracking


class Rank0:
    """Evaluation, pictures and (optionally) MLflow for one trial."""

    def __init__(self, cfg: TrialConfig, trainer: Trainer, tracking: TrialTracking | None, best: dict, resumed_from: int | None):
        self.cfg, self.trainer = cfg, trainer
        self.evaluator = Evaluator(cfg, trainer.task, trainer.device)
        self.evaluator.best.update(best)
        self.tracker = None
        if tracking is not None:
            self._start_tracking(tracking, resumed_from)
        self.pictures = Path(tempfile.mkdtemp(prefix="rcgm-samples-"))
        self.last_picture: Path | None = None

    def _start_tracking(self, tracking: TrialTracking, resumed_from: int | None) -> None:
        """Open (or reopen) the trial's MLflow child run."""
        self.tracker = TrialTracker(tracking)
        tags = {f"metric_definition.{self.evaluator.family}": self.evaluator.description,
                # Which process ran the loop: with reused Tune actors one process runs several trials.
                "rcgm.process": f"{socket.gethostname()}:{os.getpid()}"}
        self.tracker.start(self.cfg.tracking_params(), tags)
        if resumed_from is not None:
            self.tracker.log_metrics({"resumed_from_step": resumed_from}, resumed_from)

    def evaluate(self, step: int, loss: float):
        """Evaluate, log curves and a picture; return the evaluation."""
        from trainables.pictures import render_samples

        ev = self.evaluator.evaluate(self.trainer.model, step)
        self.last_picture = self.pictures / f"step_{step:07d}.png"
        title = f"{self.cfg.task} N={self.cfg.order} kappa={self.cfg.kappa} step {step}"
        render_samples(ev.samples, self.evaluator.reference, self.last_picture, title, ev.metrics)
        if self.tracker is not None:
            self.tracker.log_metrics({"loss": loss, **ev.metrics}, step)
            self.tracker.log_artifact(self.last_picture, "samples")
        return ev

    def finish(self, status: Status, reason: str, step: int, wall: float, state_dir: Path | None) -> None:
        """Log best and final values, the final checkpoint, and close the run with its status."""
        if self.tracker is None:
            return
        family = self.evaluator.family
        final = {f"best_{k}": v for k, v in self.evaluator.best.items()}
        final.update({"final_step": step, "wall_time_s": wall, f"noise_{family}": self.evaluator.noise_level,
                      # This process's memory (a reused Tune process runs several trials: the peak is its lifetime's).
                      "process_rss_mb": resident_mb(), "process_peak_rss_mb": peak_resident_mb()})
        self.tracker.log_metrics(final, step)
        if state_dir is not None:
            self.tracker.log_artifact(state_dir / "state.pt", "checkpoint")
        self.tracker.finish(status, reason)
