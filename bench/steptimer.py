"""Timestamps of a trial's phases and steps, taken the same way in plain PyTorch and in Ray workers.

install() patches Trainer and Rank0 in the current process when RCGM_BENCH_EVENTS names a
folder; each process appends JSON lines to its own file there. Ray Train workers are separate
processes, so the Ray path installs it again inside the worker (timed_train_fn).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import time
from pathlib import Path

ENV = "RCGM_BENCH_EVENTS"
FLUSH_EVERY = 250  # steps between writes: one small append per ~0.5 s of Moons steps

_events: list[dict] = []
_steps: list[tuple[int, float, float]] = []
_path: Path | None = None


def process_start_time() -> float:
    """When this process was created (wall clock), from /proc: imports and interpreter start count too."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    # Against /proc/uptime (10 ms resolution), not /proc/stat's btime (whole seconds).
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def record(name: str, **extra) -> None:
    """Note that `name` happened now (or at extra['t'])."""
    _events.append({"event": name, "t": time.time(), "pid": os.getpid(), **extra})


def flush() -> None:
    """Append what was recorded since the last flush to this process's file."""
    if _path is None or not (_events or _steps):
        return
    lines = [json.dumps(e) for e in _events]
    if _steps:
        lines.append(json.dumps({"event": "steps", "pid": os.getpid(), "rows": _steps}))
    with open(_path, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    _events.clear()
    _steps.clear()


def _wrap(cls, name: str, before: str | None = None, after: str | None = None, extra=lambda self: {}):
    """Record events around cls.name."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapped(self, *args, **kwargs):
        if before:
            record(before)
        out = original(self, *args, **kwargs)
        if after:
            record(after, **extra(self))
        flush()
        return out

    setattr(cls, name, wrapped)


def _timed_function(original, before: str, after: str):
    """A plain function recording events around each call."""

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        record(before)
        try:
            return original(*args, **kwargs)
        finally:
            record(after)

    return wrapped


def _timed_step(original):
    """train_step with its start and end times kept in memory (two clock reads per step)."""

    @functools.wraps(original)
    def train_step(self):
        started = time.time()
        loss = original(self)
        _steps.append((self.step, started, time.time()))
        if self.step % FLUSH_EVERY == 0 or self.step >= self.cfg.steps:
            flush()
        return loss

    return train_step


def install() -> bool:
    """Patch the trial classes of this process once; False when RCGM_BENCH_EVENTS is unset."""
    global _path
    folder = os.environ.get(ENV)
    if not folder or _path is not None:
        return _path is not None
    from trainables.loop import Trainer
    from trainables.rank0 import Rank0

    _path = Path(folder) / f"events-{os.getpid()}.jsonl"
    record("process_start", t=process_start_time())
    record("timer_installed")
    _wrap(Trainer, "__init__", "trainer_init_start", "trainer_init_end", lambda self: {"rank": self.rank, "world": self.world_size})
    Trainer.train_step = _timed_step(Trainer.train_step)
    _wrap(Rank0, "__init__", "rank0_init_start", "rank0_init_end")
    _wrap(Rank0, "finish", "rank0_finish_start", "rank0_finish_end")
    _wrap(Rank0, "evaluate", "eval_start", "eval_end")
    import trainables.checkpointing as checkpointing

    # run_loop calls checkpointing.save_state through the module, so patching the attribute is enough.
    checkpointing.save_state = _timed_function(checkpointing.save_state, "save_start", "save_end")
    atexit.register(flush)
    flush()
    return True


def timed_train_fn(loop_config: dict) -> None:
    """The project's Ray Train worker function, with the timer installed in the worker process."""
    install()
    record("train_fn_start")
    from trainables.worker import train_fn_per_worker

    try:
        train_fn_per_worker(loop_config)
    finally:
        record("train_fn_end")
        flush()


def load_events(folder) -> list[dict]:
    """Every event from every process's file in folder (step rows expanded to 'step' events)."""
    out = []
    for path in sorted(Path(folder).glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "steps":
                out += [{"event": "step", "pid": event["pid"], "step": s, "t0": t0, "t1": t1} for s, t0, t1 in event["rows"]]
            else:
                out.append(event)
    return out
