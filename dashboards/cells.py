"""Aggregate trials into kappa x row cells: mean and spread over seeds, unhealthy trials apart.

A row is (objective, order): RCGM's orders N, and a row per first-order peer (meanflow, shortcut,
consistency) when a sweep ran them. Runs logged before the peers existed count as rcgm.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dashboards import columns as C
from trainables.rcgm.ranges import OBJECTIVE

# Orders whose objective never reads the target model, so kappa means nothing for them.
KAPPA_FREE_ORDERS = (0,)
RCGM = "rcgm"
# Rows in this order: RCGM by order first (the paper's table), then the peers as the method layer lists them.
PEER_ORDER = tuple(name for name in OBJECTIVE.choices if name != RCGM)

Row = tuple  # (objective, order)
# Early sweeps logged N=0 trials as objective 'flow_matching': the same RCGM row.
LEGACY_OBJECTIVES = {"flow_matching": RCGM}


def row_label(row: Row) -> str:
    """'N=2' for RCGM, 'meanflow (N=1)' for a peer."""
    objective, order = row
    return f"N={order}" if objective == RCGM else f"{objective} (N={order})"


def has_peers(rows) -> bool:
    """Whether any row is a first-order peer's (tables then name the objective)."""
    return any(objective != RCGM for objective, _ in rows)


def row_sort_key(row: Row) -> tuple:
    """RCGM rows by order, then the peers in PEER_ORDER (unknown names last, by name)."""
    objective, order = row
    if objective == RCGM:
        return (0, order, "")
    rank = PEER_ORDER.index(objective) if objective in PEER_ORDER else len(PEER_ORDER)
    return (1 + rank, order, objective)


@dataclass(frozen=True)
class Cell:
    """The trials of one (row, kappa); kappa is None for a kappa-free order shown as one row."""

    order: int
    kappa: float | None
    values: tuple[float, ...]
    statuses: dict[str, int]
    no_value: int
    run_ids: tuple[str, ...]
    objective: str = RCGM

    @property
    def row(self) -> Row:
        """(objective, order)."""
        return (self.objective, self.order)

    @property
    def n(self) -> int:
        """Trials that count: healthy and with a finite value."""
        return len(self.values)

    @property
    def total(self) -> int:
        """Every trial in the cell, whatever its status."""
        return sum(self.statuses.values())

    @property
    def excluded(self) -> dict[str, int]:
        """Unhealthy statuses and how many trials had each."""
        return {s: k for s, k in self.statuses.items() if s in C.UNHEALTHY}

    @property
    def all_unhealthy(self) -> bool:
        """True when no trial of the cell is usable because every one diverged/collapsed/failed."""
        return self.total > 0 and sum(self.excluded.values()) == self.total

    @property
    def mean(self) -> float:
        """Mean over the counted trials (NaN when none)."""
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1) over the counted trials; NaN below two."""
        return float(np.std(self.values, ddof=1)) if len(self.values) >= 2 else math.nan

    def notes(self) -> list[str]:
        """Why trials are missing from the mean, e.g. ["1 collapsed", "1 no value"]."""
        out = [f"{k} {s}" for s, k in sorted(self.excluded.items())]
        if self.no_value:
            out.append(f"{self.no_value} no value")
        return out

    def label(self) -> str:
        """The text printed in the heatmap cell."""
        if self.all_unhealthy:
            kinds = self.excluded
            head = next(iter(kinds)) if len(kinds) == 1 else "unhealthy"
            text = f"{head} ({self.total}/{self.total})"
            return text if len(kinds) == 1 else text + "\n" + ", ".join(self.notes())
        if not self.values:
            return "no value\n" + ", ".join(self.notes())
        spread = "n=1" if self.n == 1 else f"\u00b1{self.std:.2g} n={self.n}"
        lines = [f"{self.mean:.3g}", spread] + ([", ".join(self.notes())] if self.notes() else [])
        return "\n".join(lines)


@dataclass
class Grid:
    """Cells of one table column laid out as rows (objective, order) x kappas (columns)."""

    column: str
    rows: list[Row]
    kappas: list[float]
    cells: dict[tuple[Row, float | None], Cell]
    merged_rows: set[Row] = field(default_factory=set)
    pooled_params: list[str] = field(default_factory=list)
    dropped: int = 0

    @property
    def orders(self) -> list[int]:
        """RCGM's orders on the grid."""
        return [o for obj, o in self.rows if obj == RCGM]

    @property
    def merged_orders(self) -> set[int]:
        """RCGM's kappa-free orders drawn as one cell spanning every kappa."""
        return {o for obj, o in self.merged_rows if obj == RCGM}

    def cell(self, order: int, kappa: float | None, objective: str = RCGM) -> Cell | None:
        """The cell at (objective, order, kappa), resolving a merged row to its one pooled cell."""
        row = (objective, order)
        if row in self.merged_rows:
            return self.cells.get((row, None))
        return self.cells.get((row, kappa))

    def values(self) -> list[float]:
        """Every cell mean that is a real number (for the colour scale)."""
        return [c.mean for c in self.cells.values() if c.values and math.isfinite(c.mean)]


def row_kappa(table: pa.Table) -> tuple[list, list]:
    """The (objective, order) row (None without an order) and kappa (None if not logged) of every table row."""
    orders = table.column(C.param_col("order")).to_pylist()
    ocol = C.param_col("objective")
    objectives = table.column(ocol).to_pylist() if ocol in table.column_names else [None] * len(orders)
    rows = [None if o is None else (LEGACY_OBJECTIVES.get(obj, obj or RCGM), int(o))
            for obj, o in zip(objectives, orders)]
    kcol = C.param_col("kappa")
    kappas = table.column(kcol).to_pylist() if kcol in table.column_names else [None] * len(orders)
    return rows, kappas


def merged_rows(table: pa.Table) -> set[Row]:
    """Kappa-free RCGM orders logged once (no kappa, or one kappa while others sweep several)."""
    kappas_by_row: dict[Row, set] = {}
    for row, kappa in zip(*row_kappa(table)):
        if row is not None:
            kappas_by_row.setdefault(row, set()).add(kappa)
    others = {k for r, ks in kappas_by_row.items() if not _kappa_free(r) for k in ks if k is not None}
    merged = set()
    for row, own in kappas_by_row.items():
        if not _kappa_free(row):
            continue
        finite_own = {k for k in own if k is not None}
        if None in own or (len(finite_own) <= 1 and len(others) > 1):
            merged.add(row)
    return merged


def _kappa_free(row: Row) -> bool:
    """Whether the row's objective never reads the target model (RCGM N=0, flow matching)."""
    return row[0] == RCGM and row[1] in KAPPA_FREE_ORDERS


def build_grid(table: pa.Table, column: str) -> Grid:
    """Group the rows of `table` by (row, kappa) and aggregate `column` per cell."""
    cols = table.column_names
    rows_col, kappa_col = row_kappa(table)
    values_col = table.column(column).to_pylist() if column in cols else [None] * table.num_rows
    status_col = table.column("status").to_pylist()
    ids = table.column("run_id").to_pylist()
    rows = sorted({r for r in rows_col if r is not None}, key=row_sort_key)
    merged = merged_rows(table)
    groups: dict[tuple, list[int]] = {}
    dropped = 0
    for i, (row, kappa) in enumerate(zip(rows_col, kappa_col)):
        if row is None or (kappa is None and row not in merged):
            dropped += 1  # cannot be placed on the grid; counted so the report can say so
            continue
        groups.setdefault((row, None if row in merged else kappa), []).append(i)
    cells = {}
    for key, members in groups.items():
        statuses = Counter(status_col[i] for i in members)
        healthy = [i for i in members if status_col[i] not in C.UNHEALTHY]
        values = tuple(values_col[i] for i in healthy if C.finite(values_col[i]))
        (objective, order), kappa = key
        cells[key] = Cell(order, kappa, values, dict(statuses), len(healthy) - len(values),
                          tuple(ids[i] for i in members), objective)
    kappas = sorted({k for (_, k) in groups if k is not None})
    return Grid(column, rows, kappas, cells, merged, _pooled(table, groups), dropped)


def _pooled(table: pa.Table, groups: dict[tuple, list[int]]) -> list[str]:
    """Params other than objective, order, kappa and replicate ids that vary inside some cell."""
    skip = {C.param_col(p) for p in ("objective", "order", "kappa", *C.REPLICATE_PARAMS)}
    pooled = []
    for name in table.column_names:
        if not name.startswith("params.") or name in skip:
            continue
        values = table.column(name).to_pylist()
        if any(len({values[i] for i in rows}) > 1 for rows in groups.values()):
            pooled.append(name[len("params."):])
    return pooled
