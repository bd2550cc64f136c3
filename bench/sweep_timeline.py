"""How a finished sweep packed its trials, read back from MLflow: `python -m bench.sweep_timeline NAME`.

  python -m bench.sweep_timeline moons-default --wall-s 905 --launch 1795000000
  python -m bench.sweep_timeline mnist-10k --tracking-uri sqlite:///runs/mlflow.db

Without --launch / --wall-s the sweep's parent run start and end stand in for them (the parent
run opens after imports, validation and ray.init, so "before first trial" is then a lower bound).
"""

from __future__ import annotations

import argparse
import sys

from bench.machine import markdown_table


def read_sweep(uri: str, experiment: str, sweep: str):
    """The parent run and its child runs; an unknown sweep is refused by name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parents = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`rcgm.sweep` = '{sweep}' and tags.`rcgm.kind` = 'sweep'")
    if not parents:
        raise SystemExit(f"error: no sweep {sweep!r} in experiment {experiment!r} at {uri}: pass its --name (and --experiment)")
    parent = parents[0]
    kids = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, [k for k in kids if k.info.end_time]  # a trial still running has no time yet


def sweep_timeline(launch: float, wall: float, slots: int, children) -> dict:
    """Where a sweep's wall time went, from its MLflow child runs (each open from Rank0's start to its end)."""
    starts = [c.info.start_time / 1000.0 for c in children]
    ends = [c.info.end_time / 1000.0 for c in children]
    work_s = [e - b for b, e in zip(starts, ends)]
    ideal = sum(work_s) / slots
    span = max(ends) - min(starts)
    return {
        "finished": len(children), "trial_work_s": work_s, "sum_trial_work_s": sum(work_s), "ideal_s": ideal,
        "wall_s": wall, "wall_vs_ideal": wall / ideal,
        # before: interpreter, imports, validation, ray.init, parent run, first trial process; after: table, shutdown.
        "before_first_trial_s": min(starts) - launch, "trials_span_s": span, "span_vs_ideal": span / ideal,
        "after_last_trial_s": launch + wall - max(ends),
        # Runs made before the rcgm.process tag existed say nothing: None, not 1.
        "processes": len({c.data.tags["rcgm.process"] for c in children if "rcgm.process" in c.data.tags}) or None,
    }


def main(argv=None) -> int:
    """Print the sweep's packing table (the same columns as bench.platform_cost's sweeps)."""
    from trainables.locations import default_tracking_uri

    parser = argparse.ArgumentParser(prog="python -m bench.sweep_timeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="the sweep's --name")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the project's SQLite store under runs/)")
    parser.add_argument("--experiment", default="kappa_by_order")
    parser.add_argument("--slots", type=int, default=2, help="concurrent trials the sweep ran (default %(default)s)")
    parser.add_argument("--launch", type=float, default=None, help="unix time the command was started (default: parent run start)")
    parser.add_argument("--wall-s", type=float, default=None, help="seconds the command took (default: parent run length)")
    args = parser.parse_args(argv)
    parent, kids = read_sweep(args.tracking_uri or default_tracking_uri(), args.experiment, args.sweep)
    if not kids:
        print(f"error: sweep {args.sweep!r} has no finished trials yet", file=sys.stderr)
        return 2
    launch = args.launch if args.launch is not None else parent.info.start_time / 1000.0
    wall = args.wall_s if args.wall_s is not None else (parent.info.end_time or parent.info.start_time) / 1000.0 - launch
    t = sweep_timeline(launch, wall, args.slots, kids)
    print(f"sweep {args.sweep!r} (parent run {parent.info.run_id}, git {parent.data.tags.get('git.commit', '?')[:7]}, "
          f"runner {parent.data.params.get('trial_runner', '?')})\n")
    print(markdown_table(
        ["trials", "trial processes", "sum of trial times s", "ideal s", "wall s", "wall / ideal", "before first trial s",
         "trials span s", "span / ideal", "after last trial s"],
        [[t["finished"], t["processes"] or "-", f"{t['sum_trial_work_s']:.1f}", f"{t['ideal_s']:.1f}", f"{t['wall_s']:.1f}",
          f"{t['wall_vs_ideal']:.2f}", f"{t['before_first_trial_s']:.1f}", f"{t['trials_span_s']:.1f}",
          f"{t['span_vs_ideal']:.2f}", f"{t['after_last_trial_s']:.1f}"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
