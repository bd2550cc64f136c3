"""The Ray Tune trial function: one typed TrialSpec in, the trial run inline or as a TorchTrainer.

Inline (one worker): the trial runs inside its Tune trial process, reporting and checkpointing
through Tune, so Tune retries from the last checkpoint and a reused process runs the next trial.
Why not always a TorchTrainer: it starts about eight Ray processes (controller, worker,
watchers, queues) before the first step, ~20 s per trial on 2 cores (docs/benchmarks.md), which
a one-worker trial gains nothing from. DDP trials (workers > 1) keep the TorchTrainer.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from trainables.config import TrialConfig
from trainables.locations import safe_name
from trainables.tracking import TrialTracking, mark_trial_failed, recorded_result

RUNNERS = ("inline", "train")


@dataclass(frozen=True)
class TrialSpec:
    """Everything one Tune trial needs: its config, its name, where it reports and checkpoints."""

    key: str  # the cell key, e.g. N2-k0.999-s1: the Ray trial's name and folder, the MLflow run's name
    config: TrialConfig
    tracking: TrialTracking | None
    storage_path: str
    runner: str = "inline"  # inline: in the Tune trial process; train: a Ray Train TorchTrainer

    def to_dict(self) -> dict:
        """Plain values only: Tune keeps trial configs in its experiment state, and a resumed sweep
        reads them back in a new driver, where objects it had swapped for placeholders are gone."""
        tracking = dataclasses.asdict(self.tracking) if self.tracking is not None else None
        return {"key": self.key, "config": self.config.to_dict(), "tracking": tracking,
                "storage_path": self.storage_path, "runner": self.runner}

    @classmethod
    def from_dict(cls, values: dict) -> "TrialSpec":
        """The spec that to_dict wrote."""
        tracking = TrialTracking(**values["tracking"]) if values["tracking"] is not None else None
        return cls(values["key"], TrialConfig.from_dict(values["config"]), tracking, values["storage_path"], values["runner"])

    @property
    def train_run_name(self) -> str:
        """The TorchTrainer run's name: deterministic, so a retried trial finds its checkpoints."""
        sweep = self.tracking.sweep if self.tracking is not None else "trial"
        return safe_name(f"train-{sweep}-{self.key}")


@dataclass(frozen=True)
class SearchTemplate:
    """An Optuna sweep's trials before sampling: base values plus the sampled ones make each TrialSpec."""

    values: dict  # trial settings as given (placeholders such as model='auto' not yet resolved)
    spec: TrialSpec  # tracking and storage shared by every trial; key and config are filled per trial

    def to_dict(self) -> dict:
        """Plain values, for the same reason as TrialSpec.to_dict."""
        return {"values": dict(self.values), "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> "SearchTemplate":
        """The template that to_dict wrote."""
        return cls(dict(values["values"]), TrialSpec.from_dict(values["spec"]))

    def spec_for(self, sampled: dict, trial_id: str) -> TrialSpec:
        """The trial spec for one sampled point; 'time_params.a' sets one schedule parameter."""
        # Sampled values are not unique names: the Tune trial id is the trial's identity.
        key = "trial-" + trial_id
        config = TrialConfig.from_dict(apply_cell(self.values, sampled))
        tracking = self.spec.tracking
        if tracking is not None:
            tracking = dataclasses.replace(tracking, trial_key=f"{tracking.sweep}/{key}", run_name=key)
        return dataclasses.replace(self.spec, key=key, config=config, tracking=tracking)


# Searched names that set a trial setting through a transform (sweeps/spaces.py SEARCHES). kappa's
# useful values crowd towards 1 (0.9, 0.99, 0.999), so a search samples 1 - kappa on a log scale.
TRANSFORMED = {"one_minus_kappa": ("kappa", lambda gap: 1.0 - gap)}


def setting_of(name: str) -> str:
    """The trial setting a cell's or a sampled point's name sets: 'one_minus_kappa' -> 'kappa', else the name."""
    return TRANSFORMED[name][0] if name in TRANSFORMED else name


def apply_cell(values: dict, cell: dict) -> dict:
    """Trial values with a cell's settings on top; 'time_params.a' sets one schedule parameter,
    'one_minus_kappa' sets kappa = 1 - value."""
    out = dict(values)
    for name, value in cell.items():
        if name.startswith("time_params."):
            out["time_params"] = {**out.get("time_params", {}), name.split(".", 1)[1]: value}
        elif name in TRANSFORMED:
            setting, transform = TRANSFORMED[name]
            out[setting] = transform(value)
        else:
            out[name] = value
    return out


def tune_config_of(spec: TrialSpec) -> dict:
    """A grid cell's entry in the Tune param space: the key (for the trial's name) and the spec, as plain values."""
    return {"key": spec.key, "spec": spec.to_dict()}


def spec_of(config: dict, trial_id: str) -> TrialSpec:
    """The TrialSpec in a Tune trial's config: a grid cell's ({"trial": tune_config_of(spec)}), or an Optuna sample's."""
    if "trial" in config:
        return TrialSpec.from_dict(config["trial"]["spec"])
    sampled = {k: v for k, v in config.items() if k != "search"}
    return SearchTemplate.from_dict(config["search"]).spec_for(sampled, trial_id)


def trial_name(trial) -> str:
    """Tune's name (and folder) for a trial: the cell key, e.g. N2-k0.999-s1."""
    config = trial.config
    return config["trial"]["key"] if "trial" in config else "trial-" + trial.trial_id


def tune_trial(config: dict) -> None:
    """Tune function trainable: run the spec's trial in this process (inline) or fit a TorchTrainer for it."""
    from ray import tune

    from trainables.ray_setup import node_tags

    spec = spec_of(config, tune.get_context().get_trial_id())
    tracking = spec.tracking
    if tracking is not None:
        # The node of this Tune trial process: where an inline trial runs (a TorchTrainer's rank 0 retags).
        tracking = tracking.with_tags({"ray.trial_id": tune.get_context().get_trial_id(), "rcgm.cell": spec.key,
                                       **node_tags()})
    recorded = recorded_result(tracking) if tracking is not None else None
    if recorded is not None:
        tune.report(recorded)  # ended before Tune last saved its state: its run says how, nothing is trained again
        return
    try:
        if spec.runner == "inline":
            run_inline(spec.config, tracking, spec.key, trial_folder(spec, tune.get_context().get_trial_name()))
        else:
            fit_torch_trainer(spec, tracking)
    except Exception as err:
        if tracking is not None:
            try:
                mark_trial_failed(tracking, f"{type(err).__name__}: {err}"[:500])
            except Exception as unrecorded:  # the server stayed away: Tune must still see the trial's own error
                print(f"tracking: trial {spec.key} failed and could not be recorded as failed: {unrecorded}",
                      file=sys.stderr, flush=True)
        raise


def trial_folder(spec: TrialSpec, name: str) -> Path | None:
    """The trial's folder on a local (shared) storage path, where Tune keeps its checkpoints; None for s3:// and the like."""
    if spec.tracking is None or "://" in spec.storage_path:
        return None
    return Path(spec.storage_path) / spec.tracking.sweep / name


def latest_checkpoint(given, folder: Path | None):
    """Tune's checkpoint, or a newer one in the trial's folder that Tune's saved state does not know of.

    Tune saves its state every few seconds; a driver or head lost in between restores trials with
    an older checkpoint than the storage holds, or none, and they would train those steps again.
    """
    from ray import tune

    from trainables.checkpointing import checkpoint_index, load_state, newest_saved

    newest = newest_saved(folder) if folder is not None else None
    if newest is None or (given is not None and checkpoint_index(given.path) >= checkpoint_index(newest)):
        return given
    try:
        load_state(newest)  # a copy the lost process left half written is not a checkpoint
    except Exception:
        return given
    known = Path(given.path).name if given is not None else "none"
    print(f"resuming from {newest} (Tune's saved state knew {known})", file=sys.stderr, flush=True)
    return tune.Checkpoint.from_directory(str(newest))


def run_inline(cfg: TrialConfig, tracking: TrialTracking | None, key: str | None = None,
               folder: Path | None = None) -> None:
    """Train, evaluate, checkpoint and report to Tune in this process (key: the cell, for injected faults)."""
    import ray
    from ray import tune

    from trainables.runner import Placement, run_trial, trial_device
    from trainables.worker import quiet_train_logs

    quiet_train_logs()
    if tracking is not None:
        tracking = tracking.with_tags({"ray.job_id": ray.get_runtime_context().get_job_id()})

    def report(metrics: dict, state_dir) -> None:
        ckpt = tune.Checkpoint.from_directory(str(state_dir)) if state_dir is not None else None
        tune.report(metrics, checkpoint=ckpt)

    run_trial(cfg, Placement(trial_device(cfg)), report, checkpoint=latest_checkpoint(tune.get_checkpoint(), folder),
              tracking=tracking, name=key)


def fit_torch_trainer(spec: TrialSpec, tracking: TrialTracking | None) -> None:
    """One TorchTrainer run for the trial, its reports forwarded to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.trial import build_torch_trainer

    build_torch_trainer(spec.config, tracking, name=spec.train_run_name, storage_path=spec.storage_path,
                        callbacks=[TuneReportCallback()]).fit()
