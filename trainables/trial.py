"""One trial = one Ray Train TorchTrainer run with a deterministic name and storage (DDP trials)."""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.locations import default_storage_path
from trainables.tracking import TrialTracking


def build_torch_trainer(cfg: TrialConfig, tracking: TrialTracking | None, name: str, storage_path: str | None = None,
                        callbacks=(), max_failures: int = 2, test_hooks: dict | None = None):
    """A TorchTrainer running train_fn_per_worker; its name is how a retry finds its checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainables.worker import train_fn_per_worker

    use_gpu = cfg.gpus_per_worker > 0
    resources = {"CPU": cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"trial": cfg.to_dict(), "tracking": tracking, **(test_hooks or {})},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path or default_storage_path(),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )
