"""What Ray Train + MLflow cost over plain PyTorch for one Moons trial, and how sweeps pack.

  python -m bench.platform_cost                  # 3000-step trial x 5 paths x 2 repeats; grids of 2, 4, 8 trials
  python -m bench.platform_cost --quick          # 300-step trial, 1 repeat; grids of 2 and 4 trials of 300 steps
  python -m bench.platform_cost --out /tmp/platform.json

Every path runs the same trial (moons, N=2, kappa=0.999, seed 0) in a fresh process
(`python -m bench.child`), which times each Trainer.train_step and the start-up phases the same
way in plain PyTorch and inside the Ray Train worker. Sweeps run sweeps/kappa_by_order.py as a
user would; their trial times come from the MLflow child runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import REPO_ROOT, describe, machine_info, markdown_table
from bench.steptimer import ENV as EVENTS_ENV, load_events
from bench.sweep_timeline import read_sweep, sweep_timeline

# key -> (label, child mode, extra flags; {db} and {store} are filled per run)
PATHS = {
    "plain": ("plain PyTorch (run_local), no tracking", "plain", ["--local", "--no-track"]),
    "plain_mlflow": ("plain PyTorch + MLflow", "plain", ["--local", "--tracking-uri", "{db}"]),
    "ray": ("Ray Train, 1 worker, no MLflow", "ray", ["--no-track", "--storage-path", "{store}"]),
    "ray_mlflow": ("Ray Train + MLflow, 1 worker", "ray", ["--tracking-uri", "{db}", "--storage-path", "{store}"]),
    "ray_mlflow_2w": ("Ray Train + MLflow, 2 workers (DDP, gloo)", "ray", ["--tracking-uri", "{db}", "--storage-path", "{store}", "--workers", "2"]),
}
# Grid size -> (orders, kappas): N=0 is left out because the launcher runs it once per seed.
GRIDS = {2: ("1,2", "0.999"), 4: ("1,2", "0.99,0.999"), 8: ("1,2,3,4", "0.99,0.999"), 16: ("1,2,3,4", "0,0.9,0.99,0.999")}
TRIAL = ["--task", "moons", "--order", "2", "--kappa", "0.999", "--seed", "0", "--nfe", "1,2"]
# Start-up milestones in the order they happen: (event, whose) with whose = the driver or rank 0's process.
MILESTONES = [
    ("process_start", "driver"), ("imports_done", "driver"), ("ray_init_start", "driver"), ("ray_init_end", "driver"),
    ("build_trainer_end", "driver"), ("process_start", "lead"), ("train_fn_start", "lead"),
    ("trainer_init_start", "lead"), ("trainer_init_end", "lead"), ("rank0_init_end", "lead"),
]


def fresh_env(root: Path, events: Path | None = None) -> dict:
    """A child environment whose tools keep their state under root (Ray gets a short fresh temp dir)."""
    # Ray's unix socket paths must stay under 108 bytes, so its temp dir sits right under /tmp.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RCGM_RUNS_DIR": str(root / "runs"), "MPLCONFIGDIR": str(root / "mpl"),
           "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)  # always a local Ray and our own SQLite store: the numbers mean one thing
    if events is not None:
        env[EVENTS_ENV] = str(events)
    return env


def summarize_trial(events: list[dict], launch: float, exited: float) -> dict:
    """Start-up, throughput and phase times of one trial from its timer events."""
    driver = next(e["pid"] for e in events if e["event"] == "child_main")
    lead = next(e["pid"] for e in events if e["event"] == "trainer_init_end" and e.get("rank") == 0)
    steps = sorted((e for e in events if e["event"] == "step" and e["pid"] == lead), key=lambda e: e["step"])
    if len(steps) < 2:
        raise RuntimeError(f"only {len(steps)} timed steps on rank 0: the timer did not reach the training process")
    first, last = steps[0], steps[-1]
    when = {}
    for e in events:
        for whose, pid in (("driver", driver), ("lead", lead)):
            if e["event"] != "step" and e["pid"] == pid and (e["event"], whose) not in when:
                when[(e["event"], whose)] = e["t"]
    if lead == driver:
        when.pop(("process_start", "lead"), None)  # plain PyTorch: one process, counted once
    # Consecutive gaps between the milestones this path has: the start-up, phase by phase.
    marks = [("launch", launch)] + [(f"{n} ({w})", when[(n, w)]) for n, w in MILESTONES if (n, w) in when] + [("first step", first["t0"])]
    phases = {f"{a} -> {b}": round(tb - ta, 3) for (a, ta), (b, tb) in zip(marks, marks[1:])}
    durations = [e["t1"] - e["t0"] for e in steps]

    def spent(start: str, end: str) -> float:
        """Seconds rank 0 spent between start/end event pairs inside the steady window."""
        starts = sorted(e["t"] for e in events if e["pid"] == lead and e["event"] == start)
        ends = sorted(e["t"] for e in events if e["pid"] == lead and e["event"] == end)
        return sum(b - a for a, b in zip(starts, ends) if first["t1"] <= a and b <= last["t0"])
    return {
        "startup_s": first["t0"] - launch,
        "steps": len(steps),
        # While stepping: the compute itself, no evaluations or reports in between.
        "stepping_steps_per_s": 1.0 / statistics.median(durations),
        # After start-up: steps over the time from the first to the last step, evaluations, reports and checkpoints included.
        "steady_steps_per_s": (len(steps) - 1) / (last["t1"] - first["t1"]),
        # Time between steps after the first: evaluations, checkpoints and reports, the part Ray's report adds to.
        "between_steps_s": (last["t1"] - first["t1"]) - sum(durations[1:]),
        "eval_s": spent("eval_start", "eval_end"),
        "save_s": spent("save_start", "save_end"),
        "teardown_s": exited - last["t1"],
        "total_s": exited - launch,
        "phases": phases,
    }


def run_trial(key: str, root: Path, steps: int, eval_every: int, eval_samples: int, rep: int, timeout: float) -> dict:
    """One trial on one path in a fresh process; its summary."""
    label, mode, flags = PATHS[key]
    work = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
    events = work / "events"
    events.mkdir()
    fill = {"db": f"sqlite:///{work / 'mlflow.db'}", "store": str(work / "ray-results")}
    args = [a.format(**fill) for a in flags] + TRIAL + [
        "--steps", str(steps), "--eval-every", str(eval_every), "--eval-samples", str(eval_samples), "--name", f"bench-{key}-{rep}"]
    cmd = [sys.executable, "-m", "bench.child", mode, *args]
    launch = time.time()
    env = fresh_env(work, events)
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        exited = time.time()
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)  # session logs: tens of MB per Ray start
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"path": key, "label": label, "repeat": rep, **summarize_trial(load_events(events), launch, exited)}


def median_rows(runs: list[dict]) -> list[dict]:
    """Per path, the median of every number over repeats (phases too)."""
    out = []
    for key in PATHS:
        mine = [r for r in runs if r["path"] == key]
        if not mine:
            continue
        row = {"path": key, "label": mine[0]["label"], "repeats": len(mine)}
        for field in ("startup_s", "steps", "stepping_steps_per_s", "steady_steps_per_s", "between_steps_s", "eval_s", "save_s", "teardown_s", "total_s"):
            row[field] = statistics.median(r[field] for r in mine)
        row["phases"] = {p: statistics.median(r["phases"][p] for r in mine if p in r["phases"]) for p in mine[0]["phases"]}
        out.append(row)
    base = next((r for r in out if r["path"] == "plain"), None)
    for row in out:
        if base:
            row["steady_vs_plain"] = row["steady_steps_per_s"] / base["steady_steps_per_s"]
            row["stepping_vs_plain"] = row["stepping_steps_per_s"] / base["stepping_steps_per_s"]
    return out


def run_sweep(trials: int, root: Path, steps: int, eval_samples: int, timeout: float, runner: str = "auto") -> dict:
    """One kappa_by_order grid of `trials` trials; wall time against the ideal packing of its trials."""
    orders, kappas = GRIDS[trials]
    work = Path(tempfile.mkdtemp(prefix=f"sweep{trials}-", dir=root))
    uri, name = f"sqlite:///{work / 'mlflow.db'}", f"bench-grid-{trials}"
    cmd = [sys.executable, "sweeps/kappa_by_order.py", "--orders", orders, "--kappas", kappas, "--seeds", "1",
           "--steps", str(steps), "--eval-every", str(max(1, steps // 2)), "--eval-samples", str(eval_samples), "--nfe", "1,2",
           "--name", name, "--no-report", "--tracking-uri", uri, "--storage-path", str(work / "ray-results"),
           "--trial-runner", runner]
    launch = time.time()
    env = fresh_env(work)
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        wall = time.time() - launch
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep of {trials} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    found = re.search(r"(\d+) trials, (\d+) at a time", proc.stdout)
    slots = int(found.group(2)) if found else 1
    parent, children = read_sweep(uri, "kappa_by_order", name)
    return {"trials": trials, "runner": parent.data.params.get("trial_runner", runner), "slots": slots, "steps": steps,
            "launcher_wall_s": parent.data.metrics.get("sweep_wall_time_s", float("nan")),
            **sweep_timeline(launch, wall, slots, children)}


def with_retries(what: str, attempts: int, fn, *args):
    """fn(*args), tried again after a failure: another user's `ray stop --force` kills every local Ray."""
    failures = []
    for attempt in range(1, attempts + 1):
        try:
            result = fn(*args)
            result["attempts"], result["failures"] = attempt, failures
            return result
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            lines = str(err).strip().splitlines()
            # The last line naming an error says why (e.g. "ActorDiedError ... node has crashed").
            why = next((line for line in reversed(lines) if "Error" in line or "died" in line), lines[0])[:300]
            failures.append(why)
            print(f"  {what}: attempt {attempt}/{attempts} failed ({why}); "
                  f"{'retrying' if attempt < attempts else 'giving up'}", file=sys.stderr, flush=True)
            if attempt == attempts:
                raise


def tables(rows: list[dict], sweeps: list[dict]) -> str:
    """The Markdown tables: trial paths, start-up phases of plain vs Ray, sweeps."""
    out = []
    headers = ["path", "start-up s", "stepping steps/s", "x plain", "steady steps/s (after start-up)", "x plain",
               "between steps s (eval / save / rest)", "teardown s", "total s"]
    out.append(markdown_table(headers, [[
        r["label"], f"{r['startup_s']:.1f}", f"{r['stepping_steps_per_s']:.0f}", f"{r.get('stepping_vs_plain', float('nan')):.2f}",
        f"{r['steady_steps_per_s']:.0f}", f"{r.get('steady_vs_plain', float('nan')):.2f}", f"{r['between_steps_s']:.1f} ({r['eval_s']:.1f} / {r['save_s']:.2f} / {r['between_steps_s'] - r['eval_s'] - r['save_s']:.2f})",
        f"{r['teardown_s']:.1f}", f"{r['total_s']:.1f}",
    ] for r in rows]))
    for r in rows:
        if r["path"] in ("plain_mlflow", "ray_mlflow"):
            out.append(f"\nStart-up phases, {r['label']} (median seconds):\n")
            out.append(markdown_table(["phase", "s"], [[p, f"{s:.2f}"] for p, s in r["phases"].items()]))
    if sweeps:
        out.append("\nSweeps (sweeps/kappa_by_order.py, fresh local Ray each):\n")
        headers = ["trials", "runner", "slots", "steps", "trial processes", "sum of trial times s", "ideal s", "wall s", "wall / ideal",
                   "before first trial s", "trials span s", "span / ideal", "after last trial s"]
        out.append(markdown_table(headers, [[
            s["trials"], s["runner"], s["slots"], s["steps"], s["processes"] or "-", f"{s['sum_trial_work_s']:.1f}", f"{s['ideal_s']:.1f}",
            f"{s['wall_s']:.1f}", f"{s['wall_vs_ideal']:.2f}", f"{s['before_first_trial_s']:.1f}", f"{s['trials_span_s']:.1f}",
            f"{s['span_vs_ideal']:.2f}", f"{s['after_last_trial_s']:.1f}",
        ] for s in sweeps]))
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.platform_cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300-step trial, 1 repeat, grids of 2 and 4 trials of 300 steps")
    parser.add_argument("--steps", type=int, default=None, help="trial steps (default 3000; 300 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per path, interleaved (default 2; 1 with --quick)")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS))
    parser.add_argument("--grids", default=None, help="sweep sizes, comma-separated from 2,4,8,16; '' for none (default 2,4,8; 2,4 with --quick)")
    parser.add_argument("--runners", default="auto", help="sweep trial runners to compare, comma-separated from auto,train (default auto)")
    parser.add_argument("--sweep-steps", type=int, default=None, help="steps per sweep trial (default 2000; 300 with --quick)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per child process (default %(default)s)")
    parser.add_argument("--attempts", type=int, default=3, help="tries per run: a failed run (e.g. a Ray killed from outside) is rerun (default %(default)s)")
    parser.add_argument("--out", default=None, help="also write everything as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the trial paths (interleaved repeats) and the sweeps; print tables; optionally write JSON."""
    args = parse_args(argv)
    steps = args.steps or (300 if args.quick else 3000)
    repeats = args.repeats or (1 if args.quick else 2)
    eval_every, eval_samples = max(1, steps // 3), (300 if args.quick else 2000)
    paths = [p for p in args.paths.split(",") if p]
    grids_text = args.grids if args.grids is not None else ("2,4" if args.quick else "2,4,8")
    grids = [int(g) for g in grids_text.split(",") if g.strip()]
    runners = [r for r in args.runners.split(",") if r]
    bad = [p for p in paths if p not in PATHS] + [str(g) for g in grids if g not in GRIDS] + [r for r in runners if r not in ("auto", "train")]
    if bad:
        print(f"error: unknown path, grid or runner {bad[0]!r}; paths: {', '.join(PATHS)}; grids: {', '.join(map(str, GRIDS))}; "
              "runners: auto, train", file=sys.stderr)
        return 2
    sweep_steps = args.sweep_steps or (300 if args.quick else 2000)
    info = machine_info("cpu")
    root = Path(tempfile.mkdtemp(prefix="rcgm-bench-", dir="/tmp"))
    runs = []
    for rep in range(repeats):
        for key in paths:
            print(f"trial: {PATHS[key][0]}, repeat {rep + 1}/{repeats} ...", file=sys.stderr, flush=True)
            runs.append(with_retries(key, args.attempts, run_trial, key, root, steps, eval_every, eval_samples, rep, args.timeout))
    sweeps = []
    for trials in grids:
        for runner in runners:  # side by side, so both runners see the same load
            print(f"sweep: {trials} trials x {sweep_steps} steps, runner {runner} ...", file=sys.stderr, flush=True)
            sweeps.append(with_retries(f"sweep {trials}", args.attempts, run_sweep, trials, root, sweep_steps,
                                       300 if args.quick else 1000, args.timeout, runner))
    info["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    rows = median_rows(runs)
    print(f"\nPlatform cost ({describe(info)}; load after {info['load_avg_after']})")
    print(f"Trial: moons, N=2, kappa=0.999, seed 0, batch 256, {steps} steps, eval every {eval_every} "
          f"({eval_samples} samples, 1 and 2 NFE); median of {repeats} interleaved repeat(s)\n")
    print(tables(rows, sweeps))
    print("\nstart-up: process launch to the first step's start. stepping: 1 / median step time (compute only). "
          "steady: steps / time from the first to the last step (evaluations, reports, checkpoints included). "
          "ideal: sum of trial times (MLflow run start to end) / concurrent slots; before first trial: launch to the first MLflow "
          "child run (interpreter, imports, validation, ray.init, the first trial process); trials span: first child start to "
          "last child end; after last trial: the rest (table, shutdown). trial processes: distinct rcgm.process tags.")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"benchmark": "platform_cost", "machine": info, "trial_steps": steps, "eval_every": eval_every,
                       "eval_samples": eval_samples, "runs": runs, "paths": rows, "sweeps": sweeps}, fh, indent=2)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
