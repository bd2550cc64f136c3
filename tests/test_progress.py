"""The sweep's progress view: what it prints when not a terminal, how it redraws on one, and its ETA."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pytest

from sweeps.progress import SweepProgress, format_duration
from sweeps.summary import grid_table, outcome_line


@dataclass
class Trial:
    """The part of a Tune Trial the view reads: its name, status, last result and error file."""

    name: str
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)
    error_file: str | None = None

    def __str__(self) -> str:
        return self.name


@pytest.fixture
def clock(monkeypatch):
    """A controllable time.time for the view."""
    now = [1000.0]
    monkeypatch.setattr("sweeps.progress.time.time", lambda: now[0])
    return now


def _view(monkeypatch, tty: bool) -> SweepProgress:
    view = SweepProgress(total_trials=4, steps_per_trial=1000, metrics=["mmd2_1nfe", "mmd2_2nfe"], interval=30)
    monkeypatch.setattr(SweepProgress, "_tty", staticmethod(lambda: tty))
    return view


def test_log_view_prints_ends_and_a_summary_every_interval(monkeypatch, clock, capsys):
    view = _view(monkeypatch, tty=False)
    a, b = Trial("N1-k0.9-s0"), Trial("N2-k0.9-s0")
    view.on_trial_start(0, [a, b], a)
    view.on_trial_start(0, [a, b], b)
    clock[0] += 10
    view.on_trial_result(1, [a, b], a, {"step": 500, "status": "running", "mmd2_1nfe": 0.0123456, "mmd2_2nfe": 0.02})
    view.on_trial_result(1, [a, b], b, {"step": 250, "status": "running", "mmd2_1nfe": 0.5})
    view.on_step_end(1, [a, b])  # the first summary at once
    clock[0] += 5
    view.on_step_end(2, [a, b])  # within the interval: nothing
    clock[0] += 40
    view.on_trial_result(3, [a, b], a, {"step": 1000, "status": "finished", "mmd2_1nfe": 0.01, "mmd2_2nfe": 0.011})
    view.on_trial_complete(3, [a, b], a)
    view.on_step_end(3, [a, b])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("[0:10] 0/4 trials done, 2 running") and "N1-k0.9-s0 500/1000 mmd2_1nfe=0.01235" in lines[0]
    assert lines[1] == "  N1-k0.9-s0       finished in 0:55: step 1000/1000 mmd2_1nfe=0.01 mmd2_2nfe=0.011"
    assert lines[2].startswith("[0:55] 1/4 trials done, 1 running, ETA ")
    assert "\x1b[" not in "".join(lines)  # no terminal codes in a log


def test_eta_comes_from_this_drivers_rate(monkeypatch, clock):
    view = _view(monkeypatch, tty=False)
    a = Trial("a")
    view.on_step_end(0, [a])  # nothing started yet: nothing printed
    assert view.eta() != view.eta()  # NaN before any progress
    view.on_trial_start(0, [a], a)
    view.on_trial_result(1, [a], a, {"step": 100, "status": "running"})
    clock[0] += 20
    view.on_trial_result(2, [a], a, {"step": 500, "status": "running"})
    # 500 of 4000 steps in 20 s: 3500 left at 25 steps/s.
    assert view.eta() == pytest.approx(140.0)


def test_a_resumed_sweep_counts_restored_trials_as_done(monkeypatch, clock, capsys):
    view = pickle.loads(pickle.dumps(_view(monkeypatch, tty=False)))  # as Tune restores it
    done = Trial("N1-k0.9-s0", status="TERMINATED", last_result={"step": 1000, "status": "collapsed"})
    view.on_step_end(0, [done, Trial("N2-k0.9-s0", status="PENDING")])
    assert capsys.readouterr().out.startswith("[0:00] 1/4 trials done, 0 running")
    assert view.lines["N1-k0.9-s0"].status == "collapsed"


def test_errors_and_retries_get_a_line_each(monkeypatch, clock, capsys):
    view = _view(monkeypatch, tty=False)
    a = Trial("N3-k0.99-s1", error_file="/runs/x/error.txt")
    view.on_trial_start(0, [a], a)
    view.on_trial_recover(1, [a], a)
    view.on_trial_error(2, [a], a)
    out = capsys.readouterr().out
    assert "N3-k0.99-s1      error, retry 1 from its last checkpoint" in out
    assert "failed after 1 retries" in out and "(error: /runs/x/error.txt)" in out


def test_terminal_view_redraws_in_place(monkeypatch, clock, capsys):
    view = _view(monkeypatch, tty=True)
    a = Trial("N1-k0.9-s0")
    view.on_trial_start(0, [a], a)
    view.on_trial_result(1, [a], a, {"step": 10, "status": "running"})
    view.on_step_end(1, [a])
    first = capsys.readouterr().out
    assert first.count("\n") == 2 and "N1-k0.9-s0" in first and "\x1b[" not in first
    clock[0] += 2
    view.on_step_end(2, [a])
    again = capsys.readouterr().out
    assert again.startswith("\x1b[2F\x1b[J")  # up over the two lines drawn, erase, draw anew


def test_durations_and_closing_lines():
    assert (format_duration(12.3), format_duration(4000), format_duration(float("nan"))) == ("0:12", "1:06:40", "?")
    lines = grid_table("mmd2_1nfe", [(("rcgm", 1), 0.9, 0.02, "finished"), (("rcgm", 1), 0.9, 0.04, "finished"),
                                     (("rcgm", 2), 0.9, 0.5, "collapsed")])
    assert lines[2].split() == ["N=1", "0.0300"] and lines[3].split() == ["N=2", "-*"]
    assert outcome_line(["finished"] * 33 + ["collapsed"], 1) == (
        "34 trials: 33 finished, 1 collapsed; 1 of them resumed from a checkpoint (after an error or a restart)")
