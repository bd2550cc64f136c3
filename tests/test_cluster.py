"""The local cluster for real: PostgreSQL, an mlflow server on it, a 0-CPU Ray head and two worker nodes.

Everything here goes through the commands a user types: `python -m sweeps.local_cluster up/status/down`
and the literal `ray job submit --working-dir . -- python sweeps/kappa_by_order.py ...` line of the
README, with the environment `up` prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, REPO_ROOT, keep_artifact, keep_artifact_text, run_cli

pytestmark = pytest.mark.slow  # a whole cluster: ~30 s to bring up, a few minutes of jobs

RAY = str(Path(PYTHON).with_name("ray"))
SMOKE = ["python", "sweeps/kappa_by_order.py", "--smoke"]


def _cluster_processes(tmp: str) -> list[int]:
    """Processes whose command line names the cluster's temp folder (read only: nothing is killed by name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tmp.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class Cluster:
    """A cluster brought up by the launcher's CLI, and what a client of it needs."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.up = run_cli(["-m", "sweeps.local_cluster", "up", "--dir", str(folder), "--workers", "2"], timeout=400)
        assert self.up.returncode == 0, (self.up.stdout + self.up.stderr)[-3000:]
        self.state = json.loads((folder / "cluster.json").read_text())
        self.env = {}
        for line in (folder / "env.sh").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = value
        # As with an activated venv: the `ray` CLI, as the README's line types it.
        self.env["PATH"] = f"{Path(PYTHON).parent}:{os.environ.get('PATH', '')}"

    @property
    def uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def ray(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """The Ray CLI with the cluster's environment, from the repository root."""
        return subprocess.run([RAY, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})

    def submit(self, *entrypoint: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir . [extra] -- entrypoint`, as written in the README."""
        return self.ray("job", "submit", "--working-dir", ".", *extra, "--", *entrypoint)

    def psql(self, sql: str) -> str:
        """One value from the cluster's PostgreSQL, through its password (as the MLflow server logs in)."""
        psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
        out = subprocess.run([str(psql), "-h", "127.0.0.1", "-p", str(self.state["ports"]["postgres"]), "-U", "rcgm", "-d",
                              "mlflow", "-tAc", sql], capture_output=True, text=True, timeout=30,
                             env={"PATH": "/usr/bin:/bin", "PGPASSWORD": self.state["pg_password"]})
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def sweep(self, name: str):
        """(parent run, child runs) of a sweep, read back over the server's REST API."""
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name("kappa_by_order")
        parents = client.search_runs([exp.experiment_id], f"tags.`rcgm.sweep` = '{name}' and tags.`rcgm.kind` = 'sweep'")
        assert len(parents) == 1, parents
        kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
        return parents[0], kids


@pytest.fixture(scope="module")
def cluster():
    # Under /tmp, open to all: PostgreSQL runs as the postgres user, which must reach its data dir.
    folder = Path(tempfile.mkdtemp(prefix="rcgm-lc-", dir="/tmp"))
    folder.chmod(0o755)
    c = Cluster(folder)
    yield c
    for log in (folder / "logs").glob("*.log"):
        keep_artifact(log, f"cluster_{log.name}")
    down = run_cli(["-m", "sweeps.local_cluster", "down", "--dir", str(folder), "--purge"], timeout=120)
    # down ends every process up started, and only those; nothing of the cluster is left running.
    assert down.returncode == 0, down.stdout + down.stderr
    assert _cluster_processes(c.state["tmp"]) == []
    assert not folder.exists()


@pytest.fixture(scope="module")
def smoke_job(cluster):
    """The README's line, exactly: no tracking or storage flags, the nodes' environment supplies both."""
    proc = cluster.submit(*SMOKE, "--name", "cluster-smoke")
    keep_artifact_text(proc.stdout + proc.stderr, "cluster_job_submit.txt")
    return proc


def test_up_starts_every_service_on_loopback(cluster):
    out = cluster.up.stdout
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI", "RCGM_STORAGE_PATH"):
        assert f"export {key}=" in out  # the exact environment to export is printed
    status = run_cli(["-m", "sweeps.local_cluster", "status", "--dir", str(cluster.dir)], timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "3 nodes alive" in status.stdout and status.stdout.count("(worker ") == 2 and status.stdout.count("(head ") == 1
    assert cluster.psql("SHOW listen_addresses") == "127.0.0.1"
    assert cluster.env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")


def test_a_second_up_is_refused_while_one_runs(cluster):
    again = run_cli(["-m", "sweeps.local_cluster", "up", "--dir", str(cluster.dir)], timeout=60)
    assert again.returncode == 2 and "already up" in again.stderr


def test_readme_job_line_tracks_to_postgres_across_two_nodes(cluster, smoke_job):
    out = smoke_job.stdout + smoke_job.stderr
    assert smoke_job.returncode == 0 and "succeeded" in out, out[-4000:]
    parent, kids = cluster.sweep("cluster-smoke")
    assert parent.info.status == "FINISHED"
    assert sorted(k.info.run_name for k in kids) == ["N1-k0.9-s0", "N1-k0.999-s0", "N2-k0.9-s0", "N2-k0.999-s0"]
    assert all(k.data.tags["status"] == "finished" for k in kids)
    # Trials ran on both worker nodes, none on the 0-CPU head.
    nodes = {k.data.tags["ray.node_id"] for k in kids}
    assert len(nodes) == 2, nodes
    head = subprocess.run([PYTHON, "-c", "import ray, json; ray.init(); "
                           "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and "
                           "n['Resources'].get('CPU', 0) == 0]))"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **cluster.env}, cwd=REPO_ROOT)
    assert head.returncode == 0, head.stderr[-2000:]
    assert nodes.isdisjoint(json.loads(head.stdout.strip().splitlines()[-1]))
    # The rows are in PostgreSQL (the server's backend store), not in some SQLite file.
    assert int(cluster.psql(f"SELECT count(*) FROM runs WHERE experiment_id = {int(parent.info.experiment_id)} "
                            "AND status = 'FINISHED'")) >= 5
    # Checkpoints and Tune's state on the shared storage path; the report in the parent run.
    assert (Path(cluster.env["RCGM_STORAGE_PATH"]) / "cluster-smoke").is_dir()
    artifacts = {a.path for a in MlflowClient(cluster.uri).list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in artifacts
    # The closing lines point where the results are, never into Ray's temporary copy of the code.
    closing = [line for line in out.splitlines() if line.startswith(("report:", "open the MLflow UI:", "tracking:"))]
    assert closing and not any("runtime_resources" in line for line in closing), closing
    assert f"open the MLflow UI: {cluster.uri}/#/experiments/{parent.info.experiment_id}?workflowType=machine_learning" in out


def test_mlflow_ui_link_opens_the_sweeps_runs(cluster, smoke_job, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium")
    link = next(line.split(": ", 1)[1] for line in smoke_job.stdout.splitlines() if line.startswith("open the MLflow UI: "))
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000"]
    dom = subprocess.run([*base, "--dump-dom", link], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The runs table with the sweep in it, not the GenAI overview MLflow 3.17 opens by default.
    assert "cluster-smoke" in dom.stdout and "Run Name" in dom.stdout
    shot = tmp_path / "ui.png"
    subprocess.run([*base, "--window-size=1400,900", f"--screenshot={shot}", link], capture_output=True, timeout=120)
    if shot.exists():
        keep_artifact(shot, "cluster_mlflow_ui.png")


def test_job_whose_results_would_be_lost_is_refused(cluster):
    before = int(cluster.psql("SELECT count(*) FROM runs"))
    # A plain Ray cluster: nothing tells the job where to track or checkpoint.
    blank = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": "", "RCGM_STORAGE_PATH": "", "RCGM_RUNS_DIR": ""}})
    proc = cluster.submit(*SMOKE, "--name", "lost", extra=("--runtime-env-json", blank))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exit code 2" in out, out[-3000:]
    assert "Ray deletes with the job" in out and "MLFLOW_TRACKING_URI" in out and "RCGM_STORAGE_PATH" in out
    assert int(cluster.psql("SELECT count(*) FROM runs")) == before  # refused before any run was opened


def test_job_stop_then_the_same_submission_resumes(cluster):
    args = [*SMOKE, "--name", "stop-me", "--steps", "8000", "--eval-every", "500", "--no-report"]
    first = cluster.ray("job", "submit", "--no-wait", "--working-dir", ".", "--", *args, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    job_id = next(w.strip("'") for w in first.stdout.split() if w.strip("'").startswith("raysubmit_"))
    deadline = time.time() + 300
    while time.time() < deadline:  # until some trial is well into training
        try:
            _, kids = cluster.sweep("stop-me")
        except (AssertionError, AttributeError):
            kids = []
        client = MlflowClient(cluster.uri)
        if any(max((m.step for m in client.get_metric_history(k.info.run_id, "loss")), default=0) >= 2000 for k in kids):
            break
        time.sleep(2)
    else:
        pytest.fail("no trial reached step 2000: " + cluster.ray("job", "logs", job_id, timeout=60).stdout[-3000:])
    stop = cluster.ray("job", "stop", job_id, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    parent, kids = cluster.sweep("stop-me")
    # SIGTERM stopped the sweep as Ctrl-C does: Tune saved its state, the runs say what happened.
    assert parent.info.status == "KILLED" and "interrupted" in parent.data.tags["status_reason"]
    assert all(k.info.status != "RUNNING" for k in kids)
    logs = cluster.ray("job", "logs", job_id, timeout=60).stdout
    assert "the same command resumes it" in logs, logs[-3000:]

    again = cluster.submit(*args)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "resuming sweep" in again.stdout
    parent, kids = cluster.sweep("stop-me")
    assert parent.info.status == "FINISHED" and "status_reason" not in parent.data.tags
    keys = [k.data.tags["rcgm.trial_key"] for k in kids]
    assert len(keys) == 4 == len(set(keys))  # one child run per cell
    assert all(k.data.tags["status"] == "finished" and k.data.metrics["final_step"] == 8000 for k in kids)
    assert any(k.data.metrics.get("resumed_from_step", 0) > 0 for k in kids)  # continued, not restarted


def test_job_without_a_runs_dir_keeps_its_report_in_mlflow(cluster):
    # Tracking and checkpoints are set, but the report's folder would be Ray's temporary copy.
    blank = json.dumps({"env_vars": {"RCGM_RUNS_DIR": ""}})
    proc = cluster.submit(*SMOKE, "--name", "report-in-mlflow", extra=("--runtime-env-json", blank))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    parent, _ = cluster.sweep("report-in-mlflow")
    line = next(line for line in out.splitlines() if line.startswith("report: "))
    assert line.startswith(f"report: MLflow parent run {parent.info.run_id}, artifacts report/report.html"), line
    artifacts = {a.path for a in MlflowClient(cluster.uri).list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in artifacts


# ---- faults under a running sweep: a worker node, the MLflow server, PostgreSQL ------------------

FAULT_STEPS = 30000
MLFLOW_DOWN_S = 25  # the trials' client gives up after ~6 s (2 retries): the queue must carry the rest
POSTGRES_DOWN_S = 8


def _cluster_cli(cluster, *args: str) -> str:
    proc = run_cli(["-m", "sweeps.local_cluster", *args, "--dir", str(cluster.dir)], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _steps(client, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def faulted_sweep(cluster):
    """One 2-trial sweep on the two workers that lives through three faults, one after the other:

    a worker node SIGKILLed (then started again as a new node), the MLflow server ended for longer
    than its clients retry, then PostgreSQL restarted under the server. Returns what was seen.
    """
    from sweeps.local_cluster import LocalCluster

    args = [*SMOKE, "--orders", "2", "--name", "faults", "--steps", str(FAULT_STEPS), "--eval-every", "1000",
            "--checkpoint-every", "1000", "--no-report"]
    first = cluster.ray("job", "submit", "--no-wait", "--working-dir", ".", "--", *args, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    job_id = next(w.strip("'") for w in first.stdout.split() if w.strip("'").startswith("raysubmit_"))
    client = MlflowClient(cluster.uri)
    deadline = time.time() + 300
    while time.time() < deadline:  # both trials training, with a checkpoint behind them
        try:
            _, kids = cluster.sweep("faults")
        except (AssertionError, AttributeError):
            kids = []
        if len(kids) == 2 and all(max(_steps(client, k.info.run_id), default=0) >= 2000 for k in kids):
            break
        time.sleep(2)
    else:
        pytest.fail("the trials did not reach step 2000: " + cluster.ray("job", "logs", job_id, timeout=60).stdout[-3000:])
    seen = {"job_id": job_id, "before_kill": {k.info.run_id: k.data.tags["ray.node_id"] for k in kids}}

    launcher = LocalCluster(cluster.dir)
    alive_before = {n["node_id"] for n in launcher.ray_nodes()}
    _cluster_cli(cluster, "stop", "ray-worker-1", "--kill")
    deadline = time.time() + 180
    while time.time() < deadline and len(launcher.ray_nodes()) >= len(alive_before):
        time.sleep(2)  # until the head has noticed the node is gone
    dead = alive_before - {n["node_id"] for n in launcher.ray_nodes()}
    assert len(dead) == 1, f"the head still counts {len(launcher.ray_nodes())} nodes"
    seen["dead_node"] = dead.pop()
    _cluster_cli(cluster, "start", "ray-worker-1")  # a fresh node where the lost trial can go on

    _cluster_cli(cluster, "stop", "mlflow")
    time.sleep(MLFLOW_DOWN_S)
    _cluster_cli(cluster, "start", "mlflow")
    seen["mlflow_back"] = time.time()

    _cluster_cli(cluster, "stop", "postgres")
    time.sleep(POSTGRES_DOWN_S)
    _cluster_cli(cluster, "start", "postgres")
    seen["postgres_back"] = time.time()

    logs = cluster.ray("job", "logs", "--follow", job_id, timeout=900)
    keep_artifact_text(logs.stdout + logs.stderr, "cluster_faults_job.txt")
    status = cluster.ray("job", "status", job_id, timeout=60)
    seen["job_status"] = status.stdout + status.stderr
    seen["logs"] = logs.stdout
    seen["parent"], seen["kids"] = cluster.sweep("faults")
    return seen


def _worker_logs(cluster) -> str:
    """Every Ray worker process's stdout and stderr on every node of the cluster (the trials print there)."""
    text = []
    for path in Path(cluster.state["tmp"]).glob("*/session_*/logs/worker-*"):
        text.append(path.read_text(errors="replace"))
    return "\n".join(text)


def test_sweep_finishes_through_all_three_faults(faulted_sweep):
    assert "succeeded" in faulted_sweep["job_status"].lower(), faulted_sweep["logs"][-4000:]
    assert faulted_sweep["parent"].info.status == "FINISHED"
    kids = faulted_sweep["kids"]
    assert len(kids) == 2 and len({k.data.tags["rcgm.trial_key"] for k in kids}) == 2  # one run per cell
    assert all(k.data.tags["status"] == "finished" and k.data.metrics["final_step"] == FAULT_STEPS for k in kids)
    # The faults happened while training: some trial was still running after the last of them.
    assert max(k.info.end_time for k in kids) / 1000 > faulted_sweep["postgres_back"], "raise FAULT_STEPS"


def test_a_dead_worker_nodes_trial_resumes_on_another_node_from_its_checkpoint(faulted_sweep):
    kids = faulted_sweep["kids"]
    lost = [k for k in kids if faulted_sweep["before_kill"][k.info.run_id] == faulted_sweep["dead_node"]]
    assert len(lost) == 1  # the killed node held exactly one of the two trials
    run = lost[0]
    assert run.data.metrics["resumed_from_step"] >= 1000  # from its checkpoint, not from scratch
    assert run.data.tags["ray.node_id"] != faulted_sweep["dead_node"]  # it finished elsewhere
    # Its curve is continuous across the loss: test_metric_histories_are_complete_after_the_outages.


def test_metric_histories_are_complete_after_the_outages(cluster, faulted_sweep):
    client = MlflowClient(cluster.uri)
    every_eval = list(range(1000, FAULT_STEPS + 1, 1000))
    for kid in faulted_sweep["kids"]:
        # Every evaluation exactly once: none lost to the outages, none doubled by the replay or the resume.
        assert _steps(client, kid.info.run_id) == every_eval, kid.info.run_name
        assert _steps(client, kid.info.run_id, "mmd2_1nfe") == every_eval
    workers = _worker_logs(cluster)
    assert "training goes on, writes are kept in order" in workers and "queued writes replayed" in workers


def test_no_secret_reaches_params_tags_or_logs(cluster, faulted_sweep, smoke_job):
    secrets_ = {"Ray token": cluster.state["token"], "database password": cluster.state["pg_password"]}
    client = MlflowClient(cluster.uri)
    texts = {"job logs": faulted_sweep["logs"] + smoke_job.stdout + smoke_job.stderr, "worker logs": _worker_logs(cluster)}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            texts[f"run {run.info.run_name}"] = json.dumps([run.data.params, run.data.tags])
    for log in (cluster.dir / "logs").glob("*.log"):
        texts[log.name] = log.read_text(errors="replace")
    for path in (cluster.dir / "mlflow-artifacts").rglob("*"):
        if path.is_file() and path.suffix in (".html", ".txt", ".json", ".yaml", ".md", ".csv"):
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 10
    leaks = [f"{what} in {where}" for where, text in texts.items() for what, value in secrets_.items() if value in text]
    assert leaks == []


def test_after_the_head_dies_the_same_submission_resumes_on_a_new_head(cluster):
    """The head SIGKILLed mid-sweep takes its job and, with it, every trial; MLflow and the shared storage stay.

    A new head on the same ports (and its workers), then the same `ray job submit`: the sweep
    resumes from Tune's state on the shared storage, finished trials are not run again, the
    unfinished ones go on from their checkpoints, in the same MLflow runs.
    """
    steps = 8000
    args = [*SMOKE, "--name", "head-dies", "--steps", str(steps), "--eval-every", "500", "--no-report"]
    first = cluster.ray("job", "submit", "--no-wait", "--working-dir", ".", "--", *args, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    client = MlflowClient(cluster.uri)
    deadline = time.time() + 400
    while time.time() < deadline:  # the first two trials finished, the next two well under way
        try:
            _, kids = cluster.sweep("head-dies")
        except (AssertionError, AttributeError):
            kids = []
        done = [k for k in kids if k.data.tags.get("status") == "finished"]
        going = [k for k in kids if k.data.tags.get("status") == "running"
                 and 1000 <= max(_steps(client, k.info.run_id), default=0) <= steps // 2]
        if len(done) == 2 and going:
            break
        time.sleep(1)
    else:
        pytest.fail("no moment with a finished and a running trial")
    finished_before = {k.info.run_id: k.info.end_time for k in done}
    _cluster_cli(cluster, "stop", "ray-head", "--kill")
    for worker in ("ray-worker-1", "ray-worker-2"):  # they would wait a minute for the lost head, then exit
        _cluster_cli(cluster, "stop", worker, "--kill")
    parent, kids = cluster.sweep("head-dies")
    assert parent.info.status == "RUNNING" and len(kids) >= 2  # MLflow survived; nobody could close the runs
    for name in ("ray-head", "ray-worker-1", "ray-worker-2"):
        _cluster_cli(cluster, "start", name)

    again = cluster.submit(*args)  # the same command, against the same addresses
    out = again.stdout + again.stderr
    keep_artifact_text(out, "cluster_head_dies_resume.txt")
    assert again.returncode == 0, out[-4000:]
    assert "resuming sweep" in out
    parent, kids = cluster.sweep("head-dies")
    assert parent.info.status == "FINISHED"
    keys = [k.data.tags["rcgm.trial_key"] for k in kids]
    assert len(keys) == 4 == len(set(keys))  # one run per cell
    assert all(k.data.tags["status"] == "finished" and k.data.metrics["final_step"] == steps for k in kids)
    by_id = {k.info.run_id: k for k in kids}
    assert all(by_id[run_id].info.end_time == end for run_id, end in finished_before.items())  # not run again
    resumed = {k.info.run_name: k.data.metrics.get("resumed_from_step") for k in kids}
    assert all(resumed[k.info.run_name] >= 1000 for k in going), resumed  # went on from a checkpoint, not from 0
    for kid in kids:  # every evaluation once: none lost, none logged twice by steps trained again
        assert _steps(client, kid.info.run_id) == list(range(500, steps + 1, 500)), kid.info.run_name
