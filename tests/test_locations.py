"""Default locations: anchored to the repository (not the working directory), overridable by environment."""

from __future__ import annotations

import subprocess
import sys

from trainables import locations

REPO = locations.REPO_ROOT


def test_defaults_are_anchored_to_the_repo_not_the_cwd(tmp_path, monkeypatch):
    # Ray workers run in per-trial directories: a cwd-relative store or cache would land in each of them.
    for name in ("RCGM_RUNS_DIR", "RCGM_CACHE_DIR", "RCGM_DATA_DIR", "MLFLOW_TRACKING_URI", "RCGM_STORAGE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert locations.runs_dir() == REPO / "runs"
    assert locations.default_tracking_uri() == f"sqlite:///{REPO / 'runs' / 'mlflow.db'}"
    assert locations.default_storage_path() == str(REPO / "runs" / "ray-results")
    assert locations.default_optuna_storage() == f"sqlite:///{REPO / 'runs' / 'optuna.db'}"
    assert locations.reports_dir("moons smoke/1") == REPO / "runs" / "reports" / "moons-smoke-1"
    assert locations.cache_dir() == REPO / "runs" / ".cache"
    assert locations.data_root() == REPO / "runs" / ".cache" / "data"


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("RCGM_RUNS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("RCGM_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("RCGM_DATA_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert locations.default_tracking_uri() == f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}"
    assert locations.data_root() == tmp_path / "c" / "data"
    monkeypatch.setenv("RCGM_STORAGE_PATH", "/shared/ray-results")
    assert locations.default_storage_path() == "/shared/ray-results"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert locations.default_tracking_uri() == "http://127.0.0.1:5000"
    assert locations.mlflow_ui_command("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert locations.mlflow_ui_command("sqlite:////x/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////x/mlflow.db"
    # The model-training view, not 3.17's GenAI overview, for an experiment's page.
    assert locations.mlflow_ui_command("http://h:5000/", "7") == "http://h:5000/#/experiments/7?workflowType=machine_learning"
    assert locations.mlflow_ui_command("sqlite:////x/m.db", "7").endswith("http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning")


def test_the_dashboards_and_the_collector_agree_with_the_sweeps_on_the_store(monkeypatch, tmp_path):
    from dashboards import collect

    monkeypatch.setenv("RCGM_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert collect.default_tracking_uri() == locations.default_tracking_uri()
    assert collect.default_out_dir("a sweep") == locations.reports_dir("a sweep")


def test_locations_and_the_declarations_import_without_torch_or_ray():
    # The dashboards read the setting declarations and the defaults: they must stay light (no torch, no Ray).
    code = ("import sys, trainables.locations, trainables.config, trainables.status, dashboards.report; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow.pytorch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
