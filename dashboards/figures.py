"""Shared figure plumbing: pyplot-free Figures (Agg canvas, no global state) and PNG output."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
UNHEALTHY_FACE = "#c8c8c8"
UNHEALTHY_EDGE = "#7a7a7a"
PANEL_LABEL = "panel"  # set on data axes so a figure's panels can be told from its colourbars


def new_figure(width: float, height: float) -> Figure:
    """A Figure drawn by Agg; never touches pyplot, so reports can be built from any thread."""
    # Constrained layout keeps long tick labels and colourbars inside narrow figures.
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def panels(fig: Figure) -> list:
    """The data axes of a figure (colourbars and decorations left out)."""
    return [ax for ax in fig.axes if ax.get_label() == PANEL_LABEL]


def save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def text_colour(rgba) -> str:
    """Black or white, whichever reads better on the given face colour."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
