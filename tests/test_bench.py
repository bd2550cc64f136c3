"""The benchmark code measures what it says (no timing thresholds: the machine is shared)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from bench import objective as bench_objective
from trainables.saved_activations import SavedActivations
from bench.platform_cost import summarize_trial
from bench.sweep_timeline import sweep_timeline
from bench.steptimer import ENV as EVENTS_ENV, load_events
from tests.conftest import run_cli


def test_saved_activation_counter_counts_known_bytes_exactly():
    x = torch.randn(1000, requires_grad=True)  # 4000 bytes of float32
    with SavedActivations() as counter:
        (x * x).sum()  # mul saves x twice: one storage
    assert counter.bytes == 4000
    with SavedActivations() as counter:
        x[:500].sin()  # a view saves the storage it lives in, counted whole
        y = x.double().exp()  # exp saves its float64 result: 8000 more bytes
    assert counter.bytes == 4000 + 8000 and y.dtype == torch.float64
    with SavedActivations(exclude=[x]) as counter:
        (x * x).sum()  # the excluded (parameter) storage is not an activation
    assert counter.bytes == 0
    with SavedActivations() as counter, torch.no_grad():
        x.exp()
    assert counter.bytes == 0


def _mlp_saved_bytes(order: int) -> int:
    """Saved-activation bytes of RCGM order N on the Moons MLP with the online net as target (kappa = 0)."""
    obj = bench_objective.Objective(f"N={order}", "rcgm", order, 1.0)
    return bench_objective.Setup("mlp", obj, torch.device("cpu"), kappa=0.0).saved_bytes()


def test_rcgm_saved_activations_do_not_grow_with_order(monkeypatch):
    fm = _mlp_saved_bytes(0)
    per_order = [_mlp_saved_bytes(n) for n in range(1, 5)]
    # The paper's claim: the N target jumps run without a graph, so training memory is flow matching's.
    assert len(set(per_order)) == 1, per_order
    assert per_order[0] <= 1.05 * fm, (per_order, fm)

    # Not vacuous: with the target jumps run under grad (kappa = 0 targets the online weights), memory grows with N.
    from trainables.rcgm.objective import RCGMObjective

    plain = RCGMObjective.residual.__wrapped__

    def residual_with_grad(self, *args, **kwargs):
        with torch.enable_grad():
            return plain(self, *args, **kwargs)

    monkeypatch.setattr(RCGMObjective, "residual", residual_with_grad)
    mutated = [_mlp_saved_bytes(n) for n in range(1, 5)]
    assert all(b > a for a, b in zip(mutated, mutated[1:])), mutated


def test_objective_quick_reports_every_configuration(tmp_path):
    out = tmp_path / "objective.json"
    assert bench_objective.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    labels = [o.label for o in bench_objective.objectives(4)]
    rows = report["rows"]
    assert [(r["model"], r["objective"]) for r in rows] == [(m, l) for m in bench_objective.QUICK_MODELS for l in labels]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["ratio"] > 0 and r["saved_bytes"] > 0 and r["expected"] >= 1, r
    for r in rows:
        if r["objective"] == "flow matching":
            assert r["ratio"] == 1.0 and r["ratio_of_min"] == 1.0 and r["saved_ratio"] == 1.0 and r["expected"] == 1.0
    assert {"cpu_model", "cores", "torch", "ray", "git_commit", "load_avg_1_5_15"} <= set(report["machine"])


def _events(driver: int, lead: int, launch: float) -> list[dict]:
    """A made-up trial: 4 s of start-up, 10 steps of 0.1 s, one 1 s evaluation after step 5."""
    events = [{"event": "child_main", "t": launch + 0.5, "pid": driver},
              {"event": "process_start", "t": launch + 0.2, "pid": driver},
              {"event": "imports_done", "t": launch + 1.5, "pid": driver},
              {"event": "trainer_init_start", "t": launch + 2.0, "pid": lead},
              {"event": "trainer_init_end", "t": launch + 3.0, "pid": lead, "rank": 0, "world": 1},
              {"event": "rank0_init_end", "t": launch + 3.75, "pid": lead}]
    t = launch + 4.0
    for step in range(1, 11):
        events.append({"event": "step", "pid": lead, "step": step, "t0": t, "t1": t + 0.1})
        t += 0.1 + (1.0 if step == 5 else 0.0)
    return events


def test_trial_summary_from_timer_events():
    launch = 1000.0
    summary = summarize_trial(_events(1, 1, launch), launch, exited=launch + 20.0)
    assert summary["startup_s"] == pytest.approx(4.0)
    assert summary["steps"] == 10
    assert summary["stepping_steps_per_s"] == pytest.approx(10.0)
    # 9 steps after the first one took 0.9 s of stepping plus the 1 s evaluation.
    assert summary["steady_steps_per_s"] == pytest.approx(9 / 1.9)
    assert summary["teardown_s"] == pytest.approx(20.0 - 6.0)
    assert summary["between_steps_s"] == pytest.approx(1.0)
    assert sum(summary["phases"].values()) == pytest.approx(4.0)
    assert list(summary["phases"])[0] == "launch -> process_start (driver)"
    # Only rank 0's steps count, and its own process start is a phase when it is another process (Ray).
    two = _events(1, 2, launch) + [{"event": "process_start", "t": launch + 1.8, "pid": 2},
                                  {"event": "step", "pid": 3, "step": 1, "t0": launch, "t1": launch + 50}]
    summary = summarize_trial(two, launch, exited=launch + 20.0)
    assert summary["steps"] == 10 and "imports_done (driver) -> process_start (lead)" in summary["phases"]


def test_step_timer_reaches_the_plain_training_loop(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    launch = time.time()
    proc = run_cli(["-m", "bench.child", "plain", "--local", "--no-track", "--steps", "12", "--eval-every", "6",
                    "--eval-samples", "50", "--nfe", "1"], timeout=300, env={EVENTS_ENV: str(events), "RCGM_RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = summarize_trial(load_events(events), launch, time.time())
    assert summary["steps"] == 12 and summary["startup_s"] > 0 and summary["steady_steps_per_s"] > 0
    assert "trainer_init_start (lead) -> trainer_init_end (lead)" in summary["phases"]


def _child_run(start: float, end: float, process: str):
    """The two fields of an MLflow Run that sweep_timeline reads (times in ms, like MLflow's)."""
    from types import SimpleNamespace

    return SimpleNamespace(info=SimpleNamespace(start_time=start * 1000, end_time=end * 1000),
                           data=SimpleNamespace(tags={"rcgm.process": process}))


def test_sweep_timeline_splits_the_wall_time():
    # Two slots, three trials of 10 s: a perfect packing would take 15 s; this sweep took 40 s.
    kids = [_child_run(1010, 1020, "h:1"), _child_run(1012, 1022, "h:2"), _child_run(1021, 1031, "h:1")]
    got = sweep_timeline(launch=1000.0, wall=40.0, slots=2, children=kids)
    assert got["ideal_s"] == pytest.approx(15.0) and got["wall_vs_ideal"] == pytest.approx(40 / 15)
    assert got["before_first_trial_s"] == pytest.approx(10.0) and got["after_last_trial_s"] == pytest.approx(9.0)
    assert got["trials_span_s"] == pytest.approx(21.0) and got["span_vs_ideal"] == pytest.approx(21 / 15)
    assert got["processes"] == 2 and got["finished"] == 3


@pytest.mark.slow
def test_sweep_timeline_reads_a_real_sweep_from_mlflow(tmp_path, capsys):
    # A parent and two children in a real SQLite store, as the launcher writes them.
    from mlflow.tracking import MlflowClient

    from bench.sweep_timeline import main as timeline_main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("kappa_by_order")
    parent = client.create_run(exp, tags={"rcgm.sweep": "s", "rcgm.kind": "sweep"}, start_time=1_000_000)
    for k in range(2):
        kid = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "rcgm.process": "h:7"},
                                start_time=1_002_000 + 1000 * k)
        client.set_terminated(kid.info.run_id, end_time=1_006_000 + 1000 * k)
    client.set_terminated(parent.info.run_id, end_time=1_010_000)
    assert timeline_main(["s", "--tracking-uri", uri, "--slots", "2"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    # 2 trials of 4 s on 2 slots: ideal 4 s; the parent's 10 s = 2 before + 5 span + 3 after.
    assert row == "| 2 | 1 | 8.0 | 4.0 | 10.0 | 2.50 | 2.0 | 5.0 | 1.25 | 3.0 |"
    with pytest.raises(SystemExit, match="no sweep 'other'"):
        timeline_main(["other", "--tracking-uri", uri])
