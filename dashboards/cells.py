"""Aggregate trials into kappa x order cells: mean and spread over seeds, unhealthy trials apart."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dashboards import columns as C

# Orders whose objective never reads the target model, so kappa means nothing for them.
KAPPA_FREE_ORDERS = (0,)


@dataclass(frozen=True)
class Cell:
    """The trials of one (order, kappa); kappa is None for a kappa-free order shown as one row."""

    order: int
    kappa: float | None
    values: tuple[float, ...]
    statuses: dict[str, int]
    no_value: int
    run_ids: tuple[str, ...]

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
    """Cells of one table column laid out as orders (rows) x kappas (columns)."""

    column: str
    orders: list[int]
    kappas: list[float]
    cells: dict[tuple[int, float | None], Cell]
    merged_orders: set[int] = field(default_factory=set)
    pooled_params: list[str] = field(default_factory=list)
    dropped: int = 0

    def cell(self, order: int, kappa: float | None) -> Cell | None:
        """The cell at (order, kappa), resolving a merged order to its one pooled cell."""
        if order in self.merged_orders:
            return self.cells.get((order, None))
        return self.cells.get((order, kappa))

    def values(self) -> list[float]:
        """Every cell mean that is a real number (for the colour scale)."""
        return [c.mean for c in self.cells.values() if c.values and math.isfinite(c.mean)]


def order_kappa(table: pa.Table) -> tuple[list, list]:
    """The order and kappa params of every row (kappa None where not logged)."""
    orders = table.column(C.param_col("order")).to_pylist()
    kcol = C.param_col("kappa")
    kappas = table.column(kcol).to_pylist() if kcol in table.column_names else [None] * len(orders)
    return orders, kappas


def merged_orders(table: pa.Table) -> set[int]:
    """Kappa-free orders logged once (no kappa, or one kappa while others sweep several)."""
    kappas_by_order: dict[int, set] = {}
    for order, kappa in zip(*order_kappa(table)):
        if order is not None:
            kappas_by_order.setdefault(order, set()).add(kappa)
    orders = sorted(kappas_by_order)
    others = {k for o, ks in kappas_by_order.items() if o not in KAPPA_FREE_ORDERS for k in ks
              if k is not None}
    merged = set()
    for order in orders:
        if order not in KAPPA_FREE_ORDERS:
            continue
        own = kappas_by_order.get(order, set())
        finite_own = {k for k in own if k is not None}
        if None in own or (len(finite_own) <= 1 and len(others) > 1):
            merged.add(order)
    return merged


def build_grid(table: pa.Table, column: str) -> Grid:
    """Group the rows of `table` by (order, kappa) and aggregate `column` per cell."""
    cols = table.column_names
    orders_col, kappa_col = order_kappa(table)
    values_col = table.column(column).to_pylist() if column in cols else [None] * table.num_rows
    status_col = table.column("status").to_pylist()
    ids = table.column("run_id").to_pylist()
    orders = sorted({o for o in orders_col if o is not None})
    merged = merged_orders(table)
    groups: dict[tuple, list[int]] = {}
    dropped = 0
    for i, (order, kappa) in enumerate(zip(orders_col, kappa_col)):
        if order is None or (kappa is None and order not in merged):
            dropped += 1  # cannot be placed on the grid; counted so the report can say so
            continue
        groups.setdefault((order, None if order in merged else kappa), []).append(i)
    cells = {}
    for key, rows in groups.items():
        statuses = Counter(status_col[i] for i in rows)
        healthy = [i for i in rows if status_col[i] not in C.UNHEALTHY]
        values = tuple(values_col[i] for i in healthy if C.finite(values_col[i]))
        cells[key] = Cell(key[0], key[1], values, dict(statuses), len(healthy) - len(values),
                          tuple(ids[i] for i in rows))
    kappas = sorted({k for (o, k) in groups if k is not None})
    return Grid(column, orders, kappas, cells, merged, _pooled(table, groups), dropped)


def _pooled(table: pa.Table, groups: dict[tuple, list[int]]) -> list[str]:
    """Params other than order, kappa and replicate ids that vary inside some cell."""
    skip = {C.param_col(p) for p in ("order", "kappa", *C.REPLICATE_PARAMS)}
    pooled = []
    for name in table.column_names:
        if not name.startswith("params.") or name in skip:
            continue
        values = table.column(name).to_pylist()
        if any(len({values[i] for i in rows}) > 1 for rows in groups.values()):
            pooled.append(name[len("params."):])
    return pooled

