"""Injected faults go through the real paths: NaN weights end a trial `diverged`, an impossible allocation `oom`.

In one process, no Ray: the sweep-level test (tests/test_sweeps.py) runs the same faults on Tune.
"""

from __future__ import annotations

import pytest

from trainables.config import TrialConfig
from trainables.faults import FAULTS_ENV, planned_faults
from trainables.preflight import check_environment
from trainables.rcgm.errors import ConfigError
from trainables.runner import Placement, is_out_of_memory, run_trial
from trainables.status import Status


def _run(monkeypatch, faults: str, name="N2-k0.9-s0"):
    monkeypatch.setenv(FAULTS_ENV, faults)
    reports = []
    cfg = TrialConfig(task="moons", order=2, kappa=0.9, batch_size=32, steps=40, eval_every=20, eval_samples=64)
    outcome = run_trial(cfg, Placement(), lambda metrics, state: reports.append((metrics, state)), name=name)
    return outcome, reports


def test_planned_faults_read_only_this_trials_entries():
    text = "nan@N1-k0.9-s0:100, oom@N2-k0.9-s0:7,nan@N2-k0.9-s0:9"
    assert planned_faults("N2-k0.9-s0", text) == {7: "oom", 9: "nan"}
    assert planned_faults("N1-k0.999-s0", text) == {} and planned_faults(None, "") == {}
    for bad in ("oops@N1:3", "nan@N1", "nan@:3", "oom@N1:0", "oom@N1:x"):
        with pytest.raises(ValueError, match=FAULTS_ENV):
            planned_faults("N1", bad)


def test_a_bad_fault_plan_is_refused_before_any_worker(monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, "nan@N1-k0.9-s0")
    with pytest.raises(ConfigError, match=f"unset the environment variable {FAULTS_ENV}"):
        check_environment()


def test_nan_weights_end_the_trial_diverged_at_the_next_step(monkeypatch):
    outcome, reports = _run(monkeypatch, "nan@N2-k0.9-s0:10")
    assert outcome.status == Status.DIVERGED and outcome.reason == "loss is not finite at step 11"
    assert reports[-1][0]["status"] == "diverged" and reports[-1][0]["step"] == 11


def test_an_allocation_no_machine_serves_ends_the_trial_oom_with_a_checkpoint(monkeypatch):
    outcome, reports = _run(monkeypatch, "oom@N2-k0.9-s0:25")
    assert outcome.status == Status.OUT_OF_MEMORY
    assert outcome.reason.startswith("out of memory at step 26 on cpu: ") and "lower --batch-size" in outcome.reason
    metrics, state = reports[-1]
    assert metrics["status"] == "oom" and metrics["step"] == 25 and state is not None  # steps so far are kept
    assert Status.OUT_OF_MEMORY.unhealthy and Status.OUT_OF_MEMORY.mlflow_run_status == "FAILED"


def test_other_trials_and_other_errors_are_left_alone(monkeypatch):
    outcome, _ = _run(monkeypatch, "oom@N1-k0.9-s0:5", name="N2-k0.9-s0")
    assert outcome.status == Status.FINISHED
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
