"""Which checkpoints a sampler grid runs on: trial runs by id, or every finished trial of a sweep, checked before Ray.

Everything here only reads MLflow (runs, artifacts); the points' runs are written by
trainables.tracking (sweeps/sampler_point.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dashboards import sampler_table as schema
from sweeps.sampler_point import CHECKPOINT_ARTIFACT, PointSpec, TrialCheckpoint, load_checkpoint, sampling_config
from sweeps.sampler_space import SamplerGrid
from trainables.config import TrialConfig
from trainables.rcgm.errors import ConfigError
from trainables.rcgm.sampling_guidance import PLAIN
from trainables.status import Status
from trainables.tracking import child_runs, find_run

# A point with one of these statuses is not run again: the same checkpoint, noise and setting give the same number.
DONE = (str(Status.FINISHED), str(Status.DIVERGED))


@dataclass(frozen=True)
class Selected:
    """One trial to sample: its checkpoint (on this disk) and its config with the grid's sample count."""

    trial: TrialCheckpoint
    config: TrialConfig
    has_eval_ema: bool


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_by_id(uri: str, run_ids: list[str]) -> list:
    """The MLflow runs of these trial run ids; anything else is refused naming --run."""
    from mlflow.exceptions import MlflowException

    client, runs = _client(uri), []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ConfigError("run", run_id, f"the MLflow run id of a trial at {uri} (the MLflow UI shows it)",
                              flag="--run or --tracking-uri") from None
        if run.data.tags.get("rcgm.kind") != "trial":
            kind = run.data.tags.get("rcgm.kind", "no rcgm.kind tag")
            raise ConfigError("run", run_id, f"a trial's run (rcgm.kind=trial), not a {kind} run; for a sweep pass "
                              "--sweep NAME", flag="--run")
        runs.append(run)
    return runs


def runs_of_sweep(uri: str, experiment: str, sweep: str) -> list:
    """Every finished trial run of the newest sweep of that name."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError("experiment", experiment, f"an MLflow experiment at {uri}", flag="--experiment")
    parent = find_run(uri, exp.experiment_id, {"rcgm.kind": "sweep", "rcgm.sweep": sweep})
    if parent is None:
        raise ConfigError("sweep", sweep, f"the name of a sweep in experiment {experiment!r}", flag="--sweep or --experiment")
    runs = child_runs(uri, experiment, parent, f"tags.status = '{Status.FINISHED}' and tags.`rcgm.kind` = 'trial'")
    if not runs:
        raise ConfigError("sweep", sweep, f"a sweep with finished trials (parent run {parent} has none yet)", flag="--sweep")
    return sorted(runs, key=lambda r: r.info.run_name or r.info.run_id)


def fetch(uri: str, run, folder: Path, samples: int | None) -> Selected:
    """Download the run's final checkpoint into folder and read its config; refused naming --run if it has none."""
    client = _client(uri)
    run_id = run.info.run_id
    if CHECKPOINT_ARTIFACT not in {a.path for a in client.list_artifacts(run_id, "checkpoint")}:
        status = run.data.tags.get("status", run.info.status.lower())
        raise ConfigError("run", run_id, f"a trial run with a final checkpoint ({CHECKPOINT_ARTIFACT}); run "
                          f"{run.info.run_name!r} ({status}) has none", flag="--run")
    path = Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(folder / run_id)))
    state = load_checkpoint(path)
    cfg = sampling_config(state["config"], samples)
    experiment = client.get_experiment(run.info.experiment_id).name
    trial = TrialCheckpoint(uri, experiment, run_id, run.info.run_name or run_id, str(path), int(state["trainer"]["step"]),
                            run.data.tags.get("git.commit", "unknown"))
    return Selected(trial, cfg, "eval_ema" in state["trainer"])


def check_selected(selected: Selected, grid: SamplerGrid, weights: str) -> None:
    """Refuse what this trial cannot do: guidance without labels or a learned null class, weights it does not keep."""
    from trainables.data import load_task
    from trainables.preflight import check_trial_inputs

    cfg, name = selected.config, selected.trial.run_name
    try:
        check_trial_inputs(cfg)  # the dataset, the held-out size for --samples, FID weights
    except ConfigError as err:
        if err.field == "eval_samples":
            raise ConfigError("samples", err.value, err.expected, flag="--samples") from None
        raise
    if weights == "ema" and not selected.has_eval_ema:
        raise ConfigError("weights", weights, f"online or target: trial {name!r} kept no evaluation EMA (trained "
                          "without --eval-ema)", flag="--weights")
    guided = [w for w in grid.guidances if w != PLAIN]
    if not guided:
        return
    if load_task(cfg.task, seed=cfg.data_seed).num_classes is None:
        raise ConfigError("guidance", ",".join(f"{w:g}" for w in grid.guidances), f"{PLAIN:g} (the plain model) for "
                          f"trial {name!r}: its task {cfg.task!r} has no class labels to guide with", flag="--guidance")
    if not cfg.label_dropout:
        raise ConfigError("guidance", ",".join(f"{w:g}" for w in grid.guidances), f"{PLAIN:g} for trial {name!r}: it "
                          "trained with label_dropout 0, so its null class never learned the unconditional field",
                          flag="--guidance")


def done_keys(trial: TrialCheckpoint) -> set[str]:
    """Keys of the trial's points that already ended (finished or diverged): a rerun skips them."""
    runs = child_runs(trial.tracking_uri, trial.experiment, trial.run_id, f"tags.`rcgm.kind` = '{schema.KIND}'")
    return {r.data.tags.get(schema.POINT_TAG) for r in runs if r.data.tags.get("status") in DONE}


def plan_points(selected: list[Selected], grid: SamplerGrid, weights: str, cpus: float, gpus: float) -> tuple[list[PointSpec], int]:
    """Every point still to run, grouped by trial (a reused process keeps that trial loaded); and how many were done."""
    todo, skipped = [], 0
    for s in selected:
        done = done_keys(s.trial)
        for setting in grid.settings():
            spec = PointSpec(s.trial, setting, weights, s.config.eval_samples, cpus, gpus)
            if spec.key in done:
                skipped += 1
            else:
                todo.append(spec)
    return todo, skipped
