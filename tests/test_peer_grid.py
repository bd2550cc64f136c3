"""The main job's objective axis: --objectives cells and names, and the dashboards' (objective, order) rows."""

import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

from dashboards.cells import build_grid, row_label  # noqa: E402
from dashboards.heatmaps import heatmap_figure  # noqa: E402
from dashboards.ordering import check_ordering  # noqa: E402
from sweeps import kappa_by_order  # noqa: E402
from sweeps.spaces import cell_key, grid_cells  # noqa: E402
from sweeps.summary import grid_table  # noqa: E402

PEERS = ("meanflow", "shortcut", "consistency")


def plan(*argv):
    return kappa_by_order.plan_from_args(kappa_by_order.parse_args(list(argv)))


def test_first_order_size_runs_rcgm_orders_and_each_peer_at_order_one():
    p = plan("--size", "first_order")
    assert p.name == "moons-first_order"
    rcgm = [c for c in p.cells if "objective" not in c]
    peers = [c for c in p.cells if "objective" in c]
    assert len(rcgm) == 2 * 4 * 3 and len(peers) == 3 * 4 * 3
    assert {c["order"] for c in peers} == {1} and {c["objective"] for c in peers} == set(PEERS)
    keys = [cell_key(c) for c in p.cells]
    assert len(set(keys)) == len(keys)
    assert "meanflow-k0.999-s2" in keys and "N1-k0.999-s2" in keys
    assert p.settings["objectives"] == "rcgm,meanflow,shortcut,consistency"
    configs = [p.cell_config(c) for c in peers]
    assert {(c.objective, c.order) for c in configs} == {(o, 1) for o in PEERS}


def test_rcgm_alone_keeps_the_cells_names_and_settings_of_older_sweeps():
    p = plan()
    assert "objectives" not in p.settings and p.name == "moons-default"
    assert all("objective" not in c for c in p.cells)
    assert grid_cells((0, 2), (0.0, 0.9), (0,)) == [
        {"order": 0, "kappa": 0.0, "seed": 0}, {"order": 2, "kappa": 0.0, "seed": 0}, {"order": 2, "kappa": 0.9, "seed": 0}]
    assert cell_key({"order": 2, "kappa": 0.9, "seed": 1}) == "N2-k0.9-s1"


def test_peers_on_another_size_get_a_sweep_name_of_their_own():
    p = plan("--objectives", "shortcut,consistency", "--kappas", "0.9,0.999", "--seeds", "1")
    assert p.name == "moons-default-shortcut+consistency"
    assert [cell_key(c) for c in p.cells] == ["shortcut-k0.9-s0", "shortcut-k0.999-s0",
                                              "consistency-k0.9-s0", "consistency-k0.999-s0"]


@pytest.mark.parametrize("flags,needle", [
    (["--objectives", "meanflow,bogus"], "--objectives"),
    (["--objectives", "meanflow,meanflow"], "--objectives"),
    (["--objectives", "meanflow", "--orders", "2"], "--orders"),
    (["--objectives", "rcgm,meanflow", "--workers", "2"], "--workers"),
])
def test_bad_objective_flags_are_refused_before_anything_starts(flags, needle, capsys, tmp_path):
    code = kappa_by_order.main([*flags, "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                                "--storage-path", str(tmp_path / "ray")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.db").exists()


def _table():
    rows = [("rcgm", 1, 0.9, 0.004), ("rcgm", 1, 0.999, 0.03), ("rcgm", 2, 0.9, 0.004), ("rcgm", 2, 0.999, 0.004),
            ("meanflow", 1, 0.9, 0.005), ("meanflow", 1, 0.999, 0.05), ("shortcut", 1, 0.9, 0.006),
            ("shortcut", 1, 0.999, 0.006)]
    rows = [r for r in rows for _ in range(2)]  # two seeds, equal values
    return pa.table({
        "run_id": [f"r{i}" for i in range(len(rows))], "status": ["finished"] * len(rows),
        "params.objective": [r[0] for r in rows], "params.order": pa.array([r[1] for r in rows], pa.int64()),
        "params.kappa": [r[2] for r in rows], "params.seed": [i % 2 for i in range(len(rows))],
        "final.mmd2_1nfe": [r[3] for r in rows]})


def test_heatmap_rows_are_rcgm_orders_then_peers():
    table = _table()
    grid = build_grid(table, "final.mmd2_1nfe")
    assert grid.rows == [("rcgm", 1), ("rcgm", 2), ("meanflow", 1), ("shortcut", 1)]
    assert grid.orders == [1, 2] and grid.pooled_params == []
    assert grid.cell(1, 0.999).mean == pytest.approx(0.03)
    assert grid.cell(1, 0.999, "meanflow").mean == pytest.approx(0.05)
    assert [row_label(r) for r in grid.rows] == ["N=1", "N=2", "meanflow (N=1)", "shortcut (N=1)"]
    fig = heatmap_figure(table, "mmd2", [1])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["N=1", "N=2", "meanflow (N=1)", "shortcut (N=1)"]


def test_ordering_says_which_peer_breaks_at_the_high_kappa():
    check = check_ordering(_table())
    assert check.verdict == "reproduced"  # the peers do not change the verdict on RCGM's claims
    meanflow = next(r for r in check.reasons if r.startswith("meanflow"))
    shortcut = next(r for r in check.reasons if r.startswith("shortcut"))
    assert ": yes" in meanflow and "10x" in meanflow
    assert ": unknown" in shortcut  # equal within the seeds' spread


def test_closing_table_lists_peers_after_the_orders():
    lines = grid_table("mmd2_1nfe", [(("rcgm", 2), 0.9, 0.01, "finished"), (("meanflow", 1), 0.9, 0.02, "finished"),
                                     (("rcgm", 1), 0.9, 0.03, "finished")])
    assert [line.split()[0] for line in lines[2:]] == ["N=1", "N=2", "meanflow"]


@pytest.mark.slow
def test_peer_sweep_end_to_end(tmp_path):
    """Every objective through real Ray Tune and a real SQLite store: child runs, closing table, report rows."""
    from mlflow.tracking import MlflowClient

    from conftest import run_cli

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli(["sweeps/kappa_by_order.py", "--objectives", "rcgm,meanflow,shortcut,consistency", "--orders", "1",
                    "--kappas", "0.9,0.999", "--seeds", "1", "--steps", "100", "--eval-every", "50", "--eval-samples", "200",
                    "--name", "peers", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")],
                   timeout=900, env={"RCGM_RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = proc.stdout[proc.stdout.index("mmd2_1nfe (final"):].splitlines()
    assert [line.split()[0] for line in table[2:6]] == ["N=1", "meanflow", "shortcut", "consistency"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kappa_by_order")
    kids = client.search_runs([exp.experiment_id], "tags.`rcgm.kind` = 'trial'")
    got = {(k.data.params["objective"], k.data.params["order"], k.data.tags["status"]) for k in kids}
    assert got == {(o, "1", "finished") for o in ("rcgm", *PEERS)} and len(kids) == 8
    assert all(k.data.metrics["final_step"] == 100 for k in kids)
    html = (tmp_path / "runs" / "reports" / "peers" / "report.html").read_text()
    assert "meanflow (first order) worse at" in html and ">shortcut<" in html
