"""The benchmark code measures what it says (no timing thresholds: the machine is shared)."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import time

import pytest
import torch

from bench import objective as bench_objective
from bench import train_run
from trainables.cost import count_flops
from trainables.saved_activations import SavedActivations
from bench.platform_cost import summarize_trial
from bench.sweep_timeline import sweep_timeline
from bench.steptimer import ENV as EVENTS_ENV, load_events
from tests.conftest import REPO_ROOT, run_cli

# Runs `python -c NO_TRACKING module args...` as `python -m module args...` with these packages unimportable,
# as on the GPU machine bench/gpu_check.sh is written for (torch, timm, numpy, pyarrow only).
NO_TRACKING = """
import runpy, sys
blocked, sys.argv = sys.argv[1].split(","), sys.argv[2:]
for name in blocked:
    sys.modules[name] = None  # an import of it now raises ImportError
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
GPU_MACHINE_LACKS = ("ray", "mlflow", "optuna")


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
    replica = bench_objective.Replica("mlp", bench_objective.Variant("fp32", "sdpa"), torch.device("cpu"), kappa=0.0)
    return bench_objective.Setup(replica, obj).saved_bytes()


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


def test_objective_compare_pairs_both_variants_per_objective(tmp_path):
    out = tmp_path / "compare.json"
    assert bench_objective.main(["--quick", "--compare", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    fast, plain = bench_objective.compared_variants(compile=False)
    labels = [o.label for o in bench_objective.objectives(4)]
    # Side by side: every objective of every model in both variants, the GPU-grade one first.
    assert [(r["model"], r["objective"], r["variant"]) for r in rows] == [
        (m, label, v.label) for m in bench_objective.QUICK_MODELS for label in labels for v in (fast, plain)]
    for r in rows:
        seconds = r["ms_per_step"] / 1000
        assert not r["out_of_memory"] and r["precision"] in ("bf16", "fp32"), r
        assert r["images_per_s"] == pytest.approx(r["batch"] / seconds), r
        assert r["tflops_per_s"] == pytest.approx(r["flops_per_step"] / seconds / 1e12), r
        assert r["mfu"] is None and r["peak_tflops"] is None, r  # a CPU has no peak to compare with
        assert 0 < r["ratio"] < 10 and 0 < r["speedup"] < 10 and 0 < r["speedup_of_min"] < 10, r
        if r["objective"] == "flow matching":
            assert r["ratio"] == 1.0 and r["flops_ratio"] == 1.0, r
        if r["variant"] == plain.label:
            assert r["speedup"] == 1.0 and r["speedup_of_min"] == 1.0, r  # the reference against itself
        if r["order"] or r["objective"] in ("shortcut", "consistency (ECT)"):
            # RCGM N adds N no-grad target forwards to a forward + backward: (3 + N) / 3 of flow matching's FLOPs;
            # the shortcut is two of those plus two target forwards (8/3), consistency one (4/3).
            assert r["flops_ratio"] == pytest.approx(r["expected"], rel=0.03), r
    # The counted FLOPs are those trainables.cost.count_flops counts over one loss + backward of a fresh setup.
    objs = {o.label: o for o in bench_objective.objectives(4)}
    for r in rows:
        variant = fast if r["variant"] == fast.label else plain
        replica = bench_objective.Replica(r["model"], variant, torch.device("cpu"))
        setup = bench_objective.Setup(replica, objs[r["objective"]])
        assert r["flops_per_step"] == count_flops(lambda: setup.loss().backward()), r


def test_a_step_out_of_gpu_memory_is_a_row_not_a_crash(monkeypatch):
    # As MeanFlow in fp32 + math on DiT-XL/2 at batch 64 may on one GPU: the others are still timed side by side.
    fast, plain = bench_objective.compared_variants(compile=False)
    real_step = bench_objective.Setup.step

    def step(self):
        if self.objective.name == "meanflow" and self.replica.variant == plain:
            raise torch.cuda.OutOfMemoryError("made up")
        real_step(self)

    monkeypatch.setattr(bench_objective.Setup, "step", step)
    rows = bench_objective.measure_model("mlp", torch.device("cpu"), [fast, plain], rounds=2, steps=1, warmup=1, max_order=1)
    by = {(r["objective"], r["variant"]): r for r in rows}
    assert by[("MeanFlow (JVP)", plain.label)]["out_of_memory"] and "ms_per_step" not in by[("MeanFlow (JVP)", plain.label)]
    assert by[("MeanFlow (JVP)", fast.label)]["ms_per_step"] > 0 and by[("MeanFlow (JVP)", fast.label)]["speedup"] is None
    assert by[("RCGM N=1", fast.label)]["speedup"] > 0 and not by[("RCGM N=1", plain.label)]["out_of_memory"]
    assert "out of memory" in bench_objective.table(rows, "cpu")


def test_max_batch_is_refused_on_cpu(capsys):
    assert bench_objective.main(["--max-batch", "--models", "mlp"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--max-batch" in err and "--device cuda" in err, err


def test_largest_batch_doubles_then_bisects():
    tries = []

    def fits_up_to(limit):
        return lambda b: tries.append(b) or b <= limit

    assert bench_objective.largest_batch(fits_up_to(5), start=64) == 5  # halving down, then exact below 100
    assert 777 - 7 <= bench_objective.largest_batch(fits_up_to(777), start=64) <= 777  # 1 % above 100
    tries.clear()
    assert bench_objective.largest_batch(fits_up_to(1000), start=64) >= 990
    assert tries[:5] == [64, 128, 256, 512, 1024] and len(tries) <= 13, tries  # doubling, then ~7 bisections
    assert bench_objective.largest_batch(fits_up_to(0), start=64) == 0
    assert bench_objective.largest_batch(fits_up_to(10**9), start=64, limit=4096) == 4096


def test_max_batch_rows_find_where_steps_run_out_of_memory(monkeypatch):
    # The CUDA search on the CPU: steps above a made-up per-objective limit raise the CUDA out-of-memory error.
    limits = {"flow matching": 300, "RCGM N=2": 290, "MeanFlow (JVP)": 120}
    plain = bench_objective.Setup.step

    def step(self):
        if self.batch > limits[self.objective.label]:
            raise torch.cuda.OutOfMemoryError("made up")
        plain(self)

    monkeypatch.setattr(bench_objective.Setup, "step", step)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    variant = bench_objective.Variant("fp32", "sdpa")
    rows = bench_objective.max_batch_rows("mlp", torch.device("cpu"), variant)
    assert [r["objective"] for r in rows] == list(bench_objective.MAX_BATCH_OBJECTIVES)
    for r in rows:
        limit = limits[r["objective"]]
        assert limit - limit // 100 <= r["largest_batch"] <= limit and not r["capped"], r
        assert r["ratio"] == pytest.approx(r["largest_batch"] / rows[0]["largest_batch"]), r
    assert rows[0]["tries"][0] == bench_objective.MODELS["mlp"][2]  # the search starts at the bench batch
    assert "|" in bench_objective.max_batch_table(rows)


def test_train_run_without_tracking_packages_writes_throughput_and_losses(tmp_path):
    blocked = ",".join(GPU_MACHINE_LACKS + ("matplotlib",))  # the GPU machine may lack matplotlib too
    proc = run_cli(["-c", NO_TRACKING, blocked, "bench.train_run", "--steps", "6", "--model", "DiT-XS/4", "--batch", "4",
                    "--rows", "64", "--log-every", "3", "--out", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no loss.png: matplotlib is not installed" in proc.stdout and not (tmp_path / "loss.png").exists()
    report = json.loads((tmp_path / "train_run.json").read_text())
    assert report["steps_done"] == 6 and len(report["losses"]) == 6 and all(math.isfinite(x) for x in report["losses"])
    speed = report["throughput"]
    assert speed["steps_per_s"] > 0 and speed["samples_per_s"] == pytest.approx(4 * speed["steps_per_s"])
    assert speed["tflops_per_s"] == pytest.approx(report["cost"]["step_flops"] * speed["steps_per_s"] / 1e12)
    # RCGM N = 2 counted: forward + backward (~3 forwards) and the 2 target jumps.
    assert report["cost"]["forward_flops"] > 0 and 4.5 < report["cost"]["forward_equivalents"] <= 5.0, report["cost"]
    assert report["precision"] == "fp32" and report["config"]["order"] == 2
    assert train_run.plot_losses(report["losses"], "test", tmp_path / "loss.png") and (tmp_path / "loss.png").stat().st_size > 0


def test_gpu_check_script_names_existing_modules_and_flags():
    script = REPO_ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    commands = {}
    for line in script.read_text().splitlines():
        if line.startswith("stage "):
            words = shlex.split(line)
            module = words.index("-m") + 1
            commands.setdefault(words[module], []).append(words[module + 1:])
    assert set(commands) == {"bench.objective", "bench.train_run"}, commands
    assert any("--compare" in args for args in commands["bench.objective"])
    assert any("--max-batch" in args for args in commands["bench.objective"])
    for args in commands["bench.objective"]:
        assert set(bench_objective.parse_args(args).models.split(",")) <= set(bench_objective.MODELS), args
    for args in commands["bench.train_run"]:
        train_run.parse_args(args)  # the model is one of the choices
    for module, arg_lists in commands.items():
        # --help imports the module as the script runs it, on a python without Ray, MLflow or Optuna.
        proc = run_cli(["-c", NO_TRACKING, ",".join(GPU_MACHINE_LACKS), module, "--help"], timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        usage = proc.stdout.split("\n\n")[0]  # argparse's usage lists every option; the description may name old ones
        known = set(re.findall(r"--[\w-]+", usage))
        for args in arg_lists:
            flags = {a for a in args if a.startswith("--")}
            assert flags <= known, (module, flags - known)


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
