"""Run one trial by hand: `python -m trainables.run --task moons --order 2 --kappa 0.999`.

On Ray Train (a local Ray, or RAY_ADDRESS) and tracked in MLflow by default; `--local` runs
the same loop in plain PyTorch in this process (no Ray), still tracked unless `--no-track`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from trainables.cli import add_trial_arguments, trial_values_from_args
from trainables.config import TrialConfig
from trainables.locations import check_not_temporary, check_storage_path, default_storage_path, default_tracking_uri, mlflow_ui_command
from trainables.preflight import BAD_INPUT, check_trial_inputs
from trainables.ray_setup import resolve_ray_address
from trainables.status import Status
from trainables.tracking import TrialTracking, check_tracking_uri, ensure_experiment, git_info, trial_run_id

EXIT_BAD_INPUT, EXIT_UNHEALTHY = 2, 3
# The one-trial command's own defaults: a shorter trial than a sweep cell.
RUN_DEFAULTS = {"steps": 5000, "eval_every": 1000}


def parse_args(argv=None) -> argparse.Namespace:
    """The one-trial command line."""
    parser = argparse.ArgumentParser(prog="python -m trainables.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local", action="store_true", help="plain PyTorch in this process, no Ray")
    parser.add_argument("--no-track", action="store_true", help="with --local: no MLflow run")
    parser.add_argument("--dry-run", action="store_true", help="print the validated config and exit")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite under runs/)")
    parser.add_argument("--experiment", default="trials", help="MLflow experiment (default %(default)s)")
    parser.add_argument("--name", default=None, help="run name; also the key that a rerun resumes (default: a fresh one)")
    parser.add_argument("--storage-path", default=None, help="Ray storage for checkpoints (default $RCGM_STORAGE_PATH, else runs/ray-results)")
    parser.add_argument("--address", default=None, help="Ray address (default RAY_ADDRESS, else a local Ray)")
    add_trial_arguments(parser, defaults=RUN_DEFAULTS)
    return parser.parse_args(argv)


def print_progress(metrics: dict, state_dir=None) -> None:
    """One progress line per report."""
    shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}
    print("  " + "  ".join(f"{k}={v}" for k, v in shown.items()), flush=True)


def run_local(cfg: TrialConfig, tracking: TrialTracking | None, name: str | None = None) -> Status:
    """The same trial runner as the Ray paths, in this process (name: for RCGM_INJECT_FAULTS); returns the trial's status."""
    from trainables.runner import Placement, run_trial, trial_device

    outcome = run_trial(cfg, Placement(trial_device(cfg)), print_progress, tracking=tracking, name=name)
    print(f"status: {outcome.status} {outcome.reason}".rstrip())
    print(f"samples picture: {outcome.picture}")
    return outcome.status


def run_on_ray(cfg: TrialConfig, tracking: TrialTracking | None, name: str, storage_path: str | None,
               address: str | None) -> Status:
    """One TorchTrainer run; returns the status the workers reported last."""
    from trainables.ray_setup import init_ray
    from trainables.trial import build_torch_trainer

    init_ray(address)
    trainer = build_torch_trainer(cfg, tracking, name=f"train-{name}", storage_path=storage_path)
    result = trainer.fit()
    metrics = result.metrics or {}
    print_progress({k: v for k, v in metrics.items() if k != "checkpoint_dir_name"})
    return Status(metrics.get("status", Status.FAILED))


def main(argv=None) -> int:
    """Validate everything, run the trial, print where it is in MLflow."""
    args = parse_args(argv)
    try:
        cfg = TrialConfig.from_dict(trial_values_from_args(args))
        uri = None if args.no_track else args.tracking_uri or default_tracking_uri()
        if not args.local:
            # Under `ray job submit`: nothing may default into Ray's temporary copy of the code.
            check_not_temporary(uri or "", args.storage_path or default_storage_path())
            check_storage_path(args.storage_path or default_storage_path())
        uri = uri and check_tracking_uri(uri)
        check_trial_inputs(cfg)  # a missing dataset or FID weights are refused before compute
        if not args.local and not args.dry_run:
            args.address = resolve_ray_address(args.address) or "local"  # a dead cluster: refused in seconds
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    name = args.name or f"{cfg.task_label}-N{cfg.order}-k{cfg.kappa}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    tracking = None
    if uri is not None:
        tracking = TrialTracking(uri, args.experiment, trial_key=name, run_name=name, tags=git_info())
    print(f"trial {name}: {cfg.task} order={cfg.order} kappa={cfg.kappa} steps={cfg.steps} ({'plain PyTorch' if args.local else 'Ray Train'})", flush=True)
    if args.local:
        status = run_local(cfg, tracking, name)
    else:
        status = run_on_ray(cfg, tracking, name, args.storage_path, args.address)
    if uri is not None:
        run_id = trial_run_id(uri, args.experiment, name)
        print(f"MLflow: experiment {args.experiment!r}, run {run_id} (status {status})")
        print(f"open the UI: {mlflow_ui_command(uri, ensure_experiment(uri, args.experiment))}")
    return 0 if status == Status.FINISHED else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
