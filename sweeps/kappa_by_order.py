"""The main job: a kappa x order N x seed grid of RCGM trials on Ray Tune, tracked in MLflow.

  python sweeps/kappa_by_order.py                      # local Ray, MLflow on SQLite under runs/
  python sweeps/kappa_by_order.py --smoke              # 2 orders x 2 kappas, ~1-2 minutes
  python sweeps/kappa_by_order.py --size first_order   # RCGM N=1,2 beside MeanFlow, shortcut, consistency
  ray job submit --working-dir . -- python sweeps/kappa_by_order.py --storage-path /shared/ray

Rerunning the same command resumes the sweep: finished trials are kept, unfinished ones
continue from their checkpoints. At the end the kappa x N heatmap report is written and
logged to the sweep's MLflow parent run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# `python sweeps/kappa_by_order.py` puts sweeps/ first on sys.path; the packages live one up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.args import add_sweep_arguments  # noqa: E402
from sweeps.launcher import EXIT_BAD_INPUT, GRID_FLAGS, SweepPlan, run_sweep, validate  # noqa: E402
from sweeps.spaces import GRIDS, grid_cells  # noqa: E402
from trainables.cli import add_trial_arguments, trial_values_from_args  # noqa: E402
from trainables.data.catalog import IMAGE_TASKS  # noqa: E402
from trainables.locations import default_storage_path, default_tracking_uri  # noqa: E402
from trainables.preflight import BAD_INPUT  # noqa: E402
from trainables.rcgm.errors import ConfigError  # noqa: E402
from trainables.rcgm.ranges import OBJECTIVE  # noqa: E402

GRID_FIELDS = tuple(GRID_FLAGS)
OBJECTIVES = OBJECTIVE.choices


def parse_list(text: str, kind, flag: str) -> tuple:
    """'0,0.9,0.999' -> (0.0, 0.9, 0.999), refusing anything else with the flag's name."""
    try:
        return tuple(kind(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ConfigError(flag, text, f"comma-separated {kind.__name__} values", flag="--" + flag) from None


def parse_args(argv=None) -> argparse.Namespace:
    """The main job's command line."""
    parser = argparse.ArgumentParser(prog="sweeps/kappa_by_order.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(GRIDS), default=None,
                        help="named grid size (default: 'mnist' for image tasks, else 'default'): " + "; ".join(f"{k}: {v.about}" for k, v in GRIDS.items()))
    parser.add_argument("--smoke", action="store_true", help="same as --size smoke")
    parser.add_argument("--objectives", default=None,
                        help="comma-separated objectives: rcgm (every order) and first-order peers under the same "
                             "kappa, each a row at N=1: " + ", ".join(o for o in OBJECTIVES if o != "rcgm")
                             + " (default: the size's, rcgm for most)")
    parser.add_argument("--orders", default=None, help="comma-separated RCGM orders N (default: the size's)")
    parser.add_argument("--kappas", default=None, help="comma-separated kappas in [0, 1] (default: the size's)")
    parser.add_argument("--seeds", default=None, help="a count (3 = seeds 0,1,2) or a list with a comma (0,5) (default: the size's)")
    add_sweep_arguments(parser, experiment="kappa_by_order")
    # Trial flags default to None so the chosen size fills in whatever the user did not set.
    add_trial_arguments(parser, skip=GRID_FIELDS, unset=True)
    return parser.parse_args(argv)


def default_size(task: str | None) -> str:
    """The size a bare `--task` gets: image tasks need the small-DiT settings, not 34 trials of 10k steps."""
    return "mnist" if task in IMAGE_TASKS else "default"


def parse_seeds(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """--seeds: a count (3 = seeds 0, 1, 2) or a list with a comma (0,5); the size's seeds when unset."""
    if text is None:
        return default
    if "," in text:
        return parse_list(text, int, "seeds")
    count = parse_list(text, int, "seeds")
    if len(count) != 1 or count[0] < 1:
        raise ConfigError("seeds", text, "a count >= 1 (3 = seeds 0,1,2) or a comma-separated list (0,5)", flag="--seeds")
    return tuple(range(count[0]))


def parse_objectives(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """--objectives: known names, each once, in the order given; the size's when unset."""
    if text is None:
        return default
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError("objectives", text, "a comma-separated list of distinct names from " + ", ".join(OBJECTIVES),
                          flag="--objectives")
    return names


def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    """Merge the named size with the flags into a plan (validated by the launcher before Ray starts)."""
    size_name = "smoke" if args.smoke else (args.size or default_size(args.task))
    size = GRIDS[size_name]
    # Two 1-CPU trials plus their tiny Tune drivers must fit on two cores.
    values = {"cpus_per_worker": 0.99, **size.trial, **trial_values_from_args(args, skip=GRID_FIELDS)}
    objectives = parse_objectives(args.objectives, size.objectives)
    if args.orders is not None and "rcgm" not in objectives:
        raise ConfigError("orders", args.orders, "unset when --objectives has no rcgm (the peers are first order)",
                          flag="--orders")
    # `is not None`: an explicit empty list (--kappas "") is refused below, not replaced by the size's.
    orders = parse_list(args.orders, int, "orders") if args.orders is not None else size.orders
    kappas = parse_list(args.kappas, float, "kappas") if args.kappas is not None else size.kappas
    seeds = parse_seeds(args.seeds, size.seeds)
    for flag, given in (("orders", orders), ("kappas", kappas), ("seeds", seeds)):
        if not given:
            raise ConfigError(flag, getattr(args, flag), "at least one value", flag="--" + flag)
    plan = SweepPlan(
        name="", experiment=args.experiment, tracking_uri=args.tracking_uri or default_tracking_uri(),
        storage_path=args.storage_path or default_storage_path(), values=values, search="grid",
        cells=grid_cells(orders, kappas, seeds, objectives), max_concurrent=args.max_concurrent, address=args.address,
        report=not args.no_report, runner=args.trial_runner, verbose=args.verbose,
    )
    base = plan.base
    default_name = size_name if size_name == base.task else f"{base.task_label}-{size_name}"
    if objectives != size.objectives:
        default_name += "-" + "+".join(objectives)  # not the size's sweep: a name of its own
    plan.name = args.name or default_name
    # Recorded only when not RCGM alone, so sweeps from before the peers resume with the same settings.
    extra = {} if objectives == ("rcgm",) else {"objectives": ",".join(objectives)}
    plan.settings = {
        **extra, "orders": ",".join(map(str, orders)), "kappas": ",".join(f"{k:g}" for k in kappas),
        "seeds": ",".join(map(str, seeds)), **{k: v for k, v in base.tracking_params().items() if k not in GRID_FIELDS},
    }
    return plan


def main(argv=None) -> int:
    """Plan, validate (before Ray starts) and run the sweep."""
    args = parse_args(argv)
    try:
        plan = plan_from_args(args)
        if args.dry_run:
            validate(plan)
            print(json.dumps({"name": plan.name, "trials": len(plan.cells), "cells": plan.cells, "base": plan.base.to_dict(),
                              "tracking_uri": plan.tracking_uri, "storage_path": plan.storage_path}, indent=2))
            return 0
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_sweep(plan)


if __name__ == "__main__":
    sys.exit(main())
