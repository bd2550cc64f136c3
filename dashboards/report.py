"""Build the sweep report: parquet + PNGs + one self-contained HTML, logged to the parent run."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from mlflow.exceptions import MlflowException

from dashboards import columns as C
from dashboards import htmlpage as H
from dashboards.cells import build_grid, has_peers, row_sort_key
from dashboards.collect import (PAGE_SIZE, Collection, client_for, collect, collect_history,
                                default_out_dir, default_tracking_uri, write_parquet)
from dashboards.cost_panel import (DEFINITION, NO_COST_NOTE, cost_cells, cost_figure, cost_rows,
                                   has_cost, left_out_note, setup_text)
from dashboards.curves import curve_figure
from dashboards.errors import DashboardError
from dashboards.figures import save
from dashboards.heatmaps import KINDS, heatmap_figure, kind_column, unplaced_note
from dashboards.ordering import check_ordering
from dashboards.paper_panel import paper_figure
from dashboards.paper_values import IMAGENET_NOTE, MMD_CAVEAT, SOURCE
from dashboards.sampler_table import report_blocks as sampler_blocks
from trainables import cost_schema

ARTIFACT_DIR = "report"
TRIAL_COLUMNS = ("run_name", "run_id", "status", "params.objective", "params.order", "params.kappa", "params.seed",
                 "final_step", "wall_time_s", "git_commit", "git_dirty")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _families(table: pa.Table) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for family, nfe in C.metric_columns(table):
        out.setdefault(family, []).append(nfe)
    return out


def _number_rows(table: pa.Table, family: str, nfes: list[int]) -> list[dict]:
    """One row per cell: mean ± std (n) for every kind and NFE, and what was left out."""
    rows: dict[tuple, dict] = {}
    for kind in KINDS:
        for nfe in nfes:
            col = kind_column(kind, family, nfe)
            if col not in table.column_names:
                continue
            grid = build_grid(table, col)
            peers = has_peers(grid.rows)
            for ((objective, order), kappa), cell in grid.cells.items():
                key = (row_sort_key((objective, order)), -1.0 if kappa is None else kappa)
                row = rows.setdefault(key, {
                    **({"objective": objective} if peers else {}),
                    "N": order, "kappa": "any" if kappa is None else f"{kappa:g}",
                    "left out": ", ".join(f"{k} {s}" for s, k in sorted(cell.excluded.items()))})
                name = f"{kind} {C.metric_key(family, nfe)}"
                if cell.all_unhealthy:
                    row[name] = cell.label().split("\n")[0]
                elif cell.values:
                    spread = "" if cell.n < 2 else f" \u00b1 {cell.std:.3g}"
                    row[name] = f"{cell.mean:.4g}{spread} (n={cell.n})"
                else:
                    row[name] = "no value"
    return [rows[k] for k in sorted(rows)]


def _trial_rows(table: pa.Table, metric: str | None) -> list[dict]:
    cols = [c for c in TRIAL_COLUMNS if c in table.column_names]
    if metric and metric in table.column_names:
        cols.append(metric)
    out = []
    for row in table.select(cols).to_pylist():
        if row.get("git_dirty") is not None:
            row["git_dirty"] = str(row["git_dirty"]).lower()
        out.append(row)
    return out


def _meta(table: pa.Table, col: Collection, sweep: str) -> str:
    parents = [p for p in col.parents if p.sweep == sweep]
    statuses = Counter(table.column("status").to_pylist())
    commits = sorted({c for c in table.column("git_commit").to_pylist() if c})
    dirty = any(table.column("git_dirty").to_pylist())
    lines = [f"{table.num_rows} trials: " + ", ".join(f"{k} {s}" for s, k in sorted(statuses.items())),
             "parent run: " + (", ".join(p.run_id for p in parents) or "unknown"),
             "search: " + ", ".join(sorted({s for s in table.column("search").to_pylist() if s})
                                    or ["unknown"]),
             "git commit: " + (", ".join(commits) or "unknown") + (" (dirty tree)" if dirty else ""),
             f"tracking URI: {col.tracking_uri}, experiment {col.experiment}"]
    return "".join(H.paragraph(line, "meta") for line in lines)


def _cost_blocks(table, column: str | None, out: Path, prefix: str,
                 files: list[Path]) -> list[str]:
    """The cost panel: quality against compute, the cost per cell and what the numbers are."""
    if not has_cost(table):
        return [H.paragraph(NO_COST_NOTE)]
    cells = cost_cells(table, column)
    path = save(cost_figure(cells, column, setup_text(table)), out / f"{prefix}cost.png")
    files.append(path)
    blocks = [H.heading("Cost: quality against compute", 3), H.image(path, "cost")]
    # unplaced_note too: an Optuna sweep's cells pool whatever it searched.
    for note in (left_out_note(cells), unplaced_note(build_grid(table, cost_schema.TOTAL_FLOPS))):
        if note:
            blocks.append(H.paragraph(note))
    return blocks + [H.table(cost_rows(cells)), H.paragraph(DEFINITION)]


def _grid_section(table, history, out: Path, prefix: str, files: list[Path]) -> list[str]:
    """Ordering banner, heatmaps with number tables, the paper's values, cost, training curves."""
    blocks = []
    check = check_ordering(table)
    blocks.append(H.banner(check.verdict, check.reasons, check.column))
    for family, nfes in _families(table).items():
        path = save(heatmap_figure(table, family, nfes), out / f"{prefix}heatmap_{family}.png")
        files.append(path)
        blocks += [H.heading(f"{C.family_title(family)}: kappa x order", 3), H.image(path, f"heatmap {family}"),
                   H.table(_number_rows(table, family, nfes))]
        note = unplaced_note(build_grid(table, kind_column("final", family, nfes[0])))
        if note:
            blocks.append(H.paragraph(note))
    path = save(paper_figure(table, check.column), out / f"{prefix}paper_values.png")
    files.append(path)
    blocks += [H.heading("The paper's values beside ours", 3), H.image(path, "paper values"),
               H.paragraph(f"Source: {SOURCE}. {MMD_CAVEAT} {IMAGENET_NOTE}")]
    blocks += _cost_blocks(table, check.column, out, prefix, files)
    blocks.append(H.heading("During training", 3))
    keys = sorted(set(history.column("key").to_pylist()))
    for key in keys:
        if key == "loss":
            continue
        path = save(curve_figure(table, history, key), out / f"{prefix}curve_{key}.png")
        files.append(path)
        blocks.append(H.image(path, f"curve {key}"))
    return blocks


def _optuna_section(table, col: Collection, sweep: str, out: Path, prefix: str,
                    files: list[Path]) -> list[str]:
    # Imported here: optuna costs a second of start-up that grid-only reports never need.
    from dashboards.optuna_views import (build_study, history_figure, importance_figure,
                                         importances, objective_column, parallel_figure, params_text)
    parent = next((p for p in col.parents if p.sweep == sweep), None)
    column, direction = objective_column(table, parent.tags if parent else None)
    if column is None:
        return [H.paragraph("no objective metric found for this Optuna sweep")]
    study = build_study(table, column, direction)
    result, note = importances(study)
    blocks = [H.paragraph(f"objective: {column} ({direction}); "
                          f"{len(study.trials)} trials rebuilt into an Optuna study")]
    for name, fig in (("optuna_history", history_figure(study, column)),
                      ("optuna_parallel", parallel_figure(study, column)),
                      ("optuna_importance", importance_figure(result, note))):
        path = save(fig, out / f"{prefix}{name}.png")
        files.append(path)
        blocks.append(H.image(path, name))
    if result:
        blocks.append(H.table([{"param": k, "importance": v} for k, v in result.items()]))
    elif note:
        blocks.append(H.paragraph(f"importance: {note}"))
    best = study.best_trial if any(t.value is not None for t in study.trials) else None
    if best:
        blocks.append(H.paragraph(f"best trial: {best.user_attrs['run_id']} {column}="
                                  f"{best.value:.4g} with {params_text(best.params)}"))
    if C.param_col("order") in table.column_names:
        blocks += _cost_blocks(table, column, out, prefix, files)
    return blocks


def _sweep_blocks(table, history, col, sweep, out, multi, files) -> list[str]:
    prefix = f"{_safe(sweep)}_" if multi else ""
    history = history.filter(pc.is_in(history.column("run_id"), table.column("run_id")))
    blocks = [H.heading(f"Sweep {sweep}"), _meta(table, col, sweep)]
    if "optuna" in set(table.column("search").to_pylist()):
        blocks += _optuna_section(table, col, sweep, out, prefix, files)
    elif C.param_col("order") in table.column_names:
        blocks += _grid_section(table, history, out, prefix, files)
    else:
        blocks.append(H.paragraph("no order param: no kappa x order view for this sweep"))
    metric = kind_column("final", *C.metric_columns(table)[0]) if C.metric_columns(table) else None
    blocks += [H.heading("Trials", 3), H.table(_trial_rows(table, metric))]
    # Trials whose checkpoints sweeps/sample_grid.py scored at other sampler settings: their tables and heatmaps.
    trials = dict(zip(table.column("run_id").to_pylist(), table.column("run_name").to_pylist()))
    blocks += sampler_blocks(col.tracking_uri, table.column("experiment_id")[0].as_py(), trials, out, prefix, files)
    return blocks


def _log(col: Collection, files: list[Path]) -> list[str]:
    """Upload the report files to each selected sweep's parent run, under report/."""
    client = client_for(col.tracking_uri)
    for parent in col.parents:
        for path in files:
            client.log_artifact(parent.run_id, str(path), ARTIFACT_DIR)
    return [p.run_id for p in col.parents]


def build_report(tracking_uri: str, experiment: str, parent_run_ids: list[str] | None = None,
                 sweep: str | list[str] | None = None, out_dir: str | Path | None = None,
                 log_to_parent: bool = True, page_size: int = PAGE_SIZE) -> Path:
    """Collect, draw and write the report; returns the path of report.html."""
    sweeps = [sweep] if isinstance(sweep, str) else (list(sweep) if sweep else None)
    col = collect(tracking_uri, experiment, parent_run_ids, sweeps, page_size)
    out = Path(out_dir) if out_dir else default_out_dir(col.label)
    files = [write_parquet(col.table, out)]
    history = collect_history(tracking_uri, col.table)
    files.append(write_parquet(history, out, "history.parquet"))
    names = sorted(set(col.table.column("sweep").to_pylist()), key=str)
    blocks = [H.paragraph(f"Built {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} from "
                          f"{col.table.num_rows} trial runs. Cells: mean over seeds, \u00b1 sample "
                          "std, n = trials counted; diverged/collapsed/failed trials are left out "
                          "of means and named in the cell.", "meta")]
    blocks += [H.paragraph(n) for n in col.notes]
    if col.missing:
        names_by_id = dict(zip(col.table.column("run_id").to_pylist(),
                               col.table.column("run_name").to_pylist()))
        blocks.append(H.paragraph(f"{len(col.missing)} trial run(s) lack metrics: " + "; ".join(
            f"{names_by_id.get(rid)} ({rid}): {', '.join(cols)}"
            for rid, cols in col.missing.items())))
    for name in names:
        sub = col.table.filter(pc.equal(col.table.column("sweep"), name)) if name is not None \
            else col.table.filter(pc.is_null(col.table.column("sweep")))
        blocks += _sweep_blocks(sub, history, col, str(name), out, len(names) > 1, files)
    path = out / "report.html"
    path.write_text(H.page(f"RCGM sweep report: {col.label}", blocks), encoding="utf-8")
    files.append(path)
    # A whole-experiment report belongs to no single sweep, so it stays on disk only.
    if log_to_parent and (parent_run_ids or sweeps):
        try:
            _log(col, files)
        except MlflowException as err:
            raise DashboardError(f"report written to {path} but logging it to the parent run "
                                 f"failed: {err.message}; rerun with --no-log") from None
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry: exit 0 and print the report path, or exit 2 with one line saying what to do."""
    ap = argparse.ArgumentParser(prog="python -m dashboards.report", description=__doc__)
    ap.add_argument("--experiment", default="kappa_by_order", help="MLflow experiment name")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--sweep", action="append", help="sweep name (repeatable)")
    group.add_argument("--parent-run-id", action="append", nargs="+",
                       help="sweep parent run id(s)")
    ap.add_argument("--tracking-uri", default=None,
                    help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    ap.add_argument("--out", default=None, help="output folder (default runs/reports/<sweep>/)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = ap.parse_args(argv)
    parent_ids = [i for group_ids in args.parent_run_id for i in group_ids] \
        if args.parent_run_id else None
    try:
        path = build_report(args.tracking_uri or default_tracking_uri(), args.experiment,
                            parent_ids, args.sweep, args.out, not args.no_log)
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
