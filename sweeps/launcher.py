"""Running a sweep: validate every trial, open the MLflow parent run, build and run the Tuner, close with a table.

The entry scripts (kappa_by_order.py, schedule_search.py) turn flags into a SweepPlan; this
module checks it before Ray starts, turns it into typed TrialSpecs for Tune, and closes the sweep.
The trial itself runs in the trainable layer (trainables.tune_trial); every MLflow write is in
trainables.tracking.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from dataclasses import dataclass, field
from functools import cached_property

from trainables.config import TrialConfig, flag_of
from trainables.locations import (
    REPO_ROOT, check_not_temporary, check_storage_path, mlflow_ui_command, optuna_dashboard_command, reports_dir,
    temporary_checkout,
)
from trainables.preflight import BAD_INPUT, check_trial_inputs
from trainables.rcgm.errors import ConfigError
from trainables.tracking import (
    TrialTracking, close_sweep_run, ensure_experiment, git_info, mark_stopped_trials, open_sweep_run, sweep_outcome,
)
from trainables.tune_trial import SearchTemplate, TrialSpec, apply_cell, setting_of

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C
DRIVER_CPU = 0.01  # a Tune trial that only waits on its TorchTrainer
RUNNER_CHOICES = ("auto", "inline", "train")
# The grid's axes: set per cell, by the plural flags of kappa_by_order.py.
GRID_FLAGS = {axis: f"--{axis}s" for axis in ("objective", "order", "kappa", "seed")}
PROGRESS_INTERVAL_S = 30.0


class SweepError(RuntimeError):
    """A sweep cannot start as asked; the message says what to change."""


@dataclass
class SweepPlan:
    """Everything a sweep needs, validated before Ray starts."""

    name: str
    experiment: str
    tracking_uri: str
    storage_path: str
    values: dict  # trial settings as given (named size under the flags); placeholders resolve per cell
    search: str = "grid"  # or "optuna"
    cells: list[dict] = field(default_factory=list)
    space: dict = field(default_factory=dict)  # optuna: name -> sweeps.spaces.Param
    num_samples: int = 0
    max_concurrent: int | None = None
    address: str | None = None
    report: bool = True
    optuna_storage: str | None = None
    settings: dict = field(default_factory=dict)  # what the parent run records; a resumed sweep must match
    runner: str = "auto"  # inline (in the Tune trial process), train (a TorchTrainer per trial), or auto
    verbose: bool = False  # Ray's and Tune's own output instead of the progress view

    @cached_property
    def base(self) -> TrialConfig:
        """The trial settings without any cell: what every trial shares (resources, task, metric)."""
        return TrialConfig.from_dict(self.values)

    @property
    def inline(self) -> bool:
        """Whether trials run inside their Tune process: auto picks it for one-worker trials."""
        return self.runner == "inline" or (self.runner == "auto" and self.base.workers == 1)

    @property
    def trial_runner(self) -> str:
        """'inline' or 'train', as the parent run records it."""
        return "inline" if self.inline else "train"

    @property
    def total_trials(self) -> int:
        """How many trials the sweep runs."""
        return len(self.cells) if self.search == "grid" else self.num_samples

    def cell_config(self, cell: dict) -> TrialConfig:
        """The trial config of one grid cell (or one sampled point), derived defaults resolved for it."""
        return TrialConfig.from_dict(apply_cell(self.values, cell))


def validate(plan: SweepPlan) -> SweepPlan:
    """Refuse bad cells, a missing dataset or an unusable tracking URI before any compute."""
    from trainables.tracking import check_tracking_uri

    if plan.runner not in RUNNER_CHOICES:
        raise ConfigError("trial_runner", plan.runner, "one of " + ", ".join(RUNNER_CHOICES), flag="--trial-runner")
    if plan.max_concurrent is not None and plan.max_concurrent < 1:
        raise ConfigError("max_concurrent", plan.max_concurrent, "an integer >= 1, or unset (what the cluster fits)",
                          flag="--max-concurrent")
    if plan.runner == "inline" and plan.base.workers > 1:
        raise ConfigError("trial_runner", plan.runner, "'train' or 'auto' with --workers > 1 (DDP needs a TorchTrainer)",
                          flag="--trial-runner")
    for cell in plan.cells:
        try:
            plan.cell_config(cell)
        except ConfigError as err:
            if err.field in GRID_FLAGS:
                raise err.with_flag(GRID_FLAGS[err.field], field=err.field + "s") from None
            raise
    if plan.search == "optuna":
        if "order" in plan.space and plan.base.objective != "rcgm":
            raise ConfigError("objective", plan.base.objective, "rcgm with a space that searches the order (the peers "
                              "are first order only)", flag="--objective")
        for name, param in plan.space.items():
            check_not_fixed(plan.values, name, param)
            for end in (param.low, param.high):  # e.g. order 1 and 6, kappa 1 - 1e-4 and 0.5
                plan.cell_config({name: param.kind(end)})
    check_trial_inputs(plan.base)
    check_not_temporary(plan.tracking_uri, plan.storage_path, plan.optuna_storage)  # before the check creates a store there
    check_storage_path(plan.storage_path)
    if plan.optuna_storage and plan.optuna_storage.startswith("sqlite:///"):
        # Optuna opens its file only once Ray runs: an unwritable folder would fail a minute in.
        check_storage_path(str(Path(plan.optuna_storage.removeprefix("sqlite:///")).parent), flag="--optuna-storage")
    plan.tracking_uri = check_tracking_uri(plan.tracking_uri)
    return plan


def check_not_fixed(values: dict, name: str, param) -> None:
    """Refuse a searched setting that the trial values also fix (a flag such as --kappa): the search would override it."""
    setting = setting_of(name)
    if setting.startswith("time_params."):
        key = setting.split(".", 1)[1]
        given = values.get("time_params", {}).get(key)
        field, flag = f"time_params.{key}", "--time-params"
    else:
        given, field, flag = values.get(setting), setting, flag_of(setting)
    if given is not None:
        sets = "" if name == setting else f" sets {setting}"
        raise ConfigError(field, given, f"no value: the search samples it ({name} in {param.low:g}..{param.high:g}{sets})",
                          flag=flag)


def open_parent_run(plan: SweepPlan) -> tuple[str, bool]:
    """The sweep's parent run; a reused name with other settings is refused."""
    # Inline and TorchTrainer trials keep their checkpoints in different places: a resume must not switch.
    settings = {**plan.settings, "trial_runner": plan.trial_runner}
    tags = {"rcgm.search": plan.search, "rcgm.storage": f"{plan.storage_path}/{plan.name}"}
    if plan.search == "optuna":
        # The dashboards read what the search optimised from these two tags.
        tags.update({"rcgm.metric": "final." + plan.base.metric_names()[0], "rcgm.mode": "min"})
    return open_sweep_run(plan.tracking_uri, plan.experiment, plan.name, settings, tags)


def trial_tracking(plan: SweepPlan, parent_run_id: str, key: str) -> TrialTracking:
    """Where a trial of this sweep reports: its child run, found again by sweep and cell key."""
    return TrialTracking(plan.tracking_uri, plan.experiment, trial_key=f"{plan.name}/{key}", run_name=key,
                         parent_run_id=parent_run_id, sweep=plan.name, tags=git_info())


def grid_specs(plan: SweepPlan, parent_run_id: str) -> list[TrialSpec]:
    """One TrialSpec per grid cell."""
    from sweeps.spaces import cell_key

    return [TrialSpec(cell_key(cell), plan.cell_config(cell), trial_tracking(plan, parent_run_id, cell_key(cell)),
                      plan.storage_path, plan.trial_runner) for cell in plan.cells]


def search_template(plan: SweepPlan, parent_run_id: str) -> SearchTemplate:
    """What every Optuna trial shares; the sampled values complete it inside the trial."""
    spec = TrialSpec("", plan.base, trial_tracking(plan, parent_run_id, ""), plan.storage_path, plan.trial_runner)
    return SearchTemplate(dict(plan.values), spec)


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

    from sweeps.progress import SweepProgress
    from trainables.tune_trial import trial_name, tune_config_of, tune_trial

    path = f"{plan.storage_path.rstrip('/')}/{plan.name}"
    trainable = tune.with_resources(tune_trial, trial_resources(plan))
    if tune.Tuner.can_restore(path):
        print(f"resuming sweep {plan.name!r} from {path}: finished trials are kept, unfinished ones continue from their checkpoints", flush=True)
        try:
            # The progress view comes back with the Tuner: Tune keeps its callbacks in the experiment state.
            return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        except ValueError as err:
            raise SweepError(f"cannot resume sweep {plan.name!r} from {path}: {err} (it was started by another version "
                             f"of this code); pass --name NEW_NAME for a new sweep") from None
    limit = concurrency(plan)
    # Inline trials retry through Tune (from their last Tune checkpoint); TorchTrainers retry themselves.
    failures = tune.FailureConfig(max_failures=2 if plan.inline else 0)
    callbacks = [] if plan.verbose else [SweepProgress(plan.total_trials, plan.base.steps, plan.base.metric_names(),
                                                       interval=PROGRESS_INTERVAL_S)]
    run_config = tune.RunConfig(name=plan.name, storage_path=plan.storage_path, verbose=1 if plan.verbose else 0,
                                failure_config=failures, callbacks=callbacks)
    # Trials named by their cell key (N2-k0.999-s1) in Tune's output, folders and the progress view.
    naming = dict(trial_name_creator=trial_name, trial_dirname_creator=trial_name)
    where = "in their Tune trial processes" if plan.inline else "as Ray Train TorchTrainers"
    if plan.search == "grid":
        print(f"sweep {plan.name!r}: {len(plan.cells)} trials of {plan.base.steps} steps, {limit} at a time, {where}", flush=True)
        # Inline trials keep their process for the next trial (reuse_actors; the Optuna config does
        # the same): a fresh one would import torch, Ray Tune and MLflow again (docs/benchmarks.md).
        tune_config = tune.TuneConfig(max_concurrent_trials=limit, reuse_actors=plan.inline, **naming)
        space = {"trial": tune.grid_search([tune_config_of(spec) for spec in grid_specs(plan, parent_run_id)])}
        return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)
    from sweeps.optuna_search import optuna_param_space, optuna_tune_config

    print(f"sweep {plan.name!r}: Optuna TPE, {plan.num_samples} trials, {limit} at a time, ASHA early stopping, {where}", flush=True)
    space = {**optuna_param_space(plan.space), "search": search_template(plan, parent_run_id).to_dict()}
    return tune.Tuner(trainable, param_space=space, tune_config=optuna_tune_config(plan, limit, naming), run_config=run_config)


def final_rows(results) -> list[tuple]:
    """((objective, order), kappa, final 1-NFE metric, status) per grid trial of a finished Tuner."""
    rows = []
    for r in results:
        entry = (r.config or {}).get("trial")
        if entry is None or not r.metrics:
            continue
        cfg = TrialSpec.from_dict(entry["spec"]).config
        rows.append(((cfg.objective, cfg.order), cfg.kappa, r.metrics.get(cfg.metric_names()[0]), r.metrics.get("status")))
    return rows


def run_sweep(plan: SweepPlan) -> int:
    """Validate, open the parent run, run the trials, mark leftovers, print, report; exit code.

    However the sweep ends, its parent run is closed: FINISHED, FAILED (an error in the driver)
    or KILLED (Ctrl-C, SIGTERM, `ray job stop`), with the reason in its status_reason tag.
    """
    from trainables.ray_setup import quiet_driver_logs, resolve_ray_address

    quiet_driver_logs(plan.verbose)
    try:
        validate(plan)
        # A dead address or a stale current-cluster file is refused here, before any MLflow run exists.
        plan.address = resolve_ray_address(plan.address) or "local"
        parent_run_id, _ = open_parent_run(plan)
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    started = time.time()
    print(f"tracking: {plan.tracking_uri} (experiment {plan.experiment!r}); checkpoints: {plan.storage_path}/{plan.name}", flush=True)
    if plan.optuna_storage:
        print(f"Optuna study {plan.name!r}, live: {optuna_dashboard_command(plan.optuna_storage)}", flush=True)
    try:
        return _run_trials(plan, parent_run_id, started)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        close_sweep_run(plan.tracking_uri, parent_run_id, time.time() - started, status="FAILED", reason=str(err))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # A second Ctrl-C while Tune was saving its state: nothing more to wait for.
        _close_interrupted(plan, parent_run_id, started)
        return EXIT_INTERRUPTED
    except BaseException as err:
        close_sweep_run(plan.tracking_uri, parent_run_id, time.time() - started, status="FAILED",
                        reason=f"{type(err).__name__}: {err}"[:500])
        raise


def _run_trials(plan: SweepPlan, parent_run_id: str, started: float) -> int:
    """Ray, the Tuner, the closing table and report; the parent run is closed by the caller on errors."""
    from sweeps.summary import grid_table, outcome_line
    from trainables.ray_setup import init_ray

    init_ray(plan.address, verbose=plan.verbose)
    # After ray.init: Ray's core installs its own SIGTERM handler (a crash dump, then abort).
    restore = stop_gracefully_on_sigterm()
    try:
        results = build_tuner(plan, parent_run_id).fit()
    finally:
        restore()
    if results.num_terminated + results.num_errors < plan.total_trials:
        # Tune caught a SIGINT (or our SIGTERM): it saved its state and returned early.
        _close_interrupted(plan, parent_run_id, started)
        return EXIT_INTERRUPTED
    mark_stopped_trials(plan.tracking_uri, plan.experiment, parent_run_id)
    print()
    for line in grid_table(plan.base.metric_names()[0], final_rows(results)):
        print(line)
    print("\n" + outcome_line(*sweep_outcome(plan.tracking_uri, plan.experiment, parent_run_id)))
    wall = time.time() - started
    print(f"sweep {plan.name!r} done in {wall / 60:.1f} min; MLflow parent run {parent_run_id} in experiment {plan.experiment!r}")
    if plan.report:
        print(report_line(plan, parent_run_id))
    experiment_id = ensure_experiment(plan.tracking_uri, plan.experiment)
    print(f"open the MLflow UI: {mlflow_ui_command(plan.tracking_uri, experiment_id)}")
    if plan.optuna_storage:
        print(f"open the Optuna study {plan.name!r}: {optuna_dashboard_command(plan.optuna_storage)}")
    close_sweep_run(plan.tracking_uri, parent_run_id, wall)
    errors = sum(1 for r in results if r.error)
    if errors:
        print(f"{errors} trial(s) failed with errors; their error files are named above", file=sys.stderr)
    return 1 if errors else 0


def report_line(plan: SweepPlan, parent_run_id: str) -> str:
    """Build the report and say where it is: on disk, and always in the parent run's artifacts."""
    from dashboards.report import ARTIFACT_DIR, build_report

    out = reports_dir(plan.name)
    lost = temporary_checkout() and out.resolve().is_relative_to(REPO_ROOT)
    if lost:
        # Inside a Ray job the default folder is Ray's temporary copy of the code: MLflow keeps the report.
        out = Path(tempfile.mkdtemp(prefix="rcgm-report-"))
    path = build_report(plan.tracking_uri, plan.experiment, parent_run_ids=[parent_run_id], out_dir=out)
    artifacts = f"MLflow parent run {parent_run_id}, artifacts {ARTIFACT_DIR}/report.html"
    if lost:
        shutil.rmtree(out, ignore_errors=True)
        return f"report: {artifacts} (set RCGM_RUNS_DIR for a copy on disk)"
    # The path alone on its line: people copy it into a browser.
    return f"report: {path}\n  (also in {artifacts})"


def _close_interrupted(plan: SweepPlan, parent_run_id: str, started: float) -> None:
    """Close an interrupted sweep's runs as KILLED and say how to resume it."""
    reason = "interrupted (Ctrl-C, SIGTERM or `ray job stop`); the same command resumes it"
    stopped = mark_stopped_trials(plan.tracking_uri, plan.experiment, parent_run_id, reason=reason)
    close_sweep_run(plan.tracking_uri, parent_run_id, time.time() - started, status="KILLED", reason=reason)
    print(f"\nsweep {plan.name!r} interrupted: {stopped} running trial(s) stopped, Tune's state saved in "
          f"{plan.storage_path}/{plan.name}; the same command resumes it (MLflow parent run {parent_run_id}: KILLED)",
          file=sys.stderr, flush=True)


def stop_gracefully_on_sigterm():
    """Make SIGTERM (`ray job stop`, a scheduler's kill) stop the sweep as Ctrl-C does; returns the undo.

    Tune installs a SIGINT handler during fit() that saves the experiment state and returns early.
    SIGTERM calls whatever SIGINT handler is current instead of Python's default (instant death).
    The handler is called directly: Ray job drivers start with SIGINT blocked.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigterm(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)
