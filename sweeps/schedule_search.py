"""Optuna search over time-sampling schedules (and lr / guidance) for a fixed order and kappa, or over both.

  python sweeps/schedule_search.py --space beta_schedule --order 2 --kappa 0.999 --samples 16
  python sweeps/schedule_search.py --space image_guidance --samples 8
  python sweeps/schedule_search.py --space order_kappa --samples 24

TPE (seeded) proposes the settings, ASHA stops collapsing trials early; the study lives in
runs/optuna.db so `optuna-dashboard sqlite:///runs/optuna.db` can open it. Rerunning the
same command resumes the search.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # see kappa_by_order.py

from sweeps.args import add_sweep_arguments  # noqa: E402
from sweeps.launcher import EXIT_BAD_INPUT, SweepPlan, run_sweep, validate  # noqa: E402
from sweeps.spaces import SEARCHES  # noqa: E402
from trainables.cli import add_trial_arguments, trial_values_from_args  # noqa: E402
from trainables.data.catalog import task_kind  # noqa: E402
from trainables.locations import default_optuna_storage, default_storage_path, default_tracking_uri, runs_dir  # noqa: E402
from trainables.preflight import BAD_INPUT  # noqa: E402
from trainables.rcgm.errors import ConfigError  # noqa: E402
from trainables.tune_trial import setting_of  # noqa: E402

# order and kappa of the spaces that do not search them (--order / --kappa change them).
FIXED_METHOD = {"order": 2, "kappa": 0.999}


def parse_args(argv=None) -> argparse.Namespace:
    """The search's command line."""
    parser = argparse.ArgumentParser(prog="sweeps/schedule_search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SEARCHES), default="beta_schedule", help="; ".join(f"{k}: {v.about}" for k, v in SEARCHES.items()))
    parser.add_argument("--samples", type=int, default=12, help="number of trials (default %(default)s)")
    parser.add_argument("--optuna-storage", default=None, help="Optuna study storage (default sqlite under runs/optuna.db)")
    add_sweep_arguments(parser, experiment="schedule_search")
    add_trial_arguments(parser, unset=True)
    return parser.parse_args(argv)


def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    """The named space with the flags on top (validated by the launcher before Ray starts)."""
    space = SEARCHES[args.space]
    if args.samples < 1:
        raise ConfigError("samples", args.samples, "an integer >= 1", flag="--samples")
    searched = {setting_of(name) for name in space.params}
    fixed = {k: v for k, v in FIXED_METHOD.items() if k not in searched}
    # A flag for a searched setting (--order with order_kappa) stays in values: the launcher refuses it.
    trial = dict(space.trial)
    if args.task is not None and task_kind(args.task) != "points" and "task" not in trial:
        # A toy space's evaluation size (1000 Moons points) is more than an image task holds out:
        # the task's own default (auto) applies unless --eval-samples says otherwise.
        trial.pop("eval_samples", None)
    values = {"cpus_per_worker": 0.99, **fixed, **trial, **trial_values_from_args(args)}
    # Every report must carry the metric ASHA and TPE compare on: checkpoints only with evaluations (0 = auto).
    values["checkpoint_every"] = 0
    plan = SweepPlan(
        name="", experiment=args.experiment, tracking_uri=args.tracking_uri or default_tracking_uri(),
        storage_path=args.storage_path or default_storage_path(), values=values, search="optuna",
        space=dict(space.params), num_samples=args.samples, max_concurrent=args.max_concurrent,
        address=args.address, report=not args.no_report, runner=args.trial_runner, verbose=args.verbose,
        optuna_storage=args.optuna_storage or default_optuna_storage(),
    )
    base = plan.base
    # The name says the order and kappa where the space fixes them: moons-beta_schedule-N2-k0.999, moons-order_kappa.
    fixed_parts = {"order": f"-N{base.order}", "kappa": f"-k{base.kappa:g}"}
    plan.name = args.name or base.task_label + "-" + args.space + "".join(
        part for k, part in fixed_parts.items() if k not in searched)
    # What every trial shares; the searched settings vary per trial (a resume compares these keys only).
    shared = {k: v for k, v in base.tracking_params().items() if k not in searched}
    plan.settings = {"space": args.space, "samples": args.samples, **shared}
    return plan


def main(argv=None) -> int:
    """Plan and run the search."""
    args = parse_args(argv)
    try:
        plan = plan_from_args(args)
        if args.dry_run:
            validate(plan)
            print(plan)
            return 0
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    runs_dir().mkdir(parents=True, exist_ok=True)  # Optuna's SQLite file needs its folder
    return run_sweep(plan)


if __name__ == "__main__":
    sys.exit(main())
