"""One trial in a fresh process with the step timer installed: `python -m bench.child plain|ray ARGS`.

ARGS are trainables.run's flags. `plain` runs run_local in this process; `ray` runs the same
CLI on Ray Train with the worker function wrapped so each worker process times its steps.
"""

from __future__ import annotations

import sys

from bench import steptimer


def _recorded(module, name: str, event: str):
    """Replace module.name by a wrapper recording event_start / event_end around it."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        steptimer.record(event + "_start")
        try:
            return original(*args, **kwargs)
        finally:
            steptimer.record(event + "_end")
            steptimer.flush()

    setattr(module, name, wrapped)


def main(argv=None) -> int:
    """Install the timer, wrap the Ray entry points when asked, run trainables.run.main."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, args = argv[0], argv[1:]
    steptimer.record("child_main")
    import trainables.run
    import trainables.ray_setup
    import trainables.trial
    import trainables.worker

    steptimer.install()
    steptimer.record("imports_done")
    if mode == "ray":
        # run_on_ray imports these at call time, so module attributes are what it will use.
        _recorded(trainables.ray_setup, "init_ray", "ray_init")
        _recorded(trainables.trial, "build_torch_trainer", "build_trainer")
        # build_torch_trainer imports train_fn_per_worker when called: the workers get the timed one.
        trainables.worker.train_fn_per_worker = steptimer.timed_train_fn
    elif mode != "plain":
        raise SystemExit(f"mode must be plain or ray, not {mode!r}")
    code = trainables.run.main(args)
    steptimer.record("run_main_end")
    steptimer.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
