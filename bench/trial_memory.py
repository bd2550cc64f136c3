"""Where a trial process's memory goes, and whether it grows over the trials one reused process runs.

  python -m bench.trial_memory                 # 6 Moons trials of 2000 steps in this process
  python -m bench.trial_memory --trials 3 --steps 300 --json out.json

Like a reused Tune trial process: torch, Ray Tune and MLflow are imported first, then each trial
runs through `python -m trainables.run --local` in this same process, tracked to a SQLite store.
Resident memory (VmRSS) is read after each phase; the peak of each trial is VmHWM after the
kernel's peak counter was reset for it (Linux: /proc/self/clear_refs). Memory is measured here,
in a benchmark, never asserted in a test: these machines are shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe, machine_info, markdown_table
from trainables.process_memory import peak_resident_mb, reset_peak, resident_mb

def trial_args(steps: int, seed: int, uri: str) -> list[str]:
    """The command line of one Moons trial, as the default sweep's cells run it."""
    return ["--local", "--task", "moons", "--order", "2", "--kappa", "0.99", "--seed", str(seed), "--steps", str(steps),
            "--eval-every", str(max(1, steps // 4)), "--nfe", "1,2", "--cpus-per-worker", "1", "--tracking-uri", uri,
            "--name", f"memory-{seed}-{time.time_ns()}"]


def measure(trials: int, steps: int, out=print) -> list[dict]:
    """Rows of (phase, RSS MiB, peak MiB) for imports, data pools and each trial."""
    rows = []

    def row(phase: str, peak: float | None = None, **extra) -> None:
        rows.append({"phase": phase, "rss_mb": round(resident_mb(), 1),
                     "peak_mb": round(peak if peak is not None else peak_resident_mb(), 1), **extra})
        out(f"  {phase:<28} RSS {rows[-1]['rss_mb']:7.1f} MiB  peak {rows[-1]['peak_mb']:7.1f} MiB", flush=True)

    row("start")
    import torch  # noqa: F401  (what a trial process imports first)

    row("import torch")
    from ray import tune  # noqa: F401
    import mlflow  # noqa: F401

    row("import ray.tune, mlflow")
    from trainables.data import load_task
    import trainables.run as run

    load_task("moons", seed=0)
    row("data pools (moons)")
    with tempfile.TemporaryDirectory(prefix="rcgm-memory-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for i in range(trials):
            can_reset = reset_peak()
            started = time.time()
            code = run.main(trial_args(steps, i, uri))
            row(f"after trial {i + 1}", peak=peak_resident_mb() if can_reset else None,
                seconds=round(time.time() - started, 1), exit=code)
    return rows


def main(argv=None) -> int:
    """Measure, print a markdown table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.trial_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6, help="trials run one after the other in this process (default 6)")
    parser.add_argument("--steps", type=int, default=2000, help="steps per trial (default 2000; evaluations every steps/4)")
    parser.add_argument("--json", default=None, help="also write the rows and the machine to this file")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.steps < 4:
        print("error: --trials must be >= 1 and --steps >= 4", file=sys.stderr)
        return 2
    info = machine_info()
    import contextlib
    import io

    # The trials' own progress lines would drown the table: keep only ours.
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        rows = measure(args.trials, args.steps, out=lambda *a, **k: print(*a, file=sys.stderr, **k))
    if any(r.get("exit", 0) not in (0,) for r in rows):
        print(log.getvalue()[-2000:], file=sys.stderr)
    print(describe(info))
    print(markdown_table(["phase", "RSS MiB", "peak MiB", "trial s"],
                         [[r["phase"], f"{r['rss_mb']:.0f}", f"{r['peak_mb']:.0f}", r.get("seconds", "")] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0 if all(r.get("exit", 0) == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
