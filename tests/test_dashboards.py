"""Dashboards against a real SQLite MLflow store (and an `mlflow server` over it): no mocks."""

from __future__ import annotations

import base64
import html as html_text
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl_dash_"))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import dashboards_fixtures as F  # noqa: E402
from dashboards import report as R  # noqa: E402
from dashboards.cells import build_grid  # noqa: E402
from dashboards import columns as C  # noqa: E402
from dashboards.collect import collect, collect_history, write_parquet  # noqa: E402
from dashboards.cost_panel import (NO_COST_NOTE, cost_cells, cost_figure, cost_rows,  # noqa: E402
                                   setup_text)
from dashboards.curves import curve_figure, mean_curves  # noqa: E402
from dashboards.errors import (ExperimentNotFound, MissingMetricsWarning, NoTrialRuns,  # noqa: E402
                               SweepNotFound, TrackingStoreNotFound)
from dashboards.figures import panels, save  # noqa: E402
from dashboards.heatmaps import family_grids, heatmap_figure, log_norm  # noqa: E402
from dashboards.optuna_views import (build_study, history_figure, importance_figure,  # noqa: E402
                                     importances, objective_column, parallel_figure)
from dashboards.ordering import NOT_ENOUGH, NOT_REPRODUCED, REPRODUCED, check_ordering  # noqa: E402
from dashboards.paper_panel import our_moons_cells, paper_figure  # noqa: E402
from dashboards.paper_values import IMAGENET_FID_1NFE, MOONS_MMD, imagenet_cell  # noqa: E402

pytestmark = pytest.mark.slow  # a real MLflow store (and server) behind every report

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return F.cached_store(tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(store, tmp_path_factory):
    """Start `mlflow server` on a copy of the store first thing, so it boots while tests run."""
    root = tmp_path_factory.mktemp("server")
    db = root / "server.db"
    shutil.copy(store.db, db)
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield {"proc": proc, "uri": f"http://127.0.0.1:{port}", "log": root / "server.log"}
    # SIGKILL the whole group (server and its worker): a graceful stop costs seconds per run.
    os.killpg(proc.pid, 9)
    proc.wait(timeout=15)
    log.close()


@pytest.fixture(scope="module")
def main(store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)
        return collect(store.uri, F.EXPERIMENT, sweeps=[F.MAIN])


@pytest.fixture(scope="module")
def everything(store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)
        return collect(store.uri, F.EXPERIMENT)


def _sweep(col, name):
    return col.table.filter(pc.equal(col.table.column("sweep"), name))


def _row(table, name):
    return next(r for r in table.to_pylist() if r["run_name"] == name)


# ---------------------------------------------------------------- collection


def test_rows_types_and_parquet_round_trip(main, store, tmp_path):
    t = main.table
    assert t.num_rows == len(F.MAIN_GRID)
    types = {f.name: f.type for f in t.schema}
    assert types["params.order"] == pa.int64() and types["params.seed"] == pa.int64()
    assert types["params.kappa"] == pa.float64() and types["params.lr"] == pa.float64()
    assert types["params.task"] == pa.string() and types["git_dirty"] == pa.bool_()
    assert types["final.mmd2_1nfe"] == pa.float64() and types["final_step"] == pa.int64()
    assert pa.types.is_timestamp(types["start_time"])
    diverged = _row(t, F.run_name(1, 0.99, 1))
    assert diverged["status"] == "diverged" and diverged["final.mmd2_1nfe"] == 5.0
    assert diverged["parent_run_id"] == store.parents[F.MAIN] and diverged["sweep"] == F.MAIN
    assert diverged["search"] == "grid" and diverged["git_commit"] == "abc1234"
    assert diverged["git_dirty"] is False and diverged["final_step"] == 300
    assert diverged["run_id"] == store.runs[(F.MAIN, F.run_name(1, 0.99, 1))]
    assert diverged["best.mmd2_2nfe"] == pytest.approx(0.02 * 0.8)
    assert diverged["noise.mmd2"] == F.NOISE_MMD2 and diverged["definition.mmd2"].startswith("MMD")
    failed = _row(t, F.run_name(2, 0.999, 1))
    assert failed["mlflow_status"] == "FAILED" and failed["final.mmd2_1nfe"] is None
    assert failed["wall_time_s"] == pytest.approx(60.0)  # from start/end: it never logged one
    path = write_parquet(t, tmp_path / "out")
    assert pq.read_table(path).equals(t)


def test_paging_reads_every_page(everything, store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)
        small = collect(store.uri, F.EXPERIMENT, page_size=3)
    assert small.pages > 8 and everything.pages == 2
    assert small.table.num_rows == len(F.MAIN_GRID) + len(F.OLD_GRID) + len(F.OPTUNA_LRS)
    assert small.table.equals(everything.table)


def test_missing_metrics_warning_names_runs(store):
    with pytest.warns(MissingMetricsWarning) as caught:
        col = collect(store.uri, F.EXPERIMENT, sweeps=[F.MAIN])
    text = str(caught[0].message)
    assert "2 trial run(s)" in text
    assert f"{F.run_name(*F.FORGETFUL)} " in text and "best.mmd2_2nfe" in text
    assert f"{F.run_name(2, 0.999, 1)} " in text and "status failed" in text
    assert set(col.missing) == {store.runs[(F.MAIN, F.run_name(*F.FORGETFUL))],
                                store.runs[(F.MAIN, F.run_name(2, 0.999, 1))]}


def test_cost_columns_read_from_runs(main, everything, store):
    types = {f.name: f.type for f in everything.table.schema}
    assert all(types[m] == pa.float64() for m in C.COST_METRICS)
    assert all(types[t] == pa.string() for t in C.COST_TAGS)
    assert not [c for c in types if c.startswith("metrics.cost_")]  # not read twice
    row = _row(main.table, F.run_name(2, 0.99, 1))
    # The last evaluation's values, not an earlier step's (total compute grows with the steps).
    assert row["cost_total_flops"] == pytest.approx(F.FORWARD_FLOPS * 5 * F.STEPS[-1])
    assert row["cost_flops_per_step"] == F.FORWARD_FLOPS * 5
    assert row["cost_forward_equivalents"] == 5
    assert row["cost_steps_per_s"] == F.steps_per_s(1)
    assert row["cost_samples_per_s"] == F.steps_per_s(1) * F.BATCH
    assert row["cost_saved_activations_mb"] == F.saved_activations_mb(2)
    assert row["cost_mfu"] is None and row["cost_peak_memory_mb"] is None  # CPU
    assert (row["precision"], row["attention"], row["compile"], row["device"]) == (
        "fp32", "none", "false", "cpu")
    gpu = _row(_sweep(everything, F.OPTUNA), "optuna_0")
    assert gpu["cost_mfu"] == pytest.approx(F.FORWARD_FLOPS * 5 * 50.0 / 1e12 / F.PEAK_TFLOPS)
    assert gpu["cost_peak_memory_mb"] == 1100.0 and gpu["device"] == "NVIDIA H200"
    old = _sweep(everything, F.OLD)  # made before issue 14: null, and not "missing"
    assert all(old.column(c).null_count == old.num_rows for c, _ in C.COST_FIELDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingMetricsWarning)
        assert collect(store.uri, F.EXPERIMENT, sweeps=[F.OLD]).missing == {}
    assert not [c for cols in main.missing.values() for c in cols if "cost" in c]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"experiment": "nope"}, ExperimentNotFound, r"known experiments: .*kappa_by_order"),
    ({"sweeps": ["nope"]}, SweepNotFound, r"no sweep named 'nope'.*known sweeps: .*kappa_grid"),
    ({"sweeps": [F.EMPTY]}, NoTrialRuns, r"'empty_sweep'.*has no trial runs yet"),
    ({"experiment": "nothing_here"}, NoTrialRuns, r"'nothing_here' has no trial runs"),
    ({"parent_run_ids": ["0" * 32]}, SweepNotFound, r"no MLflow run with id '0+'"),
])
def test_clear_errors(store, kwargs, error, message):
    args = {"experiment": F.EXPERIMENT, **kwargs}
    with pytest.raises(error, match=message):
        collect(store.uri, **args)


def test_missing_sqlite_file_is_refused_not_created(tmp_path):
    db = tmp_path / "absent.db"
    with pytest.raises(TrackingStoreNotFound, match="no MLflow database at"):
        collect(f"sqlite:///{db}", F.EXPERIMENT)
    assert not db.exists()


# ---------------------------------------------------------------- cells and heatmaps


def test_cells_match_hand_computed_values(main):
    grid = build_grid(main.table, "final.mmd2_1nfe")
    assert grid.orders == [1, 2] and grid.kappas == [0.0, 0.99, 0.999]
    c = grid.cell(1, 0.0)
    assert (c.n, c.mean) == (2, pytest.approx(0.007))
    assert c.std == pytest.approx(statistics.stdev([0.006, 0.008]))
    c = grid.cell(2, 0.99)
    assert c.mean == pytest.approx(0.005) and c.std == pytest.approx(statistics.stdev([0.004, 0.006]))
    diverged = grid.cell(1, 0.99)  # the diverged seed's 5.0 must not reach the mean
    assert (diverged.n, diverged.mean) == (1, pytest.approx(0.010))
    assert diverged.excluded == {"diverged": 1} and "1 diverged" in diverged.label()
    collapsed = grid.cell(1, 0.999)
    assert collapsed.all_unhealthy and collapsed.label() == "collapsed (2/2)"
    assert math.isnan(collapsed.mean)
    failed = grid.cell(2, 0.999)
    assert (failed.n, failed.mean) == (1, pytest.approx(0.003)) and "1 failed" in failed.label()
    forgetful = build_grid(main.table, "best.mmd2_2nfe").cell(1, 0.0)
    assert forgetful.no_value == 1 and "1 no value" in forgetful.label()


def test_kappa_free_order_as_one_row_or_per_column(everything):
    smoke = build_grid(_sweep(everything, F.OLD), "final.mmd2_1nfe")
    assert smoke.merged_orders == {0} and smoke.orders == [0, 1, 2]
    assert smoke.cell(0, 0.0) is smoke.cell(0, 0.999)
    assert smoke.cell(0, 0.0).mean == pytest.approx(0.012)
    fig = heatmap_figure(_sweep(everything, F.OLD), "mmd2", [1])
    labels = [t.get_text() for t in panels(fig)[0].get_yticklabels()]
    assert labels[0] == "N=0 (any \u03ba)"
    per_column = pa.table({
        "run_id": ["a", "b", "c", "d"], "status": ["finished"] * 4,
        "params.order": pa.array([0, 0, 1, 1], pa.int64()),
        "params.kappa": [0.0, 0.999, 0.0, 0.999], "final.x_1nfe": [1.0, 2.0, 3.0, 4.0]})
    grid = build_grid(per_column, "final.x_1nfe")
    assert grid.merged_orders == set()
    assert grid.cell(0, 0.0).mean == 1.0 and grid.cell(0, 0.999).mean == 2.0


def test_heatmap_panels_hatching_and_png(main, tmp_path):
    fig = heatmap_figure(main.table, "mmd2", [1, 2])
    axes = panels(fig)
    assert len(axes) == 4  # final and best x NFE 1 and 2
    assert [a.get_title() for a in axes] == ["final mmd2_1nfe", "final mmd2_2nfe",
                                             "best mmd2_1nfe", "best mmd2_2nfe"]
    texts = [t.get_text() for t in axes[0].texts]
    assert "collapsed (2/2)" in texts and any(t.startswith("0.007\n\u00b10.0014 n=2") for t in texts)
    hatched = [p for p in axes[0].patches if p.get_hatch()]
    assert len(hatched) == 1
    path = save(fig, tmp_path / "h.png")
    pixels = imread(path)
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 700 and path.stat().st_size > 20_000


def test_log_scale_keeps_a_100x_worse_cell_readable():
    t = pa.table({"run_id": list("abc"), "status": ["finished"] * 3,
                  "params.order": pa.array([1, 1, 2], pa.int64()),
                  "params.kappa": [0.0, 0.999, 0.0], "final.m_1nfe": [0.001, 0.1, 0.002],
                  "best.m_1nfe": [0.001, 0.1, 0.002]})
    norm = log_norm(list(family_grids(t, "m", [1]).values()))
    assert norm.vmin == pytest.approx(0.001) and norm.vmax == pytest.approx(0.1)
    assert norm(0.002) - norm(0.001) == pytest.approx(0.5 * math.log10(2), rel=1e-6)


# ---------------------------------------------------------------- paper, ordering, curves


def test_paper_values_and_panel(main):
    assert [v.value for v in MOONS_MMD] == [0.0066, 0.2131, 0.0035]
    assert imagenet_cell(1, 0.0).text == "diverges" and imagenet_cell(1, 0.999).value == 294.18
    assert imagenet_cell(1, 0.99).text == "stable but poor" and len(IMAGENET_FID_1NFE) == 8
    low, high1, high2 = our_moons_cells(main.table, "final.mmd2_1nfe")
    assert low.mean == pytest.approx(0.007) and high1.all_unhealthy
    assert high2.mean == pytest.approx(0.003)
    assert len(panels(paper_figure(main.table))) == 2


def test_ordering_verdicts(main, everything):
    got = check_ordering(main.table)
    assert got.verdict == REPRODUCED and got.column == "final.mmd2_1nfe"
    assert "collapsed (2/2)" in got.reasons[0]
    assert check_ordering(_sweep(everything, F.OLD)).verdict == REPRODUCED
    assert check_ordering(_sweep(everything, F.OPTUNA)).verdict == NOT_ENOUGH
    flipped = pa.table({"run_id": list("abcd"), "status": ["finished"] * 4,
                        "params.order": pa.array([1, 1, 2, 2], pa.int64()),
                        "params.kappa": [0.0, 0.999, 0.0, 0.999],
                        "final.mmd2_1nfe": [0.02, 0.005, 0.02, 0.01]})
    assert check_ordering(flipped).verdict == NOT_REPRODUCED
    no_high = flipped.filter(pc.less(flipped.column("params.kappa"), 0.5))
    assert check_ordering(no_high).verdict == NOT_ENOUGH


def test_curves_mean_over_seeds(main, store):
    history = collect_history(store.uri, main.table)
    means = mean_curves(main.table, history, "mmd2_1nfe")
    steps, values = means[(("rcgm", 1), 0.999)]
    assert steps == list(F.STEPS)
    assert values == pytest.approx([0.05, 0.01, 0.08, (0.20 + 0.25) / 2])
    assert means[(("rcgm", 2), 0.999)][1][-1] == pytest.approx(0.003)  # the failed seed logged none
    fig = curve_figure(main.table, history, "mmd2_1nfe")
    axes = panels(fig)
    assert len(axes) == 2
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [
        "\u03ba=0", "\u03ba=0.99", "\u03ba=0.999"]


def test_cost_cells_figure_and_rows(main, everything):
    cells = cost_cells(main.table, "final.mmd2_1nfe")
    assert [c.name for c in cells] == ["N=1 \u03ba=0", "N=1 \u03ba=0.99", "N=1 \u03ba=0.999",
                                       "N=2 \u03ba=0", "N=2 \u03ba=0.99", "N=2 \u03ba=0.999"]
    assert [c.left_out() for c in cells] == [None, None, "collapsed (2/2)", None, None, None]
    assert cells[1].mean("cost_steps_per_s") == F.steps_per_s(0)  # the diverged seed left out
    assert cells[0].mean("cost_steps_per_s") == statistics.mean([F.steps_per_s(0),
                                                                 F.steps_per_s(1)])
    fig = cost_figure(cells, "final.mmd2_1nfe", setup_text(main.table))
    ax, = panels(fig)
    points = {a.get_text(): a.xy for a in ax.texts}
    assert set(points) == {c.name for c in cells if c.left_out() is None}
    assert points["N=2 \u03ba=0.999"] == pytest.approx((F.FORWARD_FLOPS * 5 * F.STEPS[-1], 0.003))
    assert points["N=1 \u03ba=0"] == pytest.approx((F.FORWARD_FLOPS * 4 * F.STEPS[-1], 0.007))
    assert sum(bars.has_yerr for bars in ax.containers) == 3  # the cells with n >= 2
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    title = fig.get_suptitle()
    assert "final.mmd2_1nfe" in title and "device: cpu" in title and "precision: fp32" in title
    rows = cost_rows(cells)
    assert rows[0]["MFU %"] == "n/a (CPU)" and rows[0]["memory measured"].startswith("saved")
    assert rows[0]["memory MiB"] == F.saved_activations_mb(1)
    assert rows[2]["GFLOP / step"] is None and rows[2]["left out"] == "2 collapsed"
    gpu, = cost_rows(cost_cells(_sweep(everything, F.OPTUNA), "final.mmd2_1nfe"))
    assert gpu["MFU %"] == pytest.approx(100 * F.FORWARD_FLOPS * 5 * 50.0 / 1e12 / F.PEAK_TFLOPS)
    assert (gpu["memory MiB"], gpu["memory measured"]) == (1100.0, "CUDA peak allocated")
    assert (gpu["n"], gpu["left out"], gpu["precision"]) == (7, "1 collapsed", "bf16")


def test_optuna_study_from_table(everything, store):
    table = _sweep(everything, F.OPTUNA)
    parent = next(p for p in everything.parents if p.sweep == F.OPTUNA)
    column, direction = objective_column(table, parent.tags)
    assert (column, direction) == ("final.mmd2_1nfe", "minimize")
    study = build_study(table, column, direction)
    assert len(study.trials) == 8 and sum(t.value is None for t in study.trials) == 1
    assert study.best_trial.params["lr"] == pytest.approx(1e-3)
    assert study.best_value == pytest.approx(F.optuna_value(1e-3, 1.0))
    result, note = importances(study)
    assert note is None and next(iter(result)) == "lr"
    assert set(result) == {"lr", "time_schedule.a", "placement"}
    assert sum(result.values()) == pytest.approx(1.0)
    for fig in (history_figure(study, column), parallel_figure(study, column),
                importance_figure(result, note)):
        assert len(panels(fig)) == 1


def test_optuna_views_show_order_as_integers_and_kappa_as_one_minus_kappa():
    from optuna.distributions import IntDistribution
    from dashboards.optuna_views import params_text

    # An order_kappa search's table (sweeps/spaces.py): order and kappa vary, the seed does not count.
    kappas, orders = [0.5, 0.9, 0.99, 0.999, 0.9999, 0.95], [1, 2, 6, 4, 5, 3]
    table = pa.table({"run_id": [f"run{i}" for i in range(6)], "status": ["finished"] * 6,
                      "params.order": pa.array(orders, pa.int64()), "params.kappa": kappas, "params.seed": [0, 1] * 3,
                      "final.mmd2_1nfe": [0.05, 0.02, 0.01, 0.004, 0.03, 0.02]})
    study = build_study(table, "final.mmd2_1nfe")
    dists = study.trials[0].distributions
    assert set(dists) == {"order", "1 - kappa"}
    assert dists["order"] == IntDistribution(1, 6)
    gap = dists["1 - kappa"]
    assert gap.log and gap.low == pytest.approx(1e-4) and gap.high == pytest.approx(0.5)
    assert [t.params["1 - kappa"] for t in study.trials] == pytest.approx([1 - k for k in kappas])
    assert params_text(study.best_trial.params) == "order=4, 1 - kappa=0.001 (kappa 0.999)"
    ax, = panels(parallel_figure(study, "final.mmd2_1nfe"))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 - kappa\n(log scale)", "order\n(integer)", "final.mmd2_1nfe"]
    marks = {t.get_text() for t in ax.texts}
    assert {"1", "2", "3", "4", "5", "6"} <= marks  # every order labelled on its axis
    assert {"0.0001", "0.001", "0.01", "0.1", "0.5"} <= marks  # the decades of 1 - kappa


# ---------------------------------------------------------------- report and CLI


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)
        return R.build_report(store.uri, F.EXPERIMENT, sweep=F.MAIN, out_dir=out)


def test_report_html_is_self_contained_with_numbers(report):
    html = report.read_text()
    pngs = sorted(p.name for p in report.parent.glob("*.png"))
    assert pngs == ["cost.png", "curve_mmd2_1nfe.png", "curve_mmd2_2nfe.png", "heatmap_mmd2.png",
                    "paper_values.png"]
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(pngs)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "href=" not in html
    assert "0.007 \u00b1 0.00141 (n=2)" in html and "collapsed (2/2)" in html
    assert "Paper's ordering: reproduced</b>" in html and "does not state its MMD definition" in html
    assert (report.parent / "trials.parquet").exists() and (report.parent / "history.parquet").exists()


COST_HEADING = "<h3>Cost: quality against compute</h3>"


def _cost_table(html: str) -> list[dict[str, str]]:
    """The cost panel's table from the page: one {column: cell text} per row."""
    section = html.split(COST_HEADING, 1)[1]
    rows = re.findall(r"<tr>(.*?)</tr>", re.search(r"<table>(.*?)</table>", section).group(1))
    head = re.findall(r"<th>(.*?)</th>", rows[0])
    return [dict(zip(head, (html_text.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r))))
            for r in rows[1:]]


def test_report_has_cost_panel(report):
    html = report.read_text()
    assert html.index(html_text.escape("The paper's values")) < html.index(COST_HEADING) \
        < html.index("During training")
    path = report.parent / "cost.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert imread(path).shape[:2] == (500, 800)
    assert "Not in the figure: N=1 \u03ba=0.999: collapsed (2/2)" in html
    assert "torch.utils.flop_counter" in html
    rows = _cost_table(html)
    assert [(r["N"], r["kappa"]) for r in rows] == [
        ("1", "0"), ("1", "0.99"), ("1", "0.999"), ("2", "0"), ("2", "0.99"), ("2", "0.999")]
    for row in rows:
        if row["left out"] == "2 collapsed":
            assert row["GFLOP / step"] == row["total PFLOP"] == "\u2013"
            continue
        order = int(row["N"])
        assert float(row["GFLOP / step"]) == pytest.approx(F.FORWARD_FLOPS * (3 + order) / 1e9)
        assert float(row["total PFLOP"]) == pytest.approx(
            F.FORWARD_FLOPS * (3 + order) * F.STEPS[-1] / 1e15)
        assert float(row["forward equivalents"]) == 3 + order
        assert row["MFU %"] == "n/a (CPU)" and row["device"] == "cpu"


def test_report_without_cost_metrics_has_the_note(store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingMetricsWarning)  # no cost metric counts as missing
        path = R.build_report(store.uri, F.EXPERIMENT, sweep=F.OLD, out_dir=tmp_path,
                              log_to_parent=False)
    html = path.read_text()
    assert html_text.escape(NO_COST_NOTE) in html and COST_HEADING not in html
    assert not (tmp_path / "cost.png").exists() and (tmp_path / "heatmap_mmd2.png").exists()
    assert "During training" in html


def test_report_logged_to_parent_run(report, store):
    client = MlflowClient(tracking_uri=store.uri)
    names = {Path(a.path).name for a in client.list_artifacts(store.parents[F.MAIN], "report")}
    assert {"report.html", "trials.parquet", "history.parquet", "heatmap_mmd2.png"} <= names
    assert client.list_artifacts(store.parents[F.OLD], "report") == []


def test_experiment_report_has_each_sweep_and_optuna_views(store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)
        path = R.build_report(store.uri, F.EXPERIMENT, out_dir=tmp_path)
    html = path.read_text()
    for name in (F.MAIN, F.OLD, F.OPTUNA):
        assert f"Sweep {name}" in html
    assert (tmp_path / "moons_optuna_optuna_importance.png").exists()
    assert (tmp_path / "kappa_grid_cost.png").exists()
    assert (tmp_path / "moons_optuna_cost.png").exists()
    assert html.count(COST_HEADING) == 2 and html.count(html_text.escape(NO_COST_NOTE)) == 1
    assert "cells pool trials that differ in lr" in html  # the Optuna cost cell pools its search
    assert html.count("data:image/png;base64,") == len(list(tmp_path.glob("*.png")))
    assert "objective: final.mmd2_1nfe (minimize)" in html
    client = MlflowClient(tracking_uri=store.uri)  # a whole-experiment report is not logged
    assert client.list_artifacts(store.parents[F.OPTUNA], "report") == []


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dashboards.report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_exit_codes(store, tmp_path, capsys):
    # One real interpreter proves the process exit status; the rest call the same main().
    bad = _cli("--experiment", F.EXPERIMENT, "--sweep", "nope", "--tracking-uri", store.uri)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("error: no sweep named 'nope'")
    capsys.readouterr()
    assert R.main(["--experiment", F.EXPERIMENT, "--sweep", F.OLD, "--tracking-uri", store.uri,
                   "--out", str(tmp_path / "cli"), "--no-log"]) == 0
    assert capsys.readouterr().out.strip() == \
        f"report: {(tmp_path / 'cli' / 'report.html').resolve()}"
    assert R.main(["--experiment", "nope", "--tracking-uri", store.uri]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow experiment named 'nope'")
    assert R.main(["--sweep", F.EMPTY, "--tracking-uri", store.uri]) == 2
    assert R.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2


# Last on purpose: the server boots in the background while the tests above run.
def test_same_table_through_mlflow_server(mlflow_server, main, everything):
    # 180 s: on a loaded 2-core machine (sweeps beside the tests) the server's boot took over 60 s.
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(mlflow_server["uri"] + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        assert mlflow_server["proc"].poll() is None, mlflow_server["log"].read_text()[-2000:]
        assert time.time() < deadline, "mlflow server did not answer /health within 180 s"
        time.sleep(0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMetricsWarning)
        remote = collect(mlflow_server["uri"], F.EXPERIMENT, sweeps=[F.MAIN], page_size=5)
        remote_all = collect(mlflow_server["uri"], F.EXPERIMENT)
    assert remote.table.equals(main.table)
    assert remote_all.table.equals(everything.table)
    assert collect_history(mlflow_server["uri"], remote.table).equals(
        collect_history(main.tracking_uri, main.table))


def test_markdown_tables_trace_to_runs_and_name_unhealthy_cells(store, main, capsys):
    from dashboards.markdown import main as markdown_main, sweep_markdown

    text = sweep_markdown(store.uri, F.EXPERIMENT, [F.MAIN])
    head, *_ = text.splitlines()
    assert all(p.run_id in head for p in main.parents) and "12 trials" in head
    table = text[text.index("| final mmd2_1nfe"):].splitlines()
    assert table[0] == "| final mmd2_1nfe | \u03ba=0 | \u03ba=0.99 | \u03ba=0.999 |"
    n1 = table[2].split(" | ")
    assert n1[0] == "| N=1" and n1[3] == "collapsed (2/2) |"
    assert n1[2] == "0.01 (n=1; 1 diverged)"  # the diverged seed's 5.0 is named, never averaged
    assert "| N=2 | 0.008 ± 0.0014 (n=2) |" in text
    assert "| row | GFLOP / step |" in text
    assert markdown_main(["--sweep", "nope", "--tracking-uri", store.uri]) == 2
    assert capsys.readouterr().err.startswith("error: ")
