"""A figure with the paper's reported values beside ours: Moons MMD bars and the ImageNet table."""

from __future__ import annotations

import math

import pyarrow as pa
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

from dashboards.cells import build_grid
from dashboards.figures import (PANEL_LABEL, UNHEALTHY_EDGE, UNHEALTHY_FACE, new_figure,
                                text_colour)
from dashboards.ordering import pick_column
from dashboards.paper_values import (HIGH_KAPPA, IMAGENET_FID_1NFE, IMAGENET_KAPPAS, MOONS_MMD,
                                     imagenet_cell)

PAPER_COLOUR, OURS_COLOUR = "#8c6d31", "#3182bd"


def our_moons_cells(table: pa.Table, column: str | None) -> list:
    """Our cells matching the paper's three Moons entries (N=1 low kappa, N=1 and N=2 high)."""
    if column is None or column not in table.column_names:
        return [None, None, None]
    grid = build_grid(table, column)
    highs = [k for k in grid.kappas if k >= HIGH_KAPPA - 1e-9]
    high = highs[0] if highs else None
    lows = [k for k in grid.kappas if high is None or k < high]
    return [grid.cell(1, lows[0]) if lows else None,
            grid.cell(1, high) if high is not None else None,
            grid.cell(2, high) if high is not None else None]


def _moons_axes(ax, table: pa.Table, column: str | None) -> None:
    ours = our_moons_cells(table, column)
    labels = ["N=1, low \u03ba", "N=1, \u03ba=0.999", "N=2, \u03ba=0.999"]
    values = [v.value for v in MOONS_MMD] + [c.mean for c in ours if c and c.values]
    top = max(values) * 3
    for i, (paper, cell) in enumerate(zip(MOONS_MMD, ours)):
        ax.bar(i - 0.2, paper.value, 0.38, color=PAPER_COLOUR)
        ax.text(i - 0.2, paper.value * 1.15, paper.text.split(" ")[0], ha="center", fontsize=7)
        if cell is None or (not cell.values and not cell.all_unhealthy):
            ax.text(i + 0.2, min(values) / 1.5, "no data", ha="center", fontsize=7, rotation=90)
        elif cell.all_unhealthy:
            # No mean to draw: a hatched bar to the top says "as bad as it gets".
            ax.bar(i + 0.2, top, 0.38, color=UNHEALTHY_FACE, hatch="///",
                   edgecolor=UNHEALTHY_EDGE)
            ax.text(i + 0.2, math.sqrt(top * min(values)), cell.label().split("\n")[0],
                    ha="center", va="center", fontsize=7, rotation=90)
        else:
            ax.bar(i + 0.2, max(cell.mean, min(values) / 2), 0.38, color=OURS_COLOUR)
            ax.text(i + 0.2, cell.mean * 1.15, f"{cell.mean:.3g}", ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(min(values) / 3, top * 1.5)
    ax.set_xticks(range(3))
    ax.set_xticklabels(labels, fontsize=8)
    ax.legend(handles=[Rectangle((0, 0), 1, 1, color=PAPER_COLOUR),
                       Rectangle((0, 0), 1, 1, color=OURS_COLOUR)],
              labels=["paper's MMD (definition not stated)", f"ours: {column or 'n/a'}"],
              fontsize=7, loc="upper left")
    ax.set_title("2-D Moons: paper (third-party notes) vs ours", fontsize=9)
    ax.set_label(PANEL_LABEL)


def _imagenet_axes(ax) -> None:
    numbers = [v.value for v in IMAGENET_FID_1NFE if v.value]
    norm, cmap = LogNorm(min(numbers) / 1.5, max(numbers) * 1.5), colormaps["viridis"]
    orders = sorted({v.order for v in IMAGENET_FID_1NFE})
    for r, order in enumerate(orders):
        for c, kappa in enumerate(IMAGENET_KAPPAS):
            entry = imagenet_cell(order, kappa)
            if entry is None:
                continue
            if entry.value is None:
                # Failures read like our unhealthy cells; a verdict without a number stays plain.
                failed = entry.text in ("diverges", "unstable")
                face, hatch = (UNHEALTHY_FACE, "///") if failed else ("#f2f2f2", None)
                colour = "black"
            else:
                face, hatch, colour = cmap(norm(entry.value)), None, None
                colour = text_colour(face)
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor=face, hatch=hatch,
                                   edgecolor=UNHEALTHY_EDGE if hatch else "white"))
            ax.text(c + 0.5, r + 0.5, entry.text.replace(" (", "\n("), ha="center",
                    va="center", fontsize=8, color=colour)
    ax.set_xlim(0, len(IMAGENET_KAPPAS))
    ax.set_ylim(len(orders), 0)
    ax.set_xticks([i + 0.5 for i in range(len(IMAGENET_KAPPAS))])
    ax.set_xticklabels([f"\u03ba={k:g}" for k in IMAGENET_KAPPAS], fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(orders))])
    ax.set_yticklabels([f"N={o}" for o in orders], fontsize=8)
    ax.tick_params(length=0)
    ax.set_title("ImageNet 256, 1-NFE FID: paper (third-party notes)", fontsize=9)
    ax.set_label(PANEL_LABEL)


def paper_figure(table: pa.Table, column: str | None = None):
    """Two panels: the paper's Moons MMD beside our matching cells, and the ImageNet table."""
    column = column or pick_column(table)
    fig = new_figure(11.0, 3.6)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.2])
    _moons_axes(left, table, column)
    _imagenet_axes(right)
    fig.suptitle("The paper's reported values (via third-party notes; the paper's MMD "
                 "definition is not stated) beside ours", fontsize=10)
    return fig
