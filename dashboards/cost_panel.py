"""What each (order, kappa) cell cost (issue 14): quality against compute, and the cost table."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from matplotlib import colormaps
from matplotlib.lines import Line2D

from dashboards import columns as C
from dashboards.cells import Cell, build_grid, has_peers, row_label, row_sort_key
from dashboards.figures import PANEL_LABEL, new_figure
from trainables import cost_schema as S

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
ANY_KAPPA_MARKER = "h"  # a kappa-free order logged once (cells.merged_orders)
NO_COST_NOTE = ("These trials carry no cost metrics (cost_* in MLflow, logged since issue 14), "
                "so this sweep has no cost panel.")
DEFINITION = (
    "FLOPs are counted by torch.utils.flop_counter on one training step of one device: matmul, "
    "convolution and attention FLOPs (elementwise ops are not counted) of the forward and "
    "backward, the N no-grad target forwards and any guidance forwards. Forward equivalents = "
    "FLOPs per step / FLOPs of one forward (about 3 + N for order N). Total compute = FLOPs per "
    "step x devices x steps. Steps/s and TFLOP/s (per device) are measured over the time inside "
    "training steps; samples/s counts every device's samples. MFU = achieved FLOP/s / the "
    "device's dense peak for the precision; CPUs have no MFU. Memory is "
    "torch.cuda.max_memory_allocated on CUDA, else the bytes autograd saves for one step's "
    "backward. Every number is the mean over the cell's healthy trials.")


@dataclass(frozen=True)
class CostCell:
    """One (row, kappa) cell: its quality cell, a cell per cost metric, its trials' tags."""

    row: tuple  # (objective, order), as dashboards.cells
    kappa: float | None
    quality: Cell | None
    cost: dict[str, Cell]
    tags: dict[str, str | None]

    @property
    def name(self) -> str:
        """The point's label, e.g. "N=2 κ=0.999"."""
        return f"{row_label(self.row)} \u03ba=" + ("any" if self.kappa is None else f"{self.kappa:g}")

    def mean(self, metric: str) -> float | None:
        """Mean of a cost metric over the healthy trials that logged it; None when none did."""
        cell = self.cost[metric]
        return cell.mean if cell.values else None

    def left_out(self) -> str | None:
        """Why the cell has no point in the figure; None when it has one."""
        if self.quality is not None and self.quality.all_unhealthy:
            return self.quality.label().split("\n")[0]
        if self.mean(S.TOTAL_FLOPS) is None:
            return "no cost metrics"
        if self.quality is None or not self.quality.values:
            return "no metric value"
        return None


def has_cost(table: pa.Table) -> bool:
    """True when some trial logged a cost metric (runs made before issue 14 have none)."""
    return any(table.column(name).null_count < table.num_rows for name in C.COST_METRICS)


def _tag_text(values: list) -> str | None:
    """The distinct values of a tag over a cell's trials, e.g. "fp32" or "bf16, fp32"."""
    present = sorted({v for v in values if v})
    return ", ".join(present) or None


def cost_cells(table: pa.Table, column: str | None) -> list[CostCell]:
    """A CostCell per (row, kappa) cell, by row then kappa; `column` is the quality metric."""
    grids = {metric: build_grid(table, metric) for metric in C.COST_METRICS}
    quality = build_grid(table, column) if column else None
    ids = table.column("run_id").to_pylist()
    tags = {name: dict(zip(ids, table.column(name).to_pylist())) for name in C.COST_TAGS}
    keys = sorted(grids[S.TOTAL_FLOPS].cells,
                  key=lambda k: (row_sort_key(k[0]), -1.0 if k[1] is None else k[1]))
    out = []
    for key in keys:
        run_ids = grids[S.TOTAL_FLOPS].cells[key].run_ids
        out.append(CostCell(key[0], key[1], quality.cells[key] if quality else None,
                            {metric: grid.cells[key] for metric, grid in grids.items()},
                            {name: _tag_text([by_id[r] for r in run_ids])
                             for name, by_id in tags.items()}))
    return out


def setup_text(table: pa.Table) -> str:
    """The devices and precisions the trials ran on, for the figure's title."""
    parts = []
    for name in ("device", "precision"):
        parts.append(f"{name}: {_tag_text(table.column(name).to_pylist()) or 'unknown'}")
    return "; ".join(parts)


def cost_figure(cells: list[CostCell], column: str | None, setup: str):
    """Quality against training compute: a point per healthy cell, colour by N, marker by kappa."""
    fig = new_figure(8.0, 5.0)
    ax = fig.subplots()
    rows = sorted({c.row for c in cells}, key=row_sort_key)
    kappas = sorted({c.kappa for c in cells if c.kappa is not None})
    colour = {r: colormaps["tab10"](i % 10) for i, r in enumerate(rows)}
    marker = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(kappas)}
    if any(c.kappa is None for c in cells):
        kappas.append(None)
        marker[None] = ANY_KAPPA_MARKER
    shown = [c for c in cells if c.left_out() is None]
    for cell in shown:
        x, q = cell.mean(S.TOTAL_FLOPS), cell.quality
        ax.errorbar(x, q.mean, yerr=q.std if q.n >= 2 else None, fmt=marker[cell.kappa],
                    color=colour[cell.row], markersize=7, capsize=3)
        ax.annotate(cell.name, (x, q.mean), xytext=(6, 4), textcoords="offset points",
                    fontsize=7)
    if shown:
        ax.set_xscale("log")
        ax.margins(x=0.15)  # room for the labels of the leftmost and rightmost points
        if all(c.quality.mean > 0 for c in shown):
            ax.set_yscale("log")
        handles = [Line2D([], [], color=colour[r], marker="o", linestyle="", label=row_label(r))
                   for r in rows]
        handles += [Line2D([], [], color="grey", marker=marker[k], linestyle="",
                           label="any \u03ba" if k is None else f"\u03ba={k:g}")
                    for k in kappas]
        # Outside the axes: points crowd any corner of a few-cell sweep.
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no healthy cell with both a cost and a metric value",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xlabel("training compute, FLOP (all devices, whole trial; log scale)", fontsize=8)
    ax.set_ylabel(f"{column or 'metric'} (mean over healthy trials, \u00b1 sample std)",
                  fontsize=8)
    ax.tick_params(which="both", labelsize=7)
    ax.set_label(PANEL_LABEL)
    fig.suptitle(f"Quality against compute: {column or 'no metric'} per (N, \u03ba) cell\n{setup}",
                 fontsize=10)
    return fig


def left_out_note(cells: list[CostCell]) -> str | None:
    """A sentence naming the cells that have no point in the figure, and why."""
    out = [f"{c.name}: {c.left_out()}" for c in cells if c.left_out() is not None]
    return "Not in the figure: " + "; ".join(out) if out else None


def _mfu(cell: CostCell) -> float | str | None:
    """MFU in percent, or why there is none (CPUs, or a GPU whose peak is not known)."""
    mfu = cell.mean(S.TRIAL_MFU)
    if mfu is not None:
        return 100.0 * mfu
    if cell.mean(S.FLOPS_PER_STEP) is None:  # no healthy trial logged its cost
        return None
    return "n/a (CPU)" if cell.tags["device"] == "cpu" else "n/a"


def _memory(cell: CostCell) -> tuple[float | None, str | None]:
    """(MiB, what was measured): the CUDA peak when logged, else the CPU's saved activations."""
    peak = cell.mean(S.TRIAL_PEAK_MEMORY_MB)
    if peak is not None:
        return peak, "CUDA peak allocated"
    saved = cell.mean(S.SAVED_ACTIVATIONS_MB)
    return (saved, "saved for backward (CPU)") if saved is not None else (None, None)


def _scaled(value: float | None, unit: float) -> float | None:
    """value in units of `unit` (GFLOP: 1e9), None kept."""
    return None if value is None else value / unit


def cost_rows(cells: list[CostCell]) -> list[dict]:
    """One table row per cell: what one step and the whole trial cost, and on what."""
    rows = []
    peers = has_peers([c.row for c in cells])
    for cell in cells:
        memory, measured = _memory(cell)
        counted = cell.cost[S.FLOPS_PER_STEP]
        rows.append({
            **({"objective": cell.row[0]} if peers else {}), "N": cell.row[1], "kappa": "any" if cell.kappa is None else f"{cell.kappa:g}",
            "n": counted.n,
            "left out": ", ".join(f"{k} {s}" for s, k in sorted(counted.excluded.items())),
            "GFLOP / step": _scaled(cell.mean(S.FLOPS_PER_STEP), 1e9),
            "forward equivalents": cell.mean(S.FORWARD_EQUIVALENTS),
            "total PFLOP": _scaled(cell.mean(S.TOTAL_FLOPS), 1e15),
            "steps/s": cell.mean(S.TRIAL_STEPS_PER_S),
            "samples/s": cell.mean(S.TRIAL_SAMPLES_PER_S),
            "TFLOP/s per device": cell.mean(S.TRIAL_TFLOPS_PER_S),
            "MFU %": _mfu(cell), "memory MiB": memory, "memory measured": measured,
            **{name: cell.tags[name] for name in C.COST_TAGS},
        })
    return rows
