"""A single-worker trial run inside its Tune trial process, without a nested TorchTrainer.

Why: a TorchTrainer per Tune trial starts about eight Ray processes (controller, worker,
watchers, queues) before the first step, ~20 s per trial on 2 cores (docs/benchmarks.md); a
one-worker trial gains nothing from them. Multi-worker trials keep the TorchTrainer (DDP).
Checkpoints go through Tune, so retries and a resumed sweep continue from them.
"""

from __future__ import annotations

import torch

from trainables.checkpointing import restore_trainer
from trainables.config import TrialConfig
from trainables.loop import Trainer, run_loop
from trainables.worker import quiet_train_logs, tag_ray_job


def run_in_tune(cfg: TrialConfig, tracking: dict | None) -> str:
    """Train, evaluate, checkpoint and report to Tune in this process; returns the final status."""
    from ray import tune

    from trainables.rank0 import Rank0

    quiet_train_logs()
    # One thread per CPU this trial was given: two trials on two cores must not fight.
    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    device = "cuda" if cfg.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
    trainer = Trainer(cfg, device)
    best, resumed_from = restore_trainer(trainer, tune.get_checkpoint(), device)
    lead = Rank0(cfg, trainer, tag_ray_job(tracking), best, resumed_from)

    def report(metrics: dict, state_dir) -> None:
        ckpt = tune.Checkpoint.from_directory(str(state_dir)) if state_dir is not None else None
        tune.report(metrics, checkpoint=ckpt)

    status, _, _ = run_loop(cfg, trainer, lead, report)
    return status
