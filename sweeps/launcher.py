"""Running a sweep: validate every trial, one MLflow parent run, Ray Tune trials, table, report."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field

from trainables.config import TrialConfig
from trainables.data import DatasetUnavailable
from trainables.metrics.frechet import FIDUnavailable
from trainables.preflight import check_trial_inputs
from trainables.rcgm.errors import ConfigError
from trainables.tracking import (
    TrackingUnavailable, check_tracking_uri, ensure_experiment, ensure_parent_run, find_run, git_info,
)

EXIT_BAD_INPUT = 2
DRIVER_CPU = 0.01  # the Tune function trainable only waits on its TorchTrainer
RUNNERS = ("auto", "inline", "train")


class SweepError(RuntimeError):
    """A sweep cannot start as asked; the message says what to change."""


@dataclass
class SweepPlan:
    """Everything a sweep needs, validated before Ray starts."""

    name: str
    experiment: str
    tracking_uri: str
    storage_path: str
    base: TrialConfig
    search: str = "grid"  # or "optuna"
    cells: list[dict] = field(default_factory=list)
    space: dict = field(default_factory=dict)  # optuna: name -> (low, high, log)
    num_samples: int = 0
    max_concurrent: int | None = None
    address: str | None = None
    report: bool = True
    optuna_storage: str | None = None
    settings: dict = field(default_factory=dict)  # what the parent run records; a resumed sweep must match
    runner: str = "auto"  # inline (in the Tune trial process), train (a TorchTrainer per trial), or auto

    @property
    def inline(self) -> bool:
        """Whether trials run inside their Tune process: auto picks it for one-worker trials."""
        return self.runner == "inline" or (self.runner == "auto" and self.base.workers == 1)

    def cell_config(self, cell: dict) -> TrialConfig:
        """The trial config of one grid cell (or one sampled point)."""
        return TrialConfig.from_dict(apply_cell(self.base.to_dict(), cell))


def apply_cell(base: dict, cell: dict) -> dict:
    """Trial values with a cell's settings on top; 'time_params.a' sets one schedule parameter."""
    values = dict(base)
    for key, value in cell.items():
        if key.startswith("time_params."):
            values["time_params"] = {**values["time_params"], key.split(".", 1)[1]: value}
        else:
            values[key] = value
    return values


def slug(text: str) -> str:
    """A name safe for folders and Ray run names."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")


def validate(plan: SweepPlan) -> SweepPlan:
    """Refuse bad cells, a missing dataset or an unusable tracking URI before any compute."""
    if plan.runner not in RUNNERS:
        raise ConfigError("trial_runner", plan.runner, "one of " + ", ".join(RUNNERS))
    if plan.runner == "inline" and plan.base.workers > 1:
        raise ConfigError("trial_runner", plan.runner, "'train' or 'auto' with --workers > 1 (DDP needs a TorchTrainer)")
    for cell in plan.cells:
        try:
            plan.cell_config(cell)
        except ConfigError as err:
            if err.field in ("order", "kappa", "seed"):
                # The grid's flags are plural (--orders, --kappas, --seeds).
                raise ConfigError(err.field + "s", err.value, err.expected) from None
            raise
    if plan.search == "optuna":
        for name, (low, high, log) in plan.space.items():
            plan.cell_config({name: low})
            plan.cell_config({name: high})
    check_trial_inputs(plan.base)
    plan.tracking_uri = check_tracking_uri(plan.tracking_uri)
    return plan


def open_parent_run(plan: SweepPlan) -> tuple[str, bool]:
    """The sweep's parent run; a reused name with other settings is refused."""
    from mlflow.tracking import MlflowClient

    # Inline and TorchTrainer trials keep their checkpoints in different places: a resume must not switch.
    settings = {**{k: str(v) for k, v in plan.settings.items()}, "trial_runner": "inline" if plan.inline else "train"}
    exp_id = ensure_experiment(plan.tracking_uri, plan.experiment)
    found = find_run(plan.tracking_uri, exp_id, {"rcgm.kind": "sweep", "rcgm.sweep": plan.name})
    if found:
        stored = MlflowClient(plan.tracking_uri).get_run(found).data.params
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        if changed:
            raise SweepError(
                f"sweep {plan.name!r} already exists in experiment {plan.experiment!r} with other settings "
                f"({', '.join(f'{k}: {stored.get(k)} -> {settings[k]}' for k in changed)}); pass --name NEW_NAME "
                f"for a new sweep, or the same flags to resume it"
            )
    tags = {"rcgm.search": plan.search, "rcgm.storage": f"{plan.storage_path}/{plan.name}"}
    if plan.search == "optuna":
        # The dashboards read what the search optimised from these two tags.
        tags.update({"rcgm.metric": "final." + plan.base.metric_names()[0], "rcgm.mode": "min"})
    return ensure_parent_run(plan.tracking_uri, plan.experiment, plan.name, settings, tags)


def sweep_trial(config: dict) -> None:
    """One Tune trial: run the cell in this process (inline) or fit a TorchTrainer for it."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.trial import build_torch_trainer

    cell, meta = config["cell"], config["meta"]
    cfg = TrialConfig.from_dict(apply_cell(config["base"], cell))
    key = meta["cell_key"]
    trial_key = f"{meta['sweep']}/{key}"
    tracking = {
        "uri": meta["uri"], "experiment": meta["experiment"], "trial_key": trial_key, "run_name": key,
        "parent_run_id": meta["parent_run_id"], "sweep": meta["sweep"],
        "tags": {**meta["git"], "ray.trial_id": tune.get_context().get_trial_id(), "rcgm.cell": key},
    }
    try:
        if meta["inline"]:
            from trainables.inline import run_in_tune

            run_in_tune(cfg, tracking)
        else:
            name = slug(f"train-{meta['sweep']}-{key}")
            build_torch_trainer(cfg, tracking, name=name, storage_path=meta["storage_path"], callbacks=[TuneReportCallback()]).fit()
    except Exception as err:
        mark_failed(tracking, f"{type(err).__name__}: {err}"[:500])
        raise


def mark_failed(tracking: dict, reason: str) -> None:
    """Record a trial that raised (for a TorchTrainer: retries exhausted) as failed in MLflow."""
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment(tracking["uri"], tracking["experiment"])
    run_id = find_run(tracking["uri"], exp_id, {"rcgm.trial_key": tracking["trial_key"]})
    if run_id:
        client = MlflowClient(tracking["uri"])
        client.set_tag(run_id, "status", "failed")
        client.set_tag(run_id, "status_reason", reason)
        client.set_terminated(run_id, status="FAILED")


def _grid_cell_space(plan: SweepPlan, parent_run_id: str) -> dict:
    """Tune param space for a grid: one grid_search over explicit cells (N=0 is deduplicated)."""
    from ray import tune

    from sweeps.spaces import cell_key

    cells = [{"cell": c, "key": cell_key(c)} for c in plan.cells]
    return {
        "base": plan.base.to_dict(),
        "cell_and_key": tune.grid_search(cells),
        "meta_common": _meta(plan, parent_run_id),
    }


def _meta(plan: SweepPlan, parent_run_id: str) -> dict:
    """What every trial needs to find its MLflow parent and its storage."""
    return {
        "sweep": plan.name, "uri": plan.tracking_uri, "experiment": plan.experiment,
        "parent_run_id": parent_run_id, "storage_path": plan.storage_path, "git": git_info(), "inline": plan.inline,
    }


def grid_trial(config: dict) -> None:
    """Tune entry for grid sweeps: unpack the explicit cell, then run it."""
    cell = config["cell_and_key"]
    sweep_trial({"base": config["base"], "cell": cell["cell"], "meta": {**config["meta_common"], "cell_key": cell["key"]}})


def search_trial(config: dict) -> None:
    """Tune entry for Optuna sweeps: the sampled values are the cell."""
    from ray import tune

    cell = {k: v for k, v in config.items() if k not in ("base", "meta_common")}
    # Sampled values are not unique names: the Tune trial id is the cell's identity.
    key = "trial-" + tune.get_context().get_trial_id()
    sweep_trial({"base": config["base"], "cell": cell, "meta": {**config["meta_common"], "cell_key": key}})


def concurrency(plan: SweepPlan) -> int:
    """How many trials fit at once on the cluster's CPUs and GPUs."""
    import ray

    res = ray.cluster_resources()
    cfg = plan.base
    per_trial_cpu = cfg.workers * cfg.cpus_per_worker + (0 if plan.inline else DRIVER_CPU)
    fit = math.floor(res.get("CPU", 1) / per_trial_cpu + 1e-9)
    if cfg.gpus_per_worker > 0:
        fit = min(fit, math.floor(res.get("GPU", 0) / (cfg.workers * cfg.gpus_per_worker) + 1e-9))
    if fit < 1:
        raise SweepError(
            f"one trial needs {per_trial_cpu:.2f} CPUs and {cfg.workers * cfg.gpus_per_worker:g} GPUs, the cluster has "
            f"{res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs: lower --workers / --cpus-per-worker / --gpus-per-worker"
        )
    return min(fit, plan.max_concurrent or fit)


def trial_resources(plan: SweepPlan) -> dict:
    """What one Tune trial process holds: the whole trial when inline, else a sliver to wait on its TorchTrainer."""
    if not plan.inline:
        return {"CPU": DRIVER_CPU}
    resources = {"CPU": plan.base.cpus_per_worker}
    if plan.base.gpus_per_worker > 0:
        resources["GPU"] = plan.base.gpus_per_worker
    return resources


def build_tuner(plan: SweepPlan, parent_run_id: str):
    """A new Tuner, or the stored one when this sweep ran before (resume)."""
    from ray import tune

    path = f"{plan.storage_path.rstrip('/')}/{plan.name}"
    entry = grid_trial if plan.search == "grid" else search_trial
    trainable = tune.with_resources(entry, trial_resources(plan))
    if tune.Tuner.can_restore(path):
        print(f"resuming sweep {plan.name!r} from {path}: finished trials are kept, unfinished ones continue from their checkpoints", flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    limit = concurrency(plan)
    # Inline trials retry through Tune (from their last Tune checkpoint); TorchTrainers retry themselves.
    failures = tune.FailureConfig(max_failures=2 if plan.inline else 0)
    run_config = tune.RunConfig(name=plan.name, storage_path=plan.storage_path, verbose=1, failure_config=failures)
    if plan.search == "grid":
        print(f"sweep {plan.name!r}: {len(plan.cells)} trials, {limit} at a time", flush=True)
        # Inline trials keep their process for the next trial (reuse_actors; the Optuna config does
        # the same): a fresh one would import torch, Ray Tune and MLflow again (docs/benchmarks.md).
        tune_config = tune.TuneConfig(max_concurrent_trials=limit, reuse_actors=plan.inline)
        return tune.Tuner(trainable, param_space=_grid_cell_space(plan, parent_run_id), tune_config=tune_config, run_config=run_config)
    from sweeps.optuna_search import optuna_tune_config, optuna_param_space

    print(f"sweep {plan.name!r}: Optuna TPE, {plan.num_samples} trials, {limit} at a time, ASHA early stopping", flush=True)
    space = {**optuna_param_space(plan.space), "base": plan.base.to_dict(), "meta_common": _meta(plan, parent_run_id)}
    return tune.Tuner(trainable, param_space=space, tune_config=optuna_tune_config(plan, limit), run_config=run_config)


def mark_stopped_runs(plan: SweepPlan, parent_run_id: str) -> None:
    """Child runs still 'running' after Tune ended were stopped early by the scheduler (ASHA)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    exp_id = ensure_experiment(plan.tracking_uri, plan.experiment)
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.status = 'running'")
    for run in runs:
        # A torn-down trial cannot say so itself; Tune's end is the only witness.
        client.set_tag(run.info.run_id, "status", "stopped")
        client.set_terminated(run.info.run_id, status="KILLED")


def print_table(plan: SweepPlan, results) -> None:
    """A kappa x N text table of the final 1-NFE metric (mean over seeds) for the terminal."""
    metric = plan.base.metric_names()[0]
    cells: dict[tuple, list] = {}
    for r in results:
        cfg = r.config or {}
        cell = cfg.get("cell_and_key", {}).get("cell") if "cell_and_key" in cfg else None
        if cell is None or not r.metrics:
            continue
        cells.setdefault((cell["order"], cell["kappa"]), []).append((r.metrics.get(metric), r.metrics.get("status")))
    if not cells:
        return
    orders = sorted({o for o, _ in cells})
    kappas = sorted({k for _, k in cells})
    print(f"\n{metric} (final, mean over seeds; * = some trial diverged/collapsed)")
    print("order " + "".join(f"{f'kappa={k:g}':>16}" for k in kappas))
    for o in orders:
        row = f"N={o:<4}"
        for k in kappas:
            vals = cells.get((o, k), [])
            ok = [v for v, s in vals if v is not None and s in ("finished",)]
            flag = "*" if any(s not in ("finished",) for _, s in vals) else " "
            row += f"{(f'{sum(ok) / len(ok):.4f}' if ok else '-') + flag:>16}"
        print(row)


def run_sweep(plan: SweepPlan) -> int:
    """Validate, open the parent run, run the trials, mark leftovers, print, report; exit code."""
    try:
        validate(plan)
        parent_run_id, created = open_parent_run(plan)
    except (ConfigError, TrackingUnavailable, DatasetUnavailable, FIDUnavailable, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    started = time.time()
    from trainables.ray_setup import init_ray

    init_ray(plan.address)
    try:
        tuner = build_tuner(plan, parent_run_id)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    results = tuner.fit()
    mark_stopped_runs(plan, parent_run_id)
    print_table(plan, results)
    wall = time.time() - started
    from mlflow.tracking import MlflowClient

    MlflowClient(plan.tracking_uri).log_metric(parent_run_id, "sweep_wall_time_s", wall)
    print(f"\nsweep {plan.name!r} done in {wall / 60:.1f} min; MLflow parent run {parent_run_id} in experiment {plan.experiment!r}")
    if plan.report:
        from dashboards.report import build_report

        from trainables.tracking import runs_dir

        path = build_report(plan.tracking_uri, plan.experiment, parent_run_ids=[parent_run_id], out_dir=runs_dir() / "reports" / slug(plan.name))
        print(f"report: {path}")
    ui = f"mlflow ui --backend-store-uri {plan.tracking_uri}" if plan.tracking_uri.startswith("sqlite") else plan.tracking_uri
    print(f"open the MLflow UI: {ui}")
    MlflowClient(plan.tracking_uri).set_terminated(parent_run_id, status="FINISHED")
    errors = sum(1 for r in results if r.error)
    if errors:
        print(f"{errors} trial(s) failed with errors; see the Tune output above", file=sys.stderr)
    return 1 if errors else 0
