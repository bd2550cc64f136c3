"""Headless Chromium renders the report offline: the page is not blank and the heatmap has colour."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl_dash_"))

import numpy as np  # noqa: E402
from matplotlib.image import imread  # noqa: E402

import dashboards_fixtures as F  # noqa: E402
from browser import run_headless  # noqa: E402
from dashboards.errors import MissingMetricsWarning  # noqa: E402
from dashboards.report import build_report  # noqa: E402

pytestmark = pytest.mark.slow  # headless Chromium on a report from a real MLflow store

REPO = Path(__file__).resolve().parents[1]
KEEP = REPO / ".test-state" / "artifacts" / "dashboards_report_screenshot.png"
WIDTH, HEIGHT = 1400, 2400
# Where the first heatmap lands at this window size: below the title, meta lines and banner.
HEATMAP_ROWS, HEATMAP_COLS = slice(450, 1000), slice(40, 1000)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1) - rgb.min(axis=-1)


def test_chromium_renders_report(tmp_path_factory, tmp_path):
    store = F.cached_store(tmp_path_factory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)
        page = build_report(store.uri, F.EXPERIMENT, sweep=F.MAIN, out_dir=tmp_path / "report",
                            log_to_parent=False)
    shot = tmp_path / "shot.png"
    run = run_headless(tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
                       page.resolve().as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    KEEP.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, KEEP)
    rgb = imread(shot)[..., :3]
    assert rgb.shape[:2] == (HEIGHT, WIDTH)
    assert (rgb.min(axis=-1) < 0.9).mean() > 0.10, "the page rendered (nearly) blank"
    assert (_saturation(rgb[:40]) > 0.25).mean() < 0.01, "the title strip should be plain text"
    colourful = (_saturation(rgb[HEATMAP_ROWS, HEATMAP_COLS]) > 0.25).mean()
    assert colourful > 0.2, f"heatmap region has only {colourful:.1%} coloured pixels"
