"""Sampler sweeps on frozen checkpoints: a trial's final checkpoint scored at many sampler settings, on Ray Tune.

  python sweeps/sample_grid.py --run TRIAL_RUN_ID          # NFE 1,2,4 x few,any,mul x 3 time grids
  python sweeps/sample_grid.py --sweep moons-smoke         # every finished trial of a sweep
  python sweeps/sample_grid.py --run ID --nfe 2 --mid-times 0.2,0.4,0.6,0.8 --styles any
  python -m dashboards.sampler_table --run TRIAL_RUN_ID    # the table again, as Markdown

Each grid point is one Tune trial and one MLflow child run of the trial's run (params nfe,
sample_style, times, time_power, sampling_guidance, weights, samples; metric sampler_<family>).
Points use the trial's own evaluation: the same held-out reference and fixed noise, so the
trial's own setting reproduces its final metric. Rerunning the same command skips points that
already finished. At the end each trial's table is printed, and an HTML page with a heatmap is
written to disk and logged to the trial's run under sampler/.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# `python sweeps/sample_grid.py` puts sweeps/ first on sys.path; the packages live one up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboards.errors import DashboardError  # noqa: E402
from sweeps.sampler_point import WEIGHTS  # noqa: E402
from trainables.locations import default_storage_path, default_tracking_uri, reports_dir, safe_name  # noqa: E402
from trainables.preflight import BAD_INPUT  # noqa: E402
from trainables.rcgm.checks import RealRange  # noqa: E402
from trainables.rcgm.errors import ConfigError  # noqa: E402

EXIT_BAD_INPUT, EXIT_POINT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
CPUS = RealRange(0.0, 64.0, low_open=True)
GPUS = RealRange(0.0, 8.0)


def parse_args(argv=None) -> argparse.Namespace:
    """The sampler grid's command line."""
    parser = argparse.ArgumentParser(prog="sweeps/sample_grid.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", action="append", help="a trial's MLflow run id (repeatable)")
    which.add_argument("--sweep", help="a sweep's name: every finished trial of its newest parent run")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--nfe", default="1,2,4", help="comma-separated numbers of function evaluations (default %(default)s)")
    grid.add_argument("--styles", default="few,any,mul", help="samplers: few (jump to 0, re-noise), any (jump to the next "
                      "time), mul (Euler with r = t) (default %(default)s)")
    grid.add_argument("--mid-times", default="0.3,0.5,0.7", help="the middle time m of 2-NFE grids (1, m, 0), each in "
                      "(0, 1) (default %(default)s)")
    grid.add_argument("--time-power", default=None, help="powers rho of the grids above 2 NFE, t_j = (1 - j/n)^rho "
                      "(1 = uniform, > 1 more steps near the data); default: the rhos of --mid-times, 2^-rho = m")
    grid.add_argument("--guidance", default="1", help="sampling guidance weights w, F_w = F(null) + w (F(y) - F(null)), "
                      "1 = the plain model; class-conditional trials only (default %(default)s)")
    grid.add_argument("--weights", default="online", help="which weights sample: online (default), target (the "
                      "target model), ema (the evaluation EMA, when the trial kept one)")
    grid.add_argument("--samples", type=int, default=None, help="samples per point (default: the trial's eval_samples, "
                      "the same reference set and noise as its own evaluation)")
    where = parser.add_argument_group("where")
    where.add_argument("--experiment", default="kappa_by_order", help="MLflow experiment of --sweep (default %(default)s); "
                       "a point's run goes in its trial's experiment")
    where.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else "
                       "SQLite under runs/)")
    where.add_argument("--storage-path", default=None, help="Ray Tune's storage for the grid's own state (default "
                        "$RCGM_STORAGE_PATH, else runs/ray-results)")
    where.add_argument("--address", default=None, help="Ray cluster address (default RAY_ADDRESS, else a local Ray)")
    where.add_argument("--cpus-per-point", type=float, default=1.0, help="CPUs per point, also its torch threads "
                       "(default %(default)s)")
    where.add_argument("--gpus-per-point", type=float, default=0.0, help="GPUs per point (default 0: CPU)")
    where.add_argument("--no-report", action="store_true", help="with --sweep: do not rebuild the sweep's report")
    where.add_argument("--dry-run", action="store_true", help="check everything and print the points, run none")
    where.add_argument("--verbose", action="store_true", help="Ray's and Tune's own output")
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace):
    """The grid and resources from the flags, each bad value refused naming its flag."""
    from sweeps.sampler_space import SamplerGrid

    if args.weights not in WEIGHTS:
        raise ConfigError("weights", args.weights, "one of " + ", ".join(WEIGHTS), flag="--weights")
    if args.samples is not None and args.samples < 2:
        raise ConfigError("samples", args.samples, "an integer >= 2 (or unset: the trial's eval_samples)", flag="--samples")
    for name, accepts in (("cpus_per_point", CPUS), ("gpus_per_point", GPUS)):
        try:
            accepts.check(name, getattr(args, name))
        except ConfigError as err:
            raise err.with_flag("--" + name.replace("_", "-")) from None
    return SamplerGrid.from_flags(args.nfe, args.styles, args.mid_times, args.time_power, args.guidance)


def prepare(args: argparse.Namespace, folder: Path):
    """Flags, tracking store, trials, checkpoints and points, all checked before Ray starts: (uri, selected, points, done)."""
    from dashboards.collect import check_store
    from sweeps.sampler_trials import check_selected, fetch, plan_points, runs_by_id, runs_of_sweep
    from trainables.locations import check_not_temporary, check_storage_path
    from trainables.tracking import check_tracking_uri

    grid = check_flags(args)
    uri = args.tracking_uri or default_tracking_uri()
    storage = args.storage_path or default_storage_path()
    check_not_temporary(uri, storage)
    check_storage_path(storage)
    check_store(uri)  # a missing SQLite file holds no trial: say so rather than create an empty store
    uri = check_tracking_uri(uri)
    runs = runs_by_id(uri, args.run) if args.run else runs_of_sweep(uri, args.experiment, args.sweep)
    selected = [fetch(uri, run, folder, args.samples) for run in runs]
    for s in selected:
        check_selected(s, grid, args.weights)
    points, done = plan_points(selected, grid, args.weights, args.cpus_per_point, args.gpus_per_point)
    return uri, selected, points, done


def point_name(trial) -> str:
    """Tune's name and folder for a point: its trial run and setting (two trials' points never share one)."""
    point = trial.config["point"]
    return safe_name(f"{point['trial']['run_name']}-{point['trial']['run_id'][:8]}-{point['key']}")


def run_points(points: list, args: argparse.Namespace) -> tuple[int, int]:
    """Every point as a Tune trial on a local Ray (or --address); returns (finished, failed)."""
    from ray import tune

    from sweeps.launcher import stop_gracefully_on_sigterm
    from sweeps.sampler_point import sampler_point
    from sweeps.sampler_progress import PointProgress
    from trainables.ray_setup import init_ray

    ray = init_ray(args.address, verbose=args.verbose)
    cpus = args.cpus_per_point
    limit = max(1, math.floor(ray.cluster_resources().get("CPU", 1) / cpus + 1e-9))
    if args.gpus_per_point > 0:
        limit = min(limit, max(1, math.floor(ray.cluster_resources().get("GPU", 0) / args.gpus_per_point + 1e-9)))
    resources = {"CPU": cpus, **({"GPU": args.gpus_per_point} if args.gpus_per_point > 0 else {})}
    print(f"{len(points)} sampler points, {limit} at a time", flush=True)
    # Reused processes keep a trial's checkpoint loaded for its next point (sweeps/sampler_point.py).
    tune_config = tune.TuneConfig(max_concurrent_trials=limit, reuse_actors=True, trial_name_creator=point_name,
                                  trial_dirname_creator=point_name)
    run_config = tune.RunConfig(name=f"sampler-grid-{time.strftime('%Y%m%d-%H%M%S')}",
                                storage_path=args.storage_path or default_storage_path(), verbose=1 if args.verbose else 0,
                                failure_config=tune.FailureConfig(max_failures=1),
                                callbacks=[] if args.verbose else [PointProgress(len(points))])
    space = {"point": tune.grid_search([{"key": p.key, **p.to_dict()} for p in points])}
    restore = stop_gracefully_on_sigterm()
    try:
        results = tune.Tuner(tune.with_resources(sampler_point, resources), param_space=space, tune_config=tune_config,
                             run_config=run_config).fit()
    finally:
        restore()
    if results.num_terminated + results.num_errors < len(points):
        raise KeyboardInterrupt  # Tune caught Ctrl-C / SIGTERM and returned early
    return results.num_terminated, results.num_errors


def write_tables(uri: str, selected: list, show_tables: bool) -> None:
    """Each trial's HTML page and heatmap (on disk and in its run's artifacts) and its Markdown table or best line."""
    from dashboards.sampler_table import ARTIFACT_DIR, trial_markdown, trial_summary, write_trial_page

    for s in selected:
        t = s.trial
        try:
            page = write_trial_page(uri, t.run_id, reports_dir(f"sampler-{t.run_name}-{t.run_id[:8]}"))
        except DashboardError as err:
            print(f"{t.run_name}: {err}")
            continue
        print("\n" + trial_markdown(uri, t.run_id) if show_tables else trial_summary(uri, t.run_id), end="")
        print(f"sampler page: {page}\n  (also in MLflow run {t.run_id}, artifacts {ARTIFACT_DIR}/sampler.html)")


def sweep_report(uri: str, experiment: str, sweep: str) -> str:
    """Rebuild the sweep's report (it gains the sampler section) and say where it is."""
    from dashboards.report import build_report
    from trainables.tracking import ensure_experiment, find_run

    parent = find_run(uri, ensure_experiment(uri, experiment), {"rcgm.kind": "sweep", "rcgm.sweep": sweep})
    path = build_report(uri, experiment, parent_run_ids=[parent], out_dir=reports_dir(sweep))
    return f"sweep report: {path}\n  (also in MLflow parent run {parent}, artifacts report/report.html)"


def main(argv=None) -> int:
    """Check everything (before Ray), run the missing points, print and write the tables."""
    from trainables.ray_setup import quiet_driver_logs

    args = parse_args(argv)
    quiet_driver_logs(args.verbose)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per checkpoint download otherwise
    started = time.time()
    folder = Path(tempfile.mkdtemp(prefix="rcgm-sampler-"))  # the checkpoints' copies, for this command only
    try:
        try:
            uri, selected, points, done = prepare(args, folder)
            if args.dry_run:
                for p in points:
                    print(f"{p.trial.run_name} {p.key}")
                print(f"{len(points)} points to run, {done} already done, on {len(selected)} trial(s)")
                return 0
            if points and args.address is None:
                from trainables.ray_setup import resolve_ray_address

                args.address = resolve_ray_address(None) or "local"  # a dead cluster: refused in seconds
        except (*BAD_INPUT, DashboardError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"{len(selected)} trial(s): {len(points) + done} sampler points, {done} already done", flush=True)
        failed = 0
        if points:
            try:
                _, failed = run_points(points, args)
            except KeyboardInterrupt:
                print("interrupted: the same command runs the points not yet finished", file=sys.stderr)
                return EXIT_INTERRUPTED
        write_tables(uri, selected, show_tables=bool(args.run))
        if args.sweep and not args.no_report:
            print(sweep_report(uri, args.experiment, args.sweep))
        print(f"done in {(time.time() - started) / 60:.1f} min")
        if failed:
            print(f"{failed} point(s) failed; their MLflow runs say why (status failed, status_reason)", file=sys.stderr)
        return EXIT_POINT_FAILED if failed else 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
