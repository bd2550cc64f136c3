"""Checks that need the data or the metric's weights, run before any compute starts."""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.data import load_task
from trainables.rcgm.errors import ConfigError


def check_trial_inputs(cfg: TrialConfig) -> None:
    """Load the dataset, check the evaluation set fits its held-out split, find FID weights."""
    task = load_task(cfg.task, seed=cfg.data_seed)
    size = getattr(task, "reference_size", None)
    if size is not None and cfg.eval_samples > size:
        raise ConfigError("eval_samples", cfg.eval_samples, f"<= {size}, the held-out examples of {cfg.task!r}")
    if cfg.kind == "images" and cfg.image_metric == "fid":
        from trainables.metrics.frechet import resolve_fid_weights

        resolve_fid_weights(None)
