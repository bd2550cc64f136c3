"""Checks that need the data or the metric's weights, run by every entry point before any compute starts."""

from __future__ import annotations

from trainables.config import TrialConfig, with_flag
from trainables.data import load_task
from trainables.data.catalog import DatasetUnavailable
from trainables.locations import StorageUnavailable, TemporaryLocation
from trainables.metrics.frechet import FIDUnavailable
from trainables.ray_setup import RayUnavailable
from trainables.rcgm.errors import ConfigError
from trainables.tracking import SweepRunConflict, TrackingUnavailable

# Every error that means "the input is bad, nothing ran": entry points print it in one line and exit 2.
BAD_INPUT = (ConfigError, TrackingUnavailable, DatasetUnavailable, FIDUnavailable, SweepRunConflict, RayUnavailable,
             TemporaryLocation, StorageUnavailable)


def check_trial_inputs(cfg: TrialConfig) -> None:
    """Load the dataset, check the evaluation set and labels fit it, find FID weights.

    A latent task reads only its folder's metadata here (a missing or malformed folder raises
    DatasetUnavailable naming the build_latents command), no latent rows.
    """
    try:
        _check(cfg)
    except ConfigError as err:
        raise with_flag(err) from None


def _check(cfg: TrialConfig) -> None:
    """The checks themselves (errors carry their flag once check_trial_inputs re-raises them)."""
    from trainables.rcgm.guidance import check_guidance

    task = load_task(cfg.task, seed=cfg.data_seed)
    size = getattr(task, "reference_size", None)
    if size is not None and cfg.eval_samples > size:
        raise ConfigError("eval_samples", cfg.eval_samples, f"<= {size}, the held-out examples of {cfg.task!r}")
    # TrialConfig took image and latent tasks to carry labels; a latent folder may have none.
    check_guidance(cfg.guidance, cfg.label_dropout, conditional=task.num_classes is not None)
    if cfg.kind == "latents":
        check_latent_grid(cfg, task.shape)
        from trainables.data.vae import VAEUnavailable

        try:
            task.decoder()  # a VAE changed since the folder was built is refused here (VAEChanged)
        except VAEUnavailable:
            pass  # scored as fld in latent space; the metric_definition tag says why
    if cfg.kind == "images" and (cfg.image_metric == "fid" or cfg.fid_samples):
        from trainables.metrics.inception import resolve_fid_weights

        resolve_fid_weights(None)
    check_environment()


def check_environment() -> None:
    """The settings trials read from the environment (tracking patience, injected faults), before any worker does."""
    import os

    from trainables.faults import FAULTS_ENV, planned_faults
    from trainables.tracking_queue import PATIENCE_ENV, patience_s

    for name, check, expected in ((PATIENCE_ENV, patience_s, "a number of seconds >= 0"),
                                  (FAULTS_ENV, lambda: planned_faults(None), "KIND@TRIAL:STEP[,...], KIND nan or oom, STEP >= 1")):
        try:
            check()
        except ValueError:
            raise ConfigError(name, os.environ.get(name), expected, flag=f"or unset the environment variable {name}") from None


def check_latent_grid(cfg: TrialConfig, shape: tuple) -> None:
    """The DiT's patch must tile the latent grid; said here, not as a shape error inside a Ray worker."""
    from trainables.models.dit import parse_dit_name

    if shape[0] not in (1, 3, 4):
        # pictures.render_samples draws 1 (grey), 3 (RGB) or 4 (RGBA) channels; others would crash rank 0 at the first evaluation.
        raise ConfigError("task", cfg.task, f"latents with 1, 3 or 4 channels (this folder has {shape[0]}): the "
                                            "sample pictures (trainables/pictures.py) cannot draw other channel counts yet")
    patch = parse_dit_name(cfg.model)[3]
    if shape[1] % patch or shape[2] % patch:
        raise ConfigError("model", cfg.model, f"a DiT whose patch divides the {shape[1]}x{shape[2]} latent grid of "
                                              f"{cfg.task!r} (e.g. DiT-T/2 for even sizes)")
