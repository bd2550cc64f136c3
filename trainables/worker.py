"""The Ray Train V2 worker: one trial on this worker (DDP when several), reporting to Ray Train."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from trainables.config import TrialConfig
from trainables.runner import Placement, run_trial
from trainables.status import SEVERITY, Status

# Status codes, ordered so an all-reduce MAX picks the worst status any rank saw.
STATUS_CODES = {status: code for code, status in enumerate(SEVERITY)}


def agree_across_ranks(status: Status) -> Status:
    """Every rank adopts the worst status any rank saw, so all stop at the same step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return status
    code = torch.tensor([STATUS_CODES[status]], dtype=torch.int64)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return SEVERITY[int(code.item())]


def quiet_train_logs() -> None:
    """Ray Train logs every checkpoint and report at INFO: two lines per evaluation and trial
    drown the sweep's progress view; warnings and errors still show."""
    for name in ("ray.train", "ray.train.v2", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


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


def checkpoint_fault(loop_config: dict, rank: int) -> None:
    """Test hook: once, at a given step, the checkpoint write fails half way (as on a full disk)."""
    fail_at, marker = loop_config.get("fail_checkpoint_at_step"), loop_config.get("crash_marker")
    if rank != 0 or fail_at is None or not marker:
        return
    from trainables import checkpointing

    real_write = checkpointing.write

    def failing_write(state: dict, path: Path) -> None:
        if state["trainer"]["step"] == fail_at and not Path(marker).exists():
            Path(marker).write_text(str(fail_at))
            path.write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device (injected)", str(path))
        real_write(state, path)

    checkpointing.write = failing_write


def train_fn_per_worker(loop_config: dict) -> None:
    """Ray Train V2 entry point (train_loop_per_worker of the trial's TorchTrainer).

    loop_config: {"trial": TrialConfig.to_dict(), "tracking": TrialTracking or None, test hooks}.
    """
    import ray
    import ray.train
    import ray.train.torch

    quiet_train_logs()
    cfg = TrialConfig.from_dict(loop_config["trial"])
    checkpoint_fault(loop_config, ray.train.get_context().get_world_rank())
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    placement = Placement(str(ray.train.torch.get_device()), rank, world,
                          wrap_model=ray.train.torch.prepare_model if world > 1 else None)
    from trainables.ray_setup import node_tags

    tracking = loop_config["tracking"]
    if tracking is not None:
        tracking = tracking.with_tags({"ray.job_id": ray.get_runtime_context().get_job_id(), **node_tags()})

    def report(metrics: dict, state_dir) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(state_dir)) if state_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    run_trial(cfg, placement, report, checkpoint=ray.train.get_checkpoint(), tracking=tracking,
              agree=agree_across_ranks, step_hook=crash_hook(loop_config, rank),
              name=tracking.run_name if tracking is not None else None)
