"""The Ray Train V2 worker: one trial on this worker (DDP when several), reporting to Ray."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from trainables.checkpointing import restore_trainer
from trainables.config import TrialConfig
from trainables.evaluation import COLLAPSED, DIVERGED, HEALTHY
from trainables.loop import Trainer, run_loop

# Health codes, ordered so an all-reduce MAX picks the worst status any rank saw.
STATUS_CODES = {HEALTHY: 0, COLLAPSED: 1, DIVERGED: 2}
CODE_STATUS = {v: k for k, v in STATUS_CODES.items()}


def agree_across_ranks(status: str) -> str:
    """Every rank adopts the worst status any rank saw, so all stop at the same step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return status
    code = torch.tensor([STATUS_CODES[status]], dtype=torch.int64)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return CODE_STATUS[int(code.item())]


def quiet_train_logs() -> None:
    """Ray Train logs every checkpoint and report at INFO: two lines per evaluation and trial
    drown Tune's progress table; warnings and errors still show."""
    for name in ("ray.train", "ray.train.v2", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tag_ray_job(tracking: dict | None) -> dict | None:
    """The tracking spec with this process's Ray job id added to the run's tags."""
    if tracking is None:
        return None
    import ray

    return {**tracking, "tags": {**tracking.get("tags", {}), "ray.job_id": ray.get_runtime_context().get_job_id()}}


def crash_hook(loop_config: dict, rank: int):
    """Test hook: kill rank 0's process once at a given step, to prove that resuming works."""
    crash_at, marker = loop_config.get("crash_at_step"), loop_config.get("crash_marker")
    if rank != 0 or crash_at is None or not marker:
        return None

    def hook(step: int) -> None:
        if step == crash_at and not Path(marker).exists():
            Path(marker).write_text(str(step))
            # Ray Train V2 registers a reported checkpoint when its controller next polls workers.
            time.sleep(3)
            os._exit(1)

    return hook


def train_fn_per_worker(loop_config: dict) -> None:
    """Ray Train V2 entry point (train_loop_per_worker of the trial's TorchTrainer)."""
    import ray.train
    import ray.train.torch

    from trainables.rank0 import Rank0

    quiet_train_logs()
    cfg = TrialConfig.from_dict(loop_config["trial"])
    # One thread per CPU this worker was given: two trials on two cores must not fight.
    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    trainer = Trainer(cfg, device, rank, world, wrap_model=ray.train.torch.prepare_model if world > 1 else None)

    best, resumed_from = restore_trainer(trainer, ray.train.get_checkpoint(), device)
    lead = Rank0(cfg, trainer, tag_ray_job(loop_config["tracking"]), best, resumed_from) if rank == 0 else None

    def report(metrics: dict, state_dir) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(state_dir)) if state_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    run_loop(cfg, trainer, lead, report, agree=agree_across_ranks, step_hook=crash_hook(loop_config, rank))
