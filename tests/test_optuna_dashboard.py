"""A real `schedule_search.py --space order_kappa` run: optuna-dashboard serves its study, the report reads it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from browser import run_headless, visible_text
from conftest import PYTHON, keep_artifact_text, run_cli

pytestmark = pytest.mark.slow  # a real Ray search, an optuna-dashboard server, headless Chromium

SWEEP = "order-kappa-dash"
SEARCHED = {"order", "one_minus_kappa", "time_params.a", "time_params.b"}
SAMPLES = 2


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> dict:
    """Two 200-step trials of the order_kappa space, every default location under a temporary runs folder."""
    runs = tmp_path_factory.mktemp("order_kappa") / "runs"
    proc = run_cli(["sweeps/schedule_search.py", "--space", "order_kappa", "--samples", str(SAMPLES), "--steps", "200",
                    "--eval-every", "100", "--eval-samples", "200", "--name", SWEEP, "--no-report"],
                   timeout=600, env={"RCGM_RUNS_DIR": str(runs)})
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    keep_artifact_text(console, "order_kappa_search_console.txt")
    return {"storage": f"sqlite:///{runs / 'optuna.db'}", "tracking_uri": f"sqlite:///{runs / 'mlflow.db'}",
            "console": console}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


@pytest.fixture
def dashboard(search, tmp_path):
    """optuna-dashboard on the search's study database, on a free port of 127.0.0.1; its address. Ended by its pid."""
    port = _free_port()
    log = tmp_path / "dashboard.log"
    # HOME: gunicorn, the server optuna-dashboard picks when installed, keeps a control socket under ~/.gunicorn.
    with open(log, "w") as out:
        server = subprocess.Popen([str(Path(PYTHON).parent / "optuna-dashboard"), search["storage"], "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HOME": str(tmp_path)}, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                _get_json(address + "/api/meta")
                break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None, f"optuna-dashboard exited: {log.read_text()[-2000:]}"
                assert time.time() < deadline, f"optuna-dashboard did not answer in 60 s: {log.read_text()[-2000:]}"
                time.sleep(0.5)
        yield address
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers, nothing else
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_dashboard_serves_the_study(search, dashboard, tmp_path):
    # The search names the exact command that opens its study.
    assert f"optuna-dashboard {search['storage']}" in search["console"]
    studies = _get_json(dashboard + "/api/studies")["study_summaries"]
    ids = [s["study_id"] for s in studies if s["study_name"] == SWEEP]
    assert len(ids) == 1, studies
    study_id = ids[0]
    study = _get_json(f"{dashboard}/api/studies/{study_id}")
    assert study["name"] == SWEEP and len(study["trials"]) == SAMPLES
    for trial in study["trials"]:
        params = {p["name"]: p for p in trial["params"]}
        assert set(params) == SEARCHED
        # Integers 1..6 both ends included (Tune's randint excludes its upper end), 1 - kappa on a log scale.
        assert params["order"]["distribution"] == {"type": "IntDistribution", "low": 1, "high": 6, "step": 1, "log": False}
        assert params["order"]["param_external_pytyp"] == "<class 'int'>"
        gap = params["one_minus_kappa"]["distribution"]
        assert (gap["type"], gap["low"], gap["high"], gap["log"]) == ("FloatDistribution", 1e-4, 0.5, True)

    # The page is a JavaScript app: Chromium runs it (virtual time lets its requests and rendering finish).
    run = run_headless(tmp_path / "profile", "--virtual-time-budget=20000", "--dump-dom",
                       f"{dashboard}/dashboard/studies/{study_id}", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    text = visible_text(run.stdout)
    keep_artifact_text(text, "optuna_dashboard_study_page.txt")
    assert f"{SWEEP} (id={study_id})" in text, text[:2000]
    # The best trial's params, as the page renders them: "Params = [order: 4, one_minus_kappa: 0.0442, ...]".
    best = re.search(r"Params = \[([^\]]*)\]", text)
    assert best, text[:2000]
    assert re.search(r"\border: [1-6]\b", best.group(1)) and "one_minus_kappa: " in best.group(1), best.group(1)


def test_report_reads_the_search(search, tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from dashboards.collect import collect
    from dashboards.errors import MissingMetricsWarning
    from dashboards.optuna_views import build_study, objective_column
    from dashboards.report import build_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)  # ASHA-stopped trials have no best_* metrics
        page = build_report(search["tracking_uri"], "schedule_search", sweep=SWEEP, out_dir=tmp_path / "report",
                            log_to_parent=False)
        col = collect(search["tracking_uri"], "schedule_search", sweeps=[SWEEP])
    assert (page.parent / "optuna_parallel.png").exists()
    # The study the report rebuilds from MLflow holds what Optuna sampled: kappa = 1 - one_minus_kappa.
    study = build_study(col.table, *objective_column(col.table, col.parents[0].tags))
    sampled = optuna.load_study(study_name=SWEEP, storage=search["storage"]).trials
    rebuilt = sorted((t.params["order"], t.params["1 - kappa"]) for t in study.trials)
    expected = sorted((t.params["order"], t.params["one_minus_kappa"]) for t in sampled)
    assert [order for order, _ in rebuilt] == [order for order, _ in expected]
    assert [gap for _, gap in rebuilt] == pytest.approx([gap for _, gap in expected], rel=1e-9)
    dists = study.trials[0].distributions
    assert isinstance(dists["order"], IntDistribution)
    assert isinstance(dists["1 - kappa"], FloatDistribution) and dists["1 - kappa"].log
