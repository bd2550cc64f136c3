"""Test-wide setup: tools keep their state under .test-state/, never in $HOME or runs/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE = REPO_ROOT / ".test-state"
ARTIFACTS = STATE / "artifacts"

# Set before any test imports ray/mlflow/matplotlib, so subprocesses inherit them too.
STATE.mkdir(exist_ok=True)
ARTIFACTS.mkdir(exist_ok=True)
# One runs folder per pytest-xdist worker (`make test` runs two): sweeps of the same name in two
# test files must not share a Tune experiment folder. The cache is shared: its writes are atomic.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
os.environ.setdefault("RCGM_RUNS_DIR", str(STATE / (f"runs-{WORKER}" if WORKER else "runs")))
os.environ.setdefault("RCGM_CACHE_DIR", str(STATE / "cache"))
os.environ.setdefault("MPLCONFIGDIR", str(STATE / "mpl"))
os.environ.setdefault("TORCH_HOME", str(STATE / "torch"))
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
os.environ["PYTHONUNBUFFERED"] = "1"


@pytest.fixture(autouse=True)
def _environment_kept():
    """Undo what a test's in-process entry point exported (MLFLOW_TRACKING_URI, RAY_AIR_NEW_OUTPUT, ...).

    Later tests start subprocesses that inherit os.environ: a leaked tracking URI sent a search's
    runs to another test's store, a leaked quiet-output switch hid Tune's tables from --verbose.
    """
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("RCGM_STORAGE_PATH", None)
# Ray's unix sockets live under RAY_TMPDIR and must stay short (108-byte path limit).
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rcgm-ray-", dir="/tmp"))

PYTHON = sys.executable


@pytest.fixture
def sqlite_uri(tmp_path) -> str:
    """A fresh MLflow SQLite store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one module's in-process trial tests (2 CPUs, like the machine); shut down after it."""
    from trainables.ray_setup import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def run_cli(args: list[str], timeout: float = 600, env: dict | None = None, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    """Run a project command as a user would, capturing its output."""
    return subprocess.run([PYTHON, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def keep_artifact(path, name: str) -> Path:
    """Copy a file a test produced to .test-state/artifacts for people to look at."""
    dest = ARTIFACTS / name
    shutil.copyfile(path, dest)
    return dest


def keep_artifact_text(text: str, name: str) -> Path:
    """Write text a test produced (a console, a log) to .test-state/artifacts for people to look at."""
    dest = ARTIFACTS / name
    dest.write_text(text)
    return dest
