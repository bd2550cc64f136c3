"""Does our sweep reproduce the paper's EMA-paradox ordering? One verdict with its reasons."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyarrow as pa

from dashboards import columns as C
from dashboards.cells import RCGM, Cell, Grid, build_grid
from dashboards.paper_values import CLAIMS, HIGH_KAPPA

REPRODUCED, NOT_REPRODUCED, NOT_ENOUGH = "reproduced", "NOT reproduced", "not enough data"
# Families in the order we prefer them for the check: the paper's Moons metric first.
FAMILY_PREFERENCE = ("mmd2", "fd", "fid")


@dataclass
class OrderingCheck:
    """The verdict, the column it was judged on and one sentence per claim."""

    verdict: str
    column: str | None
    reasons: list[str] = field(default_factory=list)


def pick_column(table: pa.Table) -> str | None:
    """The final metric at the lowest NFE of the preferred family (the paper reports 1 NFE)."""
    pairs = C.metric_columns(table)
    if not pairs:
        return None
    families = [f for f in FAMILY_PREFERENCE if any(p[0] == f for p in pairs)] or [pairs[0][0]]
    nfe = min(n for f, n in pairs if f == families[0])
    return C.final_col(families[0], nfe)


def _score(cell: Cell | None) -> float | None:
    """Lower is better; a cell where every trial diverged/collapsed/failed counts as worst."""
    if cell is None:
        return None
    if cell.all_unhealthy:
        return math.inf
    return cell.mean if cell.values else None


def _show(cell: Cell | None) -> str:
    if cell is None:
        return "no runs"
    if cell.all_unhealthy:
        return cell.label().split("\n")[0]
    return f"{cell.mean:.3g}" if cell.values else "no value"


def worse(a: Cell | None, b: Cell | None) -> bool | None:
    """Is cell a worse than cell b? None when unknown or inside the seeds' spread."""
    sa, sb = _score(a), _score(b)
    if sa is None or sb is None or (math.isinf(sa) and math.isinf(sb)):
        return None
    if math.isfinite(sa) and math.isfinite(sb) and a.n >= 2 and b.n >= 2:
        # A gap smaller than the seed-to-seed spread is not evidence either way.
        if abs(sa - sb) <= max(a.std, b.std):
            return None
    return sa > sb


def _high_kappa(grid: Grid) -> float | None:
    highs = [k for k in grid.kappas if k >= HIGH_KAPPA - 1e-9]
    return min(highs) if highs else None


def check_ordering(table: pa.Table, column: str | None = None) -> OrderingCheck:
    """Judge both claims of the paper (paper_values.CLAIMS) on one metric column."""
    column = column or pick_column(table)
    if column is None or C.param_col("order") not in table.column_names:
        return OrderingCheck(NOT_ENOUGH, column, ["no order or metric columns in this sweep"])
    grid = build_grid(table, column)
    high = _high_kappa(grid)
    if high is None:
        return OrderingCheck(NOT_ENOUGH, column, [f"no kappa >= {HIGH_KAPPA} in this sweep"])
    lows = [k for k in grid.kappas if k < high and grid.cell(1, k) is not None]
    first_high, second_high = grid.cell(1, high), grid.cell(2, high)
    results, reasons = [], []
    if lows:
        low_cell = grid.cell(1, lows[0])
        got = worse(first_high, low_cell)
        reasons.append(f"{CLAIMS[0]}: {_yes(got)} (N=1: {_show(low_cell)} at \u03ba={lows[0]:g} "
                       f"-> {_show(first_high)} at \u03ba={high:g})")
    else:
        got = None
        reasons.append(f"{CLAIMS[0]}: unknown (N=1 has no kappa below {high:g})")
    results.append(got)
    got = worse(first_high, second_high)
    reasons.append(f"{CLAIMS[1]}: {_yes(got)} (N=2 {_show(second_high)} vs N=1 "
                   f"{_show(first_high)} at \u03ba={high:g})")
    results.append(got)
    # The peers do not change the verdict (the paper's claims are about RCGM's orders); they answer
    # whether other first-order objectives break under the same strong EMA target.
    reasons += peer_reasons(grid, high)
    if any(r is False for r in results):
        verdict = NOT_REPRODUCED
    elif any(r is None for r in results):
        verdict = NOT_ENOUGH
    else:
        verdict = REPRODUCED
    return OrderingCheck(verdict, column, reasons)


def peer_reasons(grid: Grid, high: float) -> list[str]:
    """One sentence per first-order peer: is it worse at the high kappa than at its best lower kappa?"""
    out = []
    for objective, order in grid.rows:
        if objective == RCGM:
            continue
        at_high = grid.cell(order, high, objective)
        lows = [(k, grid.cell(order, k, objective)) for k in grid.kappas if k < high]
        lows = [(k, c) for k, c in lows if _score(c) is not None]
        if not lows:
            out.append(f"{objective} (first order) worse at \u03ba={high:g}: unknown (no lower kappa)")
            continue
        best_k, best = min(lows, key=lambda kc: _score(kc[1]))
        ratio = ""
        if at_high is not None and at_high.values and best.values and best.mean > 0:
            ratio = f", {at_high.mean / best.mean:.2g}x"
        out.append(f"{objective} (first order) worse at \u03ba={high:g} than at its best lower \u03ba: "
                   f"{_yes(worse(at_high, best))} ({_show(best)} at \u03ba={best_k:g} -> {_show(at_high)}{ratio})")
    return out


def _yes(result: bool | None) -> str:
    return {True: "yes", False: "no"}.get(result, "unknown (missing cells or within seed spread)")
