"""The sampler grid's console while Tune runs: a line per point (small grids) or a summary every interval, and every failure."""

from __future__ import annotations

import math
import time

from ray.tune import Callback

from sweeps.progress import format_duration

LINE_PER_POINT_UP_TO = 100  # above this many points a line each would bury the failures


class PointProgress(Callback):
    """Tune callback: points done / total, elapsed and ETA, each point's value when the grid is small."""

    def __init__(self, total: int, interval: float = 20.0):
        self.total, self.interval = total, interval
        self.done = self.failed = 0
        self.started = self.last_line = time.time()

    def __getstate__(self) -> dict:
        """Only the settings: the clocks belong to the driver that prints."""
        return {"total": self.total, "interval": self.interval}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["total"], state["interval"])

    def summary(self) -> str:
        """'[0:42] 30/84 points done, 1 failed, ETA 1:15'."""
        elapsed = time.time() - self.started
        ended = self.done + self.failed
        eta = elapsed * (self.total - ended) / ended if ended else math.nan
        failed = f", {self.failed} failed" if self.failed else ""
        return f"[{format_duration(elapsed)}] {ended}/{self.total} points done{failed}, ETA {format_duration(eta)}"

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        result = trial.last_result or {}
        value = result.get("value")
        if self.total <= LINE_PER_POINT_UP_TO:
            shown = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else "no value"
            print(f"  {trial}: {shown} ({result.get('status', 'finished')})  {self.summary()}", flush=True)
        elif time.time() - self.last_line >= self.interval:
            print(self.summary(), flush=True)
            self.last_line = time.time()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        print(f"  {trial}: failed (error: {trial.error_file})  {self.summary()}", flush=True)

    def on_experiment_end(self, trials, **info):
        print(self.summary(), flush=True)
