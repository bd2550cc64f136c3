"""kappa (columns) x row heatmaps (RCGM's orders N, then any first-order peers): a panel per kind (final, best) and NFE."""

from __future__ import annotations

import pyarrow as pa
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

from dashboards import columns as C
from dashboards.cells import Grid, build_grid, row_label
from dashboards.figures import (PANEL_LABEL, UNHEALTHY_EDGE, UNHEALTHY_FACE, new_figure,
                                text_colour)

KINDS = ("final", "best")
CMAP = colormaps["viridis"]


def kind_column(kind: str, family: str, nfe: int) -> str:
    """Table column of a kind ("final" or "best") of a family at an NFE."""
    return C.final_col(family, nfe) if kind == "final" else C.best_col(family, nfe)


def log_norm(grids: list[Grid]) -> LogNorm:
    """One log colour scale for all panels of a family, so a 100x worse cell still reads."""
    positive = [v for g in grids for v in g.values() if v > 0]
    if not positive:
        return LogNorm(1e-3, 1.0)
    lo, hi = min(positive), max(positive)
    if hi / lo < 1.5:  # a flat scale would paint every cell the same colour
        lo, hi = lo / 1.5, hi * 1.5
    return LogNorm(lo, hi)


def _draw_cell(ax, x, y, width, cell, norm):
    if cell is None:
        ax.add_patch(Rectangle((x, y), width, 1, facecolor="white", edgecolor="#dddddd"))
        ax.text(x + width / 2, y + 0.5, "no runs", ha="center", va="center", fontsize=8,
                color="#999999")
        return
    if cell.all_unhealthy:
        face, hatch, colour = UNHEALTHY_FACE, "///", "black"
    elif not cell.values:
        face, hatch, colour = "#eeeeee", None, "black"
    else:
        # Cells at or below zero (an unbiased MMD^2 can be) take the bottom colour; text is exact.
        face = CMAP(norm(max(cell.mean, norm.vmin)))
        hatch, colour = None, text_colour(face)
    ax.add_patch(Rectangle((x, y), width, 1, facecolor=face, hatch=hatch,
                           edgecolor=UNHEALTHY_EDGE if hatch else "white", linewidth=1.0))
    ax.text(x + width / 2, y + 0.5, cell.label(), ha="center", va="center", fontsize=8,
            color=colour, linespacing=1.25)


def draw_grid(ax, grid: Grid, norm: LogNorm, title: str) -> None:
    """Draw one panel: a rectangle per cell, merged rows spanning every kappa column."""
    ncols = max(len(grid.kappas), 1)
    for y, (objective, order) in enumerate(grid.rows):
        if (objective, order) in grid.merged_rows:
            _draw_cell(ax, 0, y, ncols, grid.cell(order, None, objective), norm)
            continue
        for col, kappa in enumerate(grid.kappas):
            _draw_cell(ax, col, y, 1, grid.cell(order, kappa, objective), norm)
    ax.set_xlim(0, ncols)
    ax.set_ylim(len(grid.rows), 0)  # first order on top, as in the paper's table
    ax.set_xticks([i + 0.5 for i in range(ncols)])
    ax.set_xticklabels([f"\u03ba={k:g}" for k in grid.kappas] or ["\u03ba n/a"], fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(grid.rows))])
    ax.set_yticklabels([row_label(r) + (" (any \u03ba)" if r in grid.merged_rows else "")
                        for r in grid.rows], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)
    ax.set_label(PANEL_LABEL)


def family_grids(table: pa.Table, family: str, nfes: list[int]) -> dict[tuple[str, int], Grid]:
    """Grids of every (kind, NFE) of a family that has a column in the table."""
    out = {}
    for kind in KINDS:
        for nfe in nfes:
            col = kind_column(kind, family, nfe)
            if col in table.column_names:
                out[(kind, nfe)] = build_grid(table, col)
    return out


def heatmap_figure(table: pa.Table, family: str, nfes: list[int], title: str = ""):
    """Figure with panels (rows: final, best; columns: NFE) sharing one log colour scale."""
    grids = family_grids(table, family, nfes)
    kinds = [k for k in KINDS if any(key[0] == k for key in grids)]
    any_grid = next(iter(grids.values()))
    ncols = max(len(any_grid.kappas), 1)
    panel_w, panel_h = 1.0 + 1.25 * ncols, 0.9 + 0.8 * max(len(any_grid.rows), 1)
    fig = new_figure(max(panel_w * len(nfes) + 1.6, 6.5), panel_h * len(kinds) + 0.9)
    norm = log_norm(list(grids.values()))
    axes = fig.subplots(len(kinds), len(nfes), squeeze=False)
    for r, kind in enumerate(kinds):
        for c, nfe in enumerate(nfes):
            ax = axes[r][c]
            grid = grids.get((kind, nfe))
            if grid is None:
                ax.set_axis_off()
                continue
            draw_grid(ax, grid, norm, f"{kind} {C.metric_key(family, nfe)}")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=axes.ravel().tolist(),
                       fraction=0.05, pad=0.02)
    bar.set_label(f"{family} (mean over seeds, log scale)", fontsize=8)
    fig.suptitle(title or f"{family}: mean \u00b1 sample std over seeds (n counted)\n"
                 "hatched grey = every trial unhealthy", fontsize=10)
    return fig


def unplaced_note(grid: Grid) -> str | None:
    """A sentence for the report when rows could not be placed or cells pool several configs."""
    parts = []
    if grid.dropped:
        parts.append(f"{grid.dropped} trial(s) lack an order or kappa and are not shown")
    if grid.pooled_params:
        parts.append("cells pool trials that differ in " + ", ".join(grid.pooled_params))
    return "; ".join(parts) or None

