"""One function runs a trial, whatever launched it: plain PyTorch, a Tune trial process, or a Ray Train worker.

The launcher supplies only what differs: where this process runs (device, rank, DDP wrapper),
the checkpoint to resume from, how to report (Ray Train, Tune, or a progress print) and how
ranks agree on a status. Threads, the Trainer, the restore, rank 0's evaluation and tracking,
and the loop itself are the same for all three.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainables import checkpointing
from trainables.config import TrialConfig
from trainables.cost import StepMeter
from trainables.loop import Trainer
from trainables.status import Status
from trainables.tracking import TrialTracking

# report(metrics, checkpoint folder or None): Ray Train's or Tune's report, or a progress print.
Report = Callable[[dict, "Path | None"], None]


@dataclass(frozen=True)
class Placement:
    """Where this process's share of a trial runs: device, DDP rank and world, and the model wrapper."""

    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    wrap_model: Callable | None = None  # DDP's prepare_model when world_size > 1


@dataclass(frozen=True)
class Outcome:
    """How a trial ended on this rank."""

    status: Status
    reason: str
    picture: Path | None  # rank 0's last sample picture


def trial_device(cfg: TrialConfig) -> str:
    """The device of a one-process trial: CUDA when the trial asked for GPUs and one is visible."""
    return "cuda" if cfg.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"


def is_out_of_memory(err: BaseException) -> bool:
    """True when err is an allocation PyTorch could not serve (CUDA's OutOfMemoryError, or the CPU allocator's)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in ("can't allocate memory", "not enough memory"))


def run_trial(cfg: TrialConfig, placement: Placement, report: Report, *, checkpoint=None,
              tracking: TrialTracking | None = None, agree=lambda status: status, step_hook=None,
              name: str | None = None) -> Outcome:
    """Set up a trial on this process (resuming from checkpoint, a Ray/Tune Checkpoint or None) and run it.

    name: the trial's cell key, which RCGM_INJECT_FAULTS addresses (trainables/faults.py).
    """
    from trainables.faults import chain, fault_hook
    from trainables.rank0 import Rank0

    # One thread per CPU this process was given: two trials on two cores must not fight.
    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    # Rank 0 counts a step's FLOPs: every rank runs the same step on its share of the batch.
    trainer = Trainer(cfg, placement.device, placement.rank, placement.world_size, wrap_model=placement.wrap_model,
                      measure_cost=placement.rank == 0)
    best, resumed_from = checkpointing.restore_trainer(trainer, checkpoint, placement.device)
    lead = Rank0(cfg, trainer, tracking, best, resumed_from) if placement.rank == 0 else None
    step_hook = chain(step_hook, fault_hook(name, trainer.model, trainer.device))
    status, reason = run_loop(cfg, trainer, lead, report, agree=agree, step_hook=step_hook)
    return Outcome(status, reason, lead.last_picture if lead is not None else None)


def closing_fid(cfg: TrialConfig, trainer: Trainer, lead, step: int) -> dict[str, float]:
    """The trial's closing FID-N across all ranks (trainables.final_fid); rank 0 logs it and counts it as best."""
    from trainables.final_fid import FinalFID
    from trainables.metric_names import EMA_PREFIX

    fid = FinalFID(cfg, trainer.task, trainer.device, trainer.rank, trainer.world_size)
    values = fid.score(trainer.model)
    if trainer.eval_ema is not None:
        values.update(fid.score(trainer.eval_ema.module, EMA_PREFIX))
    if lead is not None:
        lead.log_closing_fid(values, fid.description(), step)
    return values


def out_of_memory_reason(err: BaseException, trainer: Trainer) -> str:
    """Where memory ran out, for the run's status_reason: the step, the device and the allocator's words."""
    words = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"out of memory at step {trainer.step + 1} on {trainer.device}: {words[:300]}; lower --batch-size or the model size"


def run_loop(cfg: TrialConfig, trainer: Trainer, lead, report: Report, agree=lambda status: status,
             step_hook=None) -> tuple[Status, str]:
    """Step until done or unhealthy; evaluate (lead = rank 0 only), checkpoint and report on schedule.

    `agree(status)` makes every rank adopt the worst status; returns (status, reason).
    Each checkpoint folder is removed once reported (Ray keeps its own copy).
    """
    started = time.time()
    losses: list[float] = []
    meter = StepMeter()
    status, reason = Status.RUNNING, ""
    while trainer.step < cfg.steps:
        step_started = time.perf_counter()
        try:
            loss = trainer.train_step()
            if step_hook is not None:
                step_hook(trainer.step)
        except Exception as err:
            # One process: end with a status and a checkpoint. Under DDP the other ranks wait in this
            # step's all-reduce, so an out-of-memory there is Ray Train's to handle (it raises).
            if not is_out_of_memory(err) or trainer.world_size > 1:
                raise
            status, reason, loss = Status.OUT_OF_MEMORY, out_of_memory_reason(err, trainer), math.nan
            if trainer.device.type == "cuda":
                torch.cuda.empty_cache()  # what the failed step held, before the checkpoint is written
        meter.add(time.perf_counter() - step_started)
        losses.append(loss)
        step = trainer.step
        if status == Status.RUNNING and not math.isfinite(loss):
            status, reason = Status.DIVERGED, f"loss is not finite at step {step}"
        last = step >= cfg.steps
        at_eval = step % cfg.eval_every == 0 or last or status != Status.RUNNING
        if not (at_eval or step % cfg.checkpoint_every == 0):
            continue
        finite = [v for v in losses if math.isfinite(v)]
        metrics = {"step": step, "loss": sum(finite) / len(finite) if finite else float("nan")}
        losses.clear()
        if at_eval and lead is not None and status != Status.OUT_OF_MEMORY:
            ev = lead.evaluate(step, metrics["loss"], meter.take_window())
            metrics.update(ev.metrics)
            if status == Status.RUNNING and ev.status != Status.RUNNING:
                status, reason = ev.status, ev.reason
        status = agree(status)
        done = last or status != Status.RUNNING
        final = Status.FINISHED if (done and status == Status.RUNNING) else status
        if final == Status.FINISHED and cfg.fid_samples:
            # After agree(): every rank reaches this together, as the gather in it needs.
            metrics.update(closing_fid(cfg, trainer, lead, step))
        # Reported as plain text: Tune writes results to JSON and its own tables.
        metrics["status"] = str(final)
        state_dir = None
        if lead is not None:
            state_dir = Path(tempfile.mkdtemp(prefix="rcgm-ckpt-"))
            try:
                checkpointing.save_state(state_dir, trainer.state_dict(), cfg.to_dict(), lead.evaluator.best)
            except BaseException:
                # A write that failed (a full disk) is never reported: Ray's latest stays the previous one.
                shutil.rmtree(state_dir, ignore_errors=True)
                raise
        if done and lead is not None:
            # Close the MLflow run before the last report: a scheduler may end this process on it
            # (ASHA stops a trial that reaches max_t as soon as it reports).
            lead.finish(final, reason, step, time.time() - started, state_dir, meter)
        report(metrics, state_dir)
        if state_dir is not None:
            # Ray persisted the checkpoint during report(); a DiT state is tens of MB per evaluation.
            shutil.rmtree(state_dir, ignore_errors=True)
        if done:
            return final, reason
    # Only reached when no step ran: a trial resumed from its final checkpoint.
    final = Status.FINISHED if status == Status.RUNNING else status
    if lead is not None:
        lead.finish(final, reason, trainer.step, time.time() - started, None, meter)
    return final, reason
