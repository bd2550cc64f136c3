"""Metric vs training step: a panel per row (RCGM order, or first-order peer), a line per kappa (mean over seeds)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib import colormaps

from dashboards import columns as C
from dashboards.cells import merged_rows, row_kappa, row_label, row_sort_key
from dashboards.figures import PANEL_LABEL, new_figure


def _placement(table: pa.Table) -> dict[str, tuple[tuple, float | None, str]]:
    """run_id -> ((objective, order), kappa or None for a kappa-free order drawn once, status)."""
    merged = merged_rows(table)
    rows, kappas = row_kappa(table)
    out = {}
    for run_id, row, kappa, status in zip(table.column("run_id").to_pylist(), rows, kappas,
                                          table.column("status").to_pylist()):
        if row is not None and (kappa is not None or row in merged):
            out[run_id] = (row, None if row in merged else kappa, status)
    return out


def run_series(history: pa.Table, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """run_id -> (steps, values) of one metric key, in step order."""
    sub = history.filter(pc.equal(history.column("key"), key))
    out: dict[str, tuple[list[int], list[float]]] = {}
    for run_id, step, value in zip(sub.column("run_id").to_pylist(),
                                   sub.column("step").to_pylist(), sub.column("value").to_pylist()):
        steps, values = out.setdefault(run_id, ([], []))
        steps.append(step)
        values.append(value)
    return out


def mean_curves(table: pa.Table, history: pa.Table, key: str) -> dict[tuple, tuple[list, list]]:
    """(row, kappa) -> (steps, mean over the seeds that have a finite value at each step)."""
    place, series = _placement(table), run_series(history, key)
    buckets: dict[tuple, dict[int, list[float]]] = {}
    for run_id, (steps, values) in series.items():
        if run_id not in place:
            continue
        row, kappa, _ = place[run_id]
        by_step = buckets.setdefault((row, kappa), {})
        for s, v in zip(steps, values):
            if math.isfinite(v):
                by_step.setdefault(s, []).append(v)
    return {cell: (sorted(by_step), [float(np.mean(by_step[s])) for s in sorted(by_step)])
            for cell, by_step in buckets.items()}


def curve_figure(table: pa.Table, history: pa.Table, key: str):
    """Figure: a panel per row; thin line per trial (dashed if unhealthy), thick mean per kappa."""
    place, series = _placement(table), run_series(history, key)
    means = mean_curves(table, history, key)
    rows = sorted({r for r, _ in means}, key=row_sort_key)
    kappas = sorted({k for _, k in means if k is not None})
    cmap = colormaps["plasma"]
    colour = {k: cmap(0.85 * i / max(len(kappas) - 1, 1)) for i, k in enumerate(kappas)}
    colour[None] = "black"
    fig = new_figure(max(4.0 * len(rows), 6.0), 3.6)
    axes = fig.subplots(1, max(len(rows), 1), squeeze=False)[0]
    positive = all(v > 0 for _, vs in means.values() for v in vs)
    for ax, row in zip(axes, rows):
        for run_id, (steps, values) in series.items():
            if run_id in place and place[run_id][0] == row:
                _, kappa, status = place[run_id]
                ax.plot(steps, values, color=colour[kappa], alpha=0.35, linewidth=0.8,
                        linestyle="--" if status in C.UNHEALTHY else "-")
        for (r, kappa), (steps, values) in sorted(means.items(), key=lambda kv: str(kv[0])):
            if r == row:
                label = "any \u03ba" if kappa is None else f"\u03ba={kappa:g}"
                ax.plot(steps, values, color=colour[kappa], linewidth=2.0, label=label)
        if positive:
            ax.set_yscale("log")
        ax.set_title(row_label(row), fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        ax.set_label(PANEL_LABEL)
    axes[0].set_ylabel(key, fontsize=8)
    fig.suptitle(f"{key} during training: thick = mean over seeds, thin = trials "
                 "(dashed = diverged/collapsed/failed)", fontsize=10)
    return fig
