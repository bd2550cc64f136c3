"""The main job end to end on a real local Ray and a real SQLite MLflow store: run, resume, submit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, REPO_ROOT, keep_artifact, keep_artifact_text, run_cli
from sweeps.local_cluster import end_sessions

SCRIPT = "sweeps/kappa_by_order.py"


def _children(uri: str, sweep: str, experiment: str = "kappa_by_order"):
    """The sweep's parent run and its child runs."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, []
    parents = client.search_runs([exp.experiment_id], f"tags.`rcgm.sweep` = '{sweep}' and tags.`rcgm.kind` = 'sweep'")
    if not parents:
        return None, []
    parent = parents[0]
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, kids


def _wait_for_http(url: str, timeout: float) -> None:
    """Poll url until it answers at all (a Ray head's dashboard coming up; 401 counts under token auth)."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMOKE_CELLS = ("N1-k0.9-s0", "N1-k0.999-s0", "N2-k0.9-s0", "N2-k0.999-s0")


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["auto", "train"])
def test_smoke_sweep_end_to_end(runner, sqlite_uri, tmp_path):
    # auto runs one-worker trials inside their Tune process; train nests a TorchTrainer per trial
    # (and, to cover --verbose in the same run, prints Ray's and Tune's own output).
    verbose = ["--verbose"] if runner == "train" else []
    proc = run_cli([SCRIPT, "--smoke", "--trial-runner", runner, *verbose, "--tracking-uri", sqlite_uri,
                    "--storage-path", str(tmp_path / "ray")], timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    keep_artifact_text(out, f"smoke_console_{runner}.txt")
    if verbose:
        assert "Trial status" in out or "Configuration for experiment" in out  # Tune's own tables are back
    else:
        # The console a person reads (captured, so not a terminal): compact, named by cell.
        assert len(out.splitlines()) < 150, len(out.splitlines())
        assert all(cell in out for cell in SMOKE_CELLS)
        for noise in ("grid_trial_", "tune_trial_", "Configuration for experiment", "started with configuration", "\u256d",
                      "Token authentication", "View run", "INFO"):
            assert noise not in out, noise
        assert "4 trials: 4 finished" in out and "trials done" in out
    # Ray's trial folders carry the cell key too.
    trial_dirs = sorted(p.name for p in (tmp_path / "ray" / "moons-smoke").iterdir() if p.is_dir())
    assert trial_dirs == sorted(SMOKE_CELLS), trial_dirs
    parent, kids = _children(sqlite_uri, "moons-smoke")
    assert parent is not None and parent.data.params["orders"] == "1,2" and parent.data.params["kappas"] == "0.9,0.999"
    assert parent.data.params["trial_runner"] == ("inline" if runner == "auto" else "train")
    assert len(kids) == 4
    cells = sorted((k.data.params["order"], k.data.params["kappa"]) for k in kids)
    assert cells == [("1", "0.9"), ("1", "0.999"), ("2", "0.9"), ("2", "0.999")]
    for kid in kids:
        assert kid.data.tags["status"] == "finished"
        assert kid.data.params["steps"] == "300"
        assert "mmd2_1nfe" in kid.data.metrics and "mmd2_2nfe" in kid.data.metrics
    processes = {kid.data.tags["rcgm.process"] for kid in kids}
    if runner == "auto":
        # Inline trials reuse their Tune process: 4 trials on at most 2 slots need at most 2 processes.
        assert len(processes) <= 2, processes
    else:
        assert len(processes) == 4, processes  # a TorchTrainer starts a fresh worker per trial
    client = MlflowClient(sqlite_uri)
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert any(p.endswith(".html") for p in report), report
    assert any("heatmap" in p and p.endswith(".png") for p in report), report
    assert "mmd2_1nfe (final, mean over seeds" in out  # the terminal table
    assert f"mlflow ui --backend-store-uri {sqlite_uri}" in out
    html = next(line.split("report: ", 1)[1].strip() for line in out.splitlines() if line.startswith("report: "))
    keep_artifact(html, f"smoke_report_{runner}.html")


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(sqlite_uri, tmp_path):
    ray_tmp = f"/tmp/rcgm-resume-{os.getpid()}"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    # Trials long enough (several seconds each, even in reused processes) that the kill after the
    # first finished trial lands while the others still run.
    steps = 4000
    args = [PYTHON, SCRIPT, "--smoke", "--steps", str(steps), "--eval-every", "500", "--name", "resume-me", "--no-report",
            "--tracking-uri", sqlite_uri, "--storage-path", str(tmp_path / "ray")]
    MlflowClient(sqlite_uri).search_experiments()  # create the schema first: two processes migrating one SQLite file race
    first = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            _, kids = _children(sqlite_uri, "resume-me")
            if any(k.data.tags.get("status") == "finished" for k in kids):
                break
            assert first.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no trial finished in time")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        # Ray's daemons outlive a SIGKILLed driver, in its session: end that session's processes, by pid.
        end_sessions([first.pid], grace=5)
    _, kids = _children(sqlite_uri, "resume-me")
    assert any(k.data.tags.get("status") != "finished" for k in kids) or len(kids) < 4, "it was not killed mid-sweep"

    proc = run_cli(args[1:], timeout=900, env={"RAY_TMPDIR": ray_tmp + "-2"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "resuming sweep" in proc.stdout
    _, kids = _children(sqlite_uri, "resume-me")
    keys = [k.data.tags["rcgm.trial_key"] for k in kids]
    assert len(keys) == 4 and len(set(keys)) == 4  # one child run per cell, no duplicates
    assert all(k.data.tags["status"] == "finished" for k in kids)
    assert all(k.data.metrics["final_step"] == steps for k in kids)


@pytest.mark.slow
def test_a_sweep_with_a_diverging_and_an_out_of_memory_trial_finishes_and_marks_both(sqlite_uri, tmp_path):
    import warnings

    from dashboards.cells import build_grid
    from dashboards.collect import collect

    faults = "nan@N1-k0.9-s0:100,oom@N2-k0.9-s0:150"
    proc = run_cli([SCRIPT, "--smoke", "--name", "faulty", "--tracking-uri", sqlite_uri, "--storage-path", str(tmp_path / "ray")],
                   timeout=900, env={"RCGM_INJECT_FAULTS": faults})
    out = proc.stdout + proc.stderr
    keep_artifact_text(out, "sweep_with_faults.txt")
    assert proc.returncode == 0, out[-4000:]
    parent, kids = _children(sqlite_uri, "faulty")
    assert parent.info.status == "FINISHED" and len(kids) == 4
    runs = {k.info.run_name: k for k in kids}
    diverged, oom = runs["N1-k0.9-s0"], runs["N2-k0.9-s0"]
    assert diverged.data.tags["status"] == "diverged" and diverged.data.tags["status_reason"] == "loss is not finite at step 101"
    assert oom.data.tags["status"] == "oom" and oom.data.tags["status_reason"].startswith("out of memory at step 151 on cpu")
    assert diverged.info.status == "FINISHED" and oom.info.status == "FAILED"  # MLflow's own view of each
    # Ended with a status, not retried: a planned fault would only happen again.
    assert "resumed_from_step" not in oom.data.metrics and oom.data.metrics["final_step"] == 150
    assert all(runs[k].data.tags["status"] == "finished" for k in ("N1-k0.999-s0", "N2-k0.999-s0"))
    assert "4 trials: 2 finished, 1 diverged, 1 oom" in out, out[-2000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = collect(sqlite_uri, "kappa_by_order", sweeps=["faulty"]).table
    grid = build_grid(table, "final.mmd2_1nfe")
    # The heatmap's cells say why they hold no value (hatched: every trial of the cell unhealthy).
    assert grid.cell(1, 0.9).all_unhealthy and grid.cell(1, 0.9).label() == "diverged (1/1)"
    assert grid.cell(2, 0.9).all_unhealthy and grid.cell(2, 0.9).label() == "oom (1/1)"
    assert not grid.cell(2, 0.999).all_unhealthy


@pytest.mark.slow
def test_ray_job_submit_against_a_started_head(sqlite_uri, tmp_path):
    ray = str(REPO_ROOT / ".venv" / "bin" / "ray") if (REPO_ROOT / ".venv" / "bin" / "ray").exists() else "ray"
    dash, gcs, agent, agent_grpc, env_agent, metrics = (_free_port() for _ in range(6))
    # As with an activated venv: the job's `python` entrypoint must find the project's packages.
    path = f"{os.path.dirname(PYTHON)}:{os.environ.get('PATH', '')}"
    ray_tmp = f"/tmp/rcgm-head-{os.getpid()}"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PATH": path}
    # Explicit agent ports: another Ray on this machine (a test's, a user's) may hold the defaults,
    # and a head whose job agent cannot bind answers 'No available agent' forever.
    # --block in its own session, so the test can end exactly this head (`ray stop` ends every Ray of the user).
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}", "--num-cpus=2",
                             "--include-dashboard=true", f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                             f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_http(f"http://127.0.0.1:{dash}/api/version", timeout=180)
        for _ in range(6):
            proc = run_cli(["-m", "sweeps.submit", "--address", f"http://127.0.0.1:{dash}", "--", SCRIPT, "--smoke", "--name", "submitted",
                            "--no-report", "--tracking-uri", sqlite_uri, "--storage-path", str(tmp_path / "ray")], timeout=900, env=env)
            # A fresh head answers 'No available agent' until its job agent is up: Ray's own advice is to retry.
            if "No available agent" not in proc.stdout + proc.stderr:
                break
            time.sleep(10)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert "succeeded" in (proc.stdout + proc.stderr).lower()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        end_sessions([head.pid], grace=5)  # the head's daemons, by pid: never by name, never `ray stop`
    _, kids = _children(sqlite_uri, "submitted")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    assert len(kids) == 4 and all(k.data.tags["status"] == "finished" for k in kids)
    assert all(k.data.tags["git.commit"] == head for k in kids)  # the submitter's commit reached the workers


@pytest.mark.parametrize("flags,needle", [
    (["--task", "imagenet"], "--task"),
    (["--kappas", "0.9,1.5"], "--kappas"),
    (["--orders", "-1,2"], "--orders"),
    (["--time-schedule", "cosine"], "--time-schedule"),
    (["--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    (["--trial-runner", "bogus"], "--trial-runner"),
    (["--storage-path", "/proc/nope"], "--storage-path"),
    (["--storage-path", "/etc/hostname/ray"], "--storage-path"),
    (["--trial-runner", "inline", "--workers", "2"], "--trial-runner"),
])
def test_bad_flags_fail_before_ray_starts(flags, needle):
    started = time.time()
    proc = run_cli([SCRIPT, "--smoke", *flags], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr
    assert "Started a local Ray" not in proc.stdout + proc.stderr
    assert time.time() - started < 60


@pytest.mark.parametrize("where", ["flag", "stale-file"])
def test_dead_ray_address_is_refused_in_seconds(where, sqlite_uri, tmp_path):
    # Ray itself retries a dead address for minutes without a word; a head that died uncleanly
    # leaves its address in the current-cluster file, which a plain `make sweep` would join.
    env = {"RAY_TMPDIR": str(tmp_path)}
    flags = ["--address", "127.0.0.1:9"] if where == "flag" else []
    if where == "stale-file":
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    started = time.time()
    proc = run_cli([SCRIPT, "--smoke", "--tracking-uri", sqlite_uri, *flags], timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no Ray cluster answers at 127.0.0.1:9" in proc.stderr
    assert ("current-cluster file" in proc.stderr) == (where == "stale-file")
    assert time.time() - started < 60
    assert _children(sqlite_uri, "moons-smoke") == (None, [])  # no MLflow run was opened


def test_dashboard_address_given_as_ray_address_is_explained():
    proc = run_cli([SCRIPT, "--smoke", "--address", "http://127.0.0.1:8265"], timeout=120)
    assert proc.returncode == 2 and "RAY_API_SERVER_ADDRESS" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_optuna_search_with_asha(sqlite_uri, tmp_path):
    proc = run_cli(["sweeps/schedule_search.py", "--samples", "3", "--steps", "400", "--eval-every", "100", "--name", "search",
                    "--no-report", "--tracking-uri", sqlite_uri, "--storage-path", str(tmp_path / "ray"),
                    "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}"], timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    parent, kids = _children(sqlite_uri, "search", experiment="schedule_search")
    assert parent.data.tags["rcgm.search"] == "optuna" and parent.data.tags["rcgm.metric"] == "final.mmd2_1nfe"
    assert len(kids) == 3
    statuses = [k.data.tags["status"] for k in kids]
    # Every run ends with a status: finished (reached max_t, closed before ASHA's stop) or stopped early.
    assert set(statuses) <= {"finished", "stopped"} and "finished" in statuses, statuses
    assert all(k.data.metrics["final_step"] == 400 for k in kids if k.data.tags["status"] == "finished")
    assert len({(k.data.params["time_schedule.a"], k.data.params["lr"]) for k in kids}) == 3  # TPE proposed 3 points
    import optuna

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 3  # the study is stored where optuna-dashboard can open it


@pytest.mark.parametrize("flags,name,trials,model", [
    (["--task", "mnist"], "mnist", 4, "DiT-XS/4"),      # a bare image task gets the image size
    (["--task", "moons"], "moons-default", 34, "mlp"),
    (["--task", "mnist", "--size", "smoke", "--model", "DiT-XS/4"], "mnist-smoke", 4, "DiT-XS/4"),
])
def test_dry_run_picks_the_size_for_the_task(flags, name, trials, model):
    import json

    proc = run_cli([SCRIPT, *flags, "--dry-run"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["name"], plan["trials"], plan["base"]["model"]) == (name, trials, model)


# ---------------------------------------------------------------- search spaces: integer and transformed params


def _search_plan(tmp_path, *flags):
    """schedule_search's plan for flags, every store under tmp_path (nothing starts)."""
    from sweeps.schedule_search import parse_args, plan_from_args

    return plan_from_args(parse_args(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", str(tmp_path / "ray"),
                                      "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}", *flags]))


def test_order_kappa_space_at_the_default_grid_budget(tmp_path):
    from sweeps.launcher import validate
    from sweeps.spaces import GRIDS

    plan = validate(_search_plan(tmp_path, "--space", "order_kappa"))
    assert plan.name == "moons-order_kappa"
    for name, value in GRIDS["default"].trial.items():
        assert getattr(plan.base, name) == value, name  # the best point compares with the grid's cells
    assert plan.base.time_schedule == "beta"
    # Searched settings vary per trial: neither fixed in the trial values nor recorded as the sweep's settings.
    assert not {"order", "kappa", "time_params"} & set(plan.values)
    assert not {"order", "kappa"} & set(plan.settings)
    # Both ends of each searched range make a valid trial; one_minus_kappa sets kappa.
    assert plan.cell_config({"order": 1}).order == 1 and plan.cell_config({"order": 6}).order == 6
    assert plan.cell_config({"one_minus_kappa": 1e-4}).kappa == pytest.approx(0.9999)
    assert plan.cell_config({"one_minus_kappa": 0.5}).kappa == 0.5
    # The other spaces keep their fixed order and kappa, and their names.
    other = _search_plan(tmp_path, "--space", "beta_schedule")
    assert (other.name, other.base.order, other.base.kappa) == ("moons-beta_schedule-N2-k0.999", 2, 0.999)
    assert _search_plan(tmp_path, "--order", "3", "--kappa", "0.99").name == "moons-beta_schedule-N3-k0.99"


def test_integer_params_sample_both_ends():
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    from optuna.distributions import FloatDistribution, IntDistribution

    from sweeps.optuna_search import optuna_param_space
    from sweeps.spaces import SEARCHES

    space = optuna_param_space(SEARCHES["order_kappa"].params)
    # What Optuna is asked for: order 1..6 both included (Tune's randint excludes its upper end).
    dists = OptunaSearch.convert_search_space(space)
    assert dists["order"] == IntDistribution(1, 6)
    assert dists["one_minus_kappa"] == FloatDistribution(1e-4, 0.5, log=True)
    assert dists["time_params.a"] == FloatDistribution(0.3, 3.0, log=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    orders = {study.ask(dists).params["order"] for _ in range(200)}
    assert orders == {1, 2, 3, 4, 5, 6}
    assert {int(v) for v in space["order"].sample(size=200)} == {1, 2, 3, 4, 5, 6}  # Tune's own sampler too
    # The existing spaces keep their float distributions (their stored studies resume).
    beta = OptunaSearch.convert_search_space(optuna_param_space(SEARCHES["beta_schedule"].params))
    assert beta == {"time_params.a": FloatDistribution(0.3, 3.0, log=True), "time_params.b": FloatDistribution(0.3, 3.0, log=True),
                    "lr": FloatDistribution(2e-4, 5e-3, log=True)}


def test_no_space_fixes_what_it_searches():
    from sweeps.spaces import SEARCHES
    from trainables.tune_trial import setting_of

    for name, space in SEARCHES.items():
        searched = {setting_of(p).split(".")[0] for p in space.params}
        assert not searched & set(space.trial), name  # the launcher would blame a flag the user never gave


@pytest.mark.parametrize("space,flags,flag", [
    ("order_kappa", ["--order", "3"], "--order"),
    ("order_kappa", ["--kappa", "0.9"], "--kappa"),
    ("order_kappa", ["--time-params", "a=1"], "--time-params"),
    ("beta_schedule", ["--lr", "0.01"], "--lr"),
])
def test_searched_setting_given_by_a_flag_is_refused(space, flags, flag, tmp_path):
    from sweeps.launcher import validate
    from trainables.rcgm.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(_search_plan(tmp_path, "--space", space, *flags))
    assert err.value.flag == flag and "the search samples it" in str(err.value)


def test_search_cli_refuses_a_searched_flag_in_one_line():
    proc = run_cli(["sweeps/schedule_search.py", "--space", "order_kappa", "--kappa", "0.9", "--dry-run"], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: kappa=0.9 is invalid: expected no value: the search samples it (one_minus_kappa in 0.0001..0.5 sets kappa) "
        "(change --kappa)"]
