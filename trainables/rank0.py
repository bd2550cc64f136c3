"""What only rank 0 does: evaluation, sample pictures and MLflow tracking."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch

from trainables import cost_schema as S
from trainables.acceleration import attention_label
from trainables.config import TrialConfig
from trainables.cost import StepMeter, device_name, peak_tflops, rates
from trainables.evaluation import Evaluator
from trainables.loop import Trainer
from trainables.metric_names import definition_tag
from trainables.process_memory import peak_resident_mb, resident_mb
from trainables.status import Status
from trainables.tracking import TrialTracker, TrialTracking


class Rank0:
    """Evaluation, pictures and (optionally) MLflow for one trial."""

    def __init__(self, cfg: TrialConfig, trainer: Trainer, tracking: TrialTracking | None, best: dict, resumed_from: int | None):
        self.cfg, self.trainer = cfg, trainer
        self.evaluator = Evaluator(cfg, trainer.task, trainer.device)
        self.evaluator.best.update(best)
        self.device_name = device_name(trainer.device)
        self.peak_tflops = peak_tflops(self.device_name, trainer.precision)
        self.peak_memory_mb = 0.0  # the largest training-step peak seen between evaluations (CUDA)
        self.tracker = None
        if tracking is not None:
            self._start_tracking(tracking, resumed_from)
        self.pictures = Path(tempfile.mkdtemp(prefix="rcgm-samples-"))
        self.last_picture: Path | None = None

    def _start_tracking(self, tracking: TrialTracking, resumed_from: int | None) -> None:
        """Open (or reopen) the trial's MLflow child run."""
        self.tracker = TrialTracker(tracking)
        tags = {definition_tag(self.evaluator.family): self.evaluator.description,
                # Which process ran the loop: with reused Tune actors one process runs several trials.
                "rcgm.process": f"{socket.gethostname()}:{os.getpid()}", **self.run_tags()}
        if self.trainer.eval_ema is not None:
            tags["rcgm.eval_ema"] = self.trainer.eval_ema.description
        self.tracker.start(self.cfg.tracking_params(), tags)
        first = {} if resumed_from is None else {"resumed_from_step": resumed_from}
        if self.trainer.cost is not None:
            first.update(self.trainer.cost.metrics())
        if first:
            self.tracker.log_metrics(first, resumed_from or 0)

    def run_tags(self) -> dict[str, str]:
        """How the steps ran: precision, attention path, compile, device and its peak."""
        cfg, trainer = self.cfg, self.trainer
        values = {"precision": trainer.precision, "compile": str(cfg.compile).lower(),
                  "attention": attention_label(trainer.attention, cfg.model, cfg.objective), "device": self.device_name,
                  "peak_tflops": "unknown" if self.peak_tflops is None else f"{self.peak_tflops:g}"}
        return {S.RUN_TAGS[k]: v for k, v in values.items()}

    def _training_rates(self, window: tuple[int, float]) -> dict[str, float]:
        """Throughput since the last evaluation and, on CUDA, the training steps' peak memory."""
        out = rates(self.trainer.cost, *window, self.cfg.batch_size, self.peak_tflops)
        device = self.trainer.device
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            self.peak_memory_mb = max(self.peak_memory_mb, peak)
            out[S.PEAK_MEMORY_MB] = peak
        return out

    def evaluate(self, step: int, loss: float, window: tuple[int, float] = (0, 0.0)):
        """Evaluate, log curves, throughput (window: training steps and seconds since the last call) and a picture."""
        from trainables.pictures import render_samples

        speed = self._training_rates(window)
        ema = self.trainer.eval_ema
        ev = self.evaluator.evaluate(self.trainer.model, step, ema.module if ema is not None else None)
        if self.trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.trainer.device)  # the next window measures training, not sampling
        self.last_picture = self.pictures / f"step_{step:07d}.png"
        title = f"{self.cfg.task} N={self.cfg.order} kappa={self.cfg.kappa} step {step}"
        render_samples(ev.samples, self.evaluator.reference, self.last_picture, title, ev.metrics)
        if self.tracker is not None:
            self.tracker.log_metrics({"loss": loss, **ev.metrics, **speed}, step)
            self.tracker.log_artifact(self.last_picture, "samples")
            # Tune hears of this evaluation next and may end the process on it (ASHA): sent first.
            self.tracker.settle()
        return ev

    def log_closing_fid(self, values: dict[str, float], description: str, step: int) -> None:
        """The closing FID: metrics at the last step, its definition tag, and best_ values (one evaluation)."""
        from trainables.final_fid import family

        self.evaluator.best.update({k: v for k, v in values.items() if v == v and v != float("inf")})
        if self.tracker is not None:
            self.tracker.log_metrics(values, step)
            self.tracker.set_tags({definition_tag(family(self.cfg)): description})

    def finish(self, status: Status, reason: str, step: int, wall: float, state_dir: Path | None,
               meter: StepMeter | None = None) -> None:
        """Log best and final values, what training cost, the final checkpoint, and close the run with its status."""
        if self.tracker is None:
            return
        family = self.evaluator.family
        final = {f"best_{k}": v for k, v in self.evaluator.best.items()}
        final.update({"final_step": step, "wall_time_s": wall, f"noise_{family}": self.evaluator.noise_level,
                      # This process's memory (a reused Tune process runs several trials: the peak is its lifetime's).
                      "process_rss_mb": resident_mb(), "process_peak_rss_mb": peak_resident_mb()})
        final.update(self.cost_summary(step, meter))
        self.tracker.log_metrics(final, step)
        if state_dir is not None:
            self.tracker.log_artifact(state_dir / "state.pt", "checkpoint")
        self.tracker.finish(status, reason)

    def cost_summary(self, step: int, meter: StepMeter | None) -> dict[str, float]:
        """The trial's cost: counted FLOPs, the whole trial's training compute, mean throughput and peak memory."""
        cost, out = self.trainer.cost, {}
        if cost is not None:
            # Steps before a resume were paid for too: the trial's compute is counted to its last step.
            out[S.TOTAL_FLOPS] = float(cost.step_flops) * self.trainer.world_size * step
        if meter is not None:
            out[S.TRAIN_TIME_S] = meter.total_s
            out.update(rates(cost, meter.total_steps, meter.total_s, self.cfg.batch_size, self.peak_tflops,
                             S.TRIAL_PREFIX))
        if self.peak_memory_mb:
            out[S.TRIAL_PEAK_MEMORY_MB] = self.peak_memory_mb
        return out
