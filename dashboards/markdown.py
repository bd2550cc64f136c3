"""A sweep's cells as Markdown tables, for docs and notes: `python -m dashboards.markdown --sweep NAME`.

The same cells the report draws (dashboards.cells): rows (objective, order) x kappa columns,
mean ± sample std over the counted seeds, unhealthy trials named; then what one step of each
row cost. Every table says which runs and commits it came from, so a number in docs traces back.
"""

from __future__ import annotations

import argparse
import math
import sys

import pyarrow as pa

from dashboards import columns as C
from dashboards.cells import Cell, Grid, build_grid, row_label
from dashboards.collect import collect, default_tracking_uri
from dashboards.errors import DashboardError
from trainables import cost_schema as S


def cell_text(cell: Cell | None, digits: int = 2) -> str:
    """'0.0042 ± 0.0005 (n=5)', 'collapsed (2/2)', '0.0052 (n=1; 1 collapsed)' or '' for no runs."""
    if cell is None:
        return ""
    if cell.all_unhealthy:
        return cell.label().split("\n")[0]
    if not cell.values:
        return "no value"
    text = _number(cell.mean, digits)
    if cell.n >= 2:
        text += f" ± {_number(cell.std, 1)}"
    notes = "; ".join(cell.notes())
    return text + f" (n={cell.n}" + (f"; {notes})" if notes else ")")


def _number(value: float, digits: int) -> str:
    """Enough significant digits to compare cells: 0.0042, 71.9, 1.2e+03."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{max(digits, 1) + 1}g}" if abs(value) < 1e4 else f"{value:.3g}"


def grid_markdown(grid: Grid, title: str) -> list[str]:
    """A Markdown table of one metric column: a line per row, a column per kappa."""
    kappas = grid.kappas or [None]
    lines = [f"| {title} | " + " | ".join("any \u03ba" if k is None else f"\u03ba={k:g}" for k in kappas) + " |",
             "|---|" + "---|" * len(kappas)]
    for objective, order in grid.rows:
        merged = (objective, order) in grid.merged_rows
        cells = [cell_text(grid.cell(order, k, objective)) if not merged or i == 0 else ""
                 for i, k in enumerate(kappas)]
        label = row_label((objective, order)) + (" (any \u03ba)" if merged else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def cost_markdown(table: pa.Table) -> list[str]:
    """What a step of each row cost: counted GFLOP, forward equivalents, measured steps/s (means over cells)."""
    grids = {m: build_grid(table, m) for m in (S.FLOPS_PER_STEP, S.FORWARD_EQUIVALENTS, S.TRIAL_STEPS_PER_S)
             if m in table.column_names}
    if S.FLOPS_PER_STEP not in grids:
        return []
    lines = ["| row | GFLOP / step | forward equivalents | steps/s (measured, this machine) |", "|---|---|---|---|"]
    for row in grids[S.FLOPS_PER_STEP].rows:
        values = []
        for metric, scale in ((S.FLOPS_PER_STEP, 1e9), (S.FORWARD_EQUIVALENTS, 1.0), (S.TRIAL_STEPS_PER_S, 1.0)):
            grid = grids.get(metric)
            found = [v for (r, _), c in (grid.cells.items() if grid else []) if r == row for v in c.values]
            values.append(f"{sum(found) / len(found) / scale:.3g}" if found else "")
        lines.append(f"| {row_label(row)} | " + " | ".join(values) + " |")
    return lines


def sweep_markdown(tracking_uri: str, experiment: str, sweeps: list[str]) -> str:
    """Provenance, a table per final metric column, and the cost table of the named sweeps."""
    col = collect(tracking_uri, experiment, sweeps=sweeps)
    table = col.table
    commits = sorted({c for c in table.column("git_commit").to_pylist() if c})
    dirty = any(table.column("git_dirty").to_pylist())
    statuses = table.column("status").to_pylist()
    out = [f"Sweep(s) {', '.join(sweeps)} in experiment {experiment!r}: parent run(s) "
           + ", ".join(p.run_id for p in col.parents) + f"; {table.num_rows} trials ("
           + ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses))) + "); commit "
           + (", ".join(c[:7] for c in commits) or "unknown") + (" (dirty tree)" if dirty else " (clean)"), ""]
    for family, nfe in C.metric_columns(table):
        column = C.final_col(family, nfe)
        if column in table.column_names:
            out += grid_markdown(build_grid(table, column), f"final {C.metric_key(family, nfe)}") + [""]
    out += cost_markdown(table)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print the tables, or exit 2 with one line saying what to do."""
    ap = argparse.ArgumentParser(prog="python -m dashboards.markdown", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="append", required=True, help="sweep name (repeatable: tables over several)")
    ap.add_argument("--experiment", default="kappa_by_order", help="MLflow experiment name")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    args = ap.parse_args(argv)
    try:
        print(sweep_markdown(args.tracking_uri or default_tracking_uri(), args.experiment, args.sweep), end="")
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
