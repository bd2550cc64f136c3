"""The sweep's console while Tune runs: one compact progress view instead of Tune's tables and boxes.

On a terminal the view (one line per running trial and a summary line) is redrawn in place;
elsewhere (a log file, `ray job logs`, CI) a summary line is printed every `interval` seconds.
Either way each trial's end is one permanent line. Tune keeps this callback in its experiment
state, so it holds only settings when pickled and rebuilds the rest when a resumed sweep starts.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from ray.tune import Callback

from trainables.status import Status

TTY_REFRESH_S = 1.0
PENDING = "pending"  # not started yet: a view state, not a trial status
LIVE = (str(Status.RUNNING), PENDING)


@dataclass
class TrialLine:
    """What the view knows of one trial."""

    name: str
    status: str = PENDING
    step: int = 0
    metrics: dict = field(default_factory=dict)
    started: float | None = None
    retries: int = 0


def format_duration(seconds: float) -> str:
    """12.3 -> '0:12', 4000 -> '1:06:40'."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SweepProgress(Callback):
    """Tune callback drawing the sweep's progress: cell, step / steps, latest metric per NFE, status, ETA."""

    def __init__(self, total_trials: int, steps_per_trial: int, metrics: list[str], interval: float = 30.0):
        self.total_trials, self.steps_per_trial = total_trials, steps_per_trial
        self.metrics, self.interval = list(metrics), interval
        self._reset()

    def __getstate__(self) -> dict:
        """Only the settings: the stream and clocks belong to the process that draws."""
        return {"total_trials": self.total_trials, "steps_per_trial": self.steps_per_trial,
                "metrics": self.metrics, "interval": self.interval}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _reset(self) -> None:
        """Fresh drawing state (a new sweep, or a resumed one in a new driver)."""
        self.lines: dict[str, TrialLine] = {}
        self.started = time.time()
        self.first_step_at: float | None = None
        self.steps_at_start: int | None = None  # steps already done when this driver started (a resume)
        self.last_draw = 0.0
        self.drawn_rows = 0
        self.ended: list[str] = []  # names of trials this driver saw end, in order

    # ---- Tune's hooks ------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        line = self._line(trial)
        line.status, line.started = str(Status.RUNNING), line.started or time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        line = self._line(trial)
        line.step = int(result.get("step", line.step))
        line.status = result.get("status", line.status)
        line.metrics = {m: result[m] for m in self.metrics if m in result}
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        line = self._line(trial)
        if line.status == str(Status.RUNNING):
            line.status = str(Status.STOPPED)  # ended by the scheduler before its last step
        self._event(line, line.status)

    def on_trial_error(self, iteration, trials, trial, **info):
        line = self._line(trial)
        line.status = str(Status.FAILED)
        what = f"{Status.FAILED} after {line.retries} retries" if line.retries else str(Status.FAILED)
        self._event(line, what, error=trial.error_file)

    def on_trial_recover(self, iteration, trials, trial, **info):
        line = self._line(trial)
        line.retries += 1
        self._event(line, f"error, retry {line.retries} from its last checkpoint", final=False)

    def on_step_end(self, iteration, trials, **info):
        self._seed(trials)
        if not self.lines:
            return  # nothing started yet: a "0 running" line says nothing
        now = time.time()
        if self._tty():
            if now - self.last_draw >= TTY_REFRESH_S:
                self._redraw()
        elif now - self.last_draw >= self.interval:
            self._write(self.summary())
        else:
            return
        self.last_draw = now

    def on_experiment_end(self, trials, **info):
        self._seed(trials)
        self._clear()
        self._write(self.summary())

    # ---- what is drawn -----------------------------------------------------------------------

    def _line(self, trial) -> TrialLine:
        name = str(trial)  # Tune's trial name: the cell key (trainables.tune_trial.trial_name)
        return self.lines.setdefault(name, TrialLine(name))

    def _seed(self, trials) -> None:
        """Trials Tune restored as finished (a resumed sweep) count as done from the start."""
        for trial in trials:
            if str(trial) not in self.lines and trial.status == "TERMINATED":
                result = trial.last_result or {}
                self.lines[str(trial)] = TrialLine(str(trial), result.get("status", str(Status.FINISHED)),
                                                   int(result.get("step", self.steps_per_trial)))
        if self.steps_at_start is None:
            self.steps_at_start = self._steps_done()

    def _steps_done(self) -> int:
        """Steps done over the sweep; a trial that ended counts as all its steps (nothing is left of it)."""
        return sum(line.step if line.status in LIVE else self.steps_per_trial for line in self.lines.values())

    def eta(self) -> float:
        """Seconds left at the rate this driver has trained so far (NaN before any progress)."""
        done, total = self._steps_done(), self.total_trials * self.steps_per_trial
        fresh = done - (self.steps_at_start or 0)
        if not self.first_step_at or fresh <= 0:
            return math.nan
        return max(0.0, total - done) * (time.time() - self.first_step_at) / fresh

    def _metric_text(self, line: TrialLine) -> str:
        return " ".join(f"{m}={v:.4g}" for m, v in line.metrics.items() if isinstance(v, (int, float)))

    def describe(self, line: TrialLine) -> str:
        """One trial as text: cell, step / steps, latest metrics, status."""
        return f"{line.name:<16} {line.step:>7}/{self.steps_per_trial:<7} {self._metric_text(line):<40} {line.status}".rstrip()

    def summary(self) -> str:
        """The sweep as one line: trials done and running, elapsed, ETA, and the running trials."""
        ended = [line for line in self.lines.values() if line.status not in LIVE]
        running = [line for line in self.lines.values() if line.status == Status.RUNNING]
        elapsed = time.time() - self.started
        text = (f"[{format_duration(elapsed)}] {len(ended)}/{self.total_trials} trials done, {len(running)} running, "
                f"ETA {format_duration(self.eta()) if len(ended) < self.total_trials else '0:00'}")
        if running and not self._tty():
            text += ": " + "; ".join(f"{line.name} {line.step}/{self.steps_per_trial} {self._metric_text(line)}".rstrip()
                                     for line in running)
        return text

    def _event(self, line: TrialLine, what: str, error: str | None = None, final: bool = True) -> None:
        """A permanent line for a trial's end (or retry), written above the live view."""
        took = f" in {format_duration(time.time() - line.started)}" if line.started else ""
        text = f"  {line.name:<16} {what}{took}: step {line.step}/{self.steps_per_trial} {self._metric_text(line)}".rstrip()
        if error:
            text += f" (error: {error})"
        if final:
            self.ended.append(line.name)
        self._clear()
        self._write(text)
        if self._tty():
            self._redraw()

    # ---- the terminal ------------------------------------------------------------------------

    @staticmethod
    def _tty() -> bool:
        return sys.stdout.isatty()

    def _write(self, text: str) -> None:
        print(text, flush=True)

    def _clear(self) -> None:
        """Erase the live view drawn last (terminal only)."""
        if self.drawn_rows:
            sys.stdout.write(f"\x1b[{self.drawn_rows}F\x1b[J")
            self.drawn_rows = 0

    def _redraw(self) -> None:
        """Draw the live view: the running trials, then the summary."""
        self._clear()
        rows = [self.describe(line) for line in self.lines.values() if line.status == Status.RUNNING] + [self.summary()]
        sys.stdout.write("".join(f"  {row}\n" for row in rows))
        sys.stdout.flush()
        self.drawn_rows = len(rows)
