"""Sampler points of a frozen checkpoint as a table: `python -m dashboards.sampler_table --run TRIAL_RUN_ID`.

`sweeps/sample_grid.py` scores a trial's final checkpoint at many sampler settings, one MLflow
child run of the trial's run per setting (the schema below: it writes these names, this module
reads them). Here they become a table per (metric, weights, sample count): rows NFE x time grid,
columns sample style x sampling guidance, the best (lowest) value marked; as Markdown, and as an
HTML page with a PNG heatmap that sample_grid logs to the trial's run under `sampler/`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException

from dashboards import htmlpage as H
from dashboards.collect import client_for, default_tracking_uri, search_all
from dashboards.errors import DashboardError
from trainables.metric_names import DEFINITION_PREFIX, definition_tag
from trainables.rcgm.ranges import SAMPLE_STYLE

# The schema of a sampler point's run (docs/images.md, "Sampler sweeps on frozen checkpoints").
KIND = "sampler"  # its rcgm.kind tag; a trial's is "trial", a sweep's "sweep"
POINT_TAG = "rcgm.sampler.point"  # weights, sample count and setting: unique among a trial's points
CHECKPOINT_TAG = "rcgm.sampler.checkpoint"  # the artifact it sampled from, runs:/<trial run>/checkpoint/state.pt
STEP_TAG = "rcgm.sampler.checkpoint_step"  # the training step of that checkpoint
TRIAL_COMMIT_TAG = "rcgm.sampler.trial_commit"  # the commit that trained it (git.commit is the sampler's)
NFE, STYLE, TIMES, TIME_POWER, GUIDANCE = "nfe", "sample_style", "times", "time_power", "sampling_guidance"
WEIGHTS, SAMPLES = "weights", "samples"
METRIC_PREFIX = "sampler_"  # sampler_mmd2, sampler_fd: the family's value at this setting
ARTIFACT_DIR = "sampler"
PARENT_TAG = "mlflow.parentRunId"


def metric_name(family: str) -> str:
    """'mmd2' -> 'sampler_mmd2'."""
    return METRIC_PREFIX + family


@dataclass(frozen=True)
class SamplerPoint:
    """One sampler point's run, as the table needs it."""

    run_id: str
    trial_run_id: str
    nfe: int
    style: str
    times: str
    time_power: str
    guidance: float
    weights: str
    samples: int
    family: str
    value: float | None  # None when the run has no metric (failed, diverged, still running)
    status: str
    commit: str | None = None
    checkpoint_step: str | None = None
    definition: str | None = None


def point_of(run) -> SamplerPoint | None:
    """The point a sampler run records, or None for a run missing the schema's params."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    families = [k[len(METRIC_PREFIX):] for k in metrics if k.startswith(METRIC_PREFIX)]
    family = families[0] if families else next(
        (k[len(DEFINITION_PREFIX):] for k in tags if k.startswith(DEFINITION_PREFIX)), "metric")
    try:
        return SamplerPoint(
            run.info.run_id, tags[PARENT_TAG], int(params[NFE]), params[STYLE], params[TIMES], params[TIME_POWER],
            float(params[GUIDANCE]), params[WEIGHTS], int(params[SAMPLES]), family,
            metrics.get(metric_name(family)), tags.get("status", run.info.status.lower()), tags.get("git.commit"),
            tags.get(STEP_TAG), tags.get(definition_tag(family)))
    except (KeyError, ValueError):
        return None


def sampler_points(tracking_uri: str, experiment_id: str, trial_run_ids: list[str] | None = None) -> list[SamplerPoint]:
    """Every sampler point in the experiment, or only those of the given trial runs."""
    client = client_for(tracking_uri)
    if trial_run_ids is not None and len(trial_run_ids) == 1:
        query = f"tags.`rcgm.kind` = '{KIND}' and tags.`{PARENT_TAG}` = '{trial_run_ids[0]}'"
    else:
        query = f"tags.`rcgm.kind` = '{KIND}'"  # one search, filtered here: MLflow has no IN for tags
    runs, _ = search_all(client, experiment_id, query)
    wanted = None if trial_run_ids is None else set(trial_run_ids)
    points = [point_of(r) for r in runs]
    return [p for p in points if p is not None and (wanted is None or p.trial_run_id in wanted)]


def _times_key(times: str) -> tuple[float, ...]:
    return tuple(float(t) for t in times.split(","))


@dataclass
class PointTable:
    """One trial's points for one metric, weights and sample count: rows (NFE, times), columns (style, w)."""

    family: str
    weights: str
    samples: int
    points: list[SamplerPoint]
    rows: list[tuple[int, str, str]] = field(init=False)
    columns: list[tuple[str, float]] = field(init=False)
    cells: dict = field(init=False)

    def __post_init__(self):
        self.cells = {((p.nfe, p.times, p.time_power), (p.style, p.guidance)): p for p in self.points}
        self.rows = sorted({r for r, _ in self.cells}, key=lambda r: (r[0], _times_key(r[1])))
        order = {s: i for i, s in enumerate(SAMPLE_STYLE.choices)}
        self.columns = sorted({c for _, c in self.cells}, key=lambda c: (order.get(c[0], len(order)), c[0], c[1]))

    @property
    def guided(self) -> bool:
        """Whether the table has a guidance axis (more than w = 1)."""
        return {w for _, w in self.columns} != {1.0}

    def column_label(self, column: tuple[str, float]) -> str:
        """'few', or 'few w=2' when guidance varies."""
        style, w = column
        return f"{style} w={w:g}" if self.guided else style

    @staticmethod
    def times_label(row: tuple[int, str, str]) -> str:
        """'1,0.607,0.3,0.09,0 (rho=1.737)': times to 3 digits (the params keep 6); 1 NFE has no rho."""
        _, times, power = row
        short = ",".join(f"{t:.3g}" for t in _times_key(times))
        return short if power in ("", "none") else f"{short} (\u03c1={power})"

    def value(self, row, column) -> float | None:
        """The finite metric of a cell, else None."""
        point = self.cells.get((row, column))
        ok = point is not None and point.value is not None and math.isfinite(point.value)
        return point.value if ok else None

    def cell_text(self, row, column, digits: int = 4) -> str:
        """'0.00123', a status word ('diverged', 'failed', 'running') or '' for no point."""
        point = self.cells.get((row, column))
        if point is None:
            return ""
        value = self.value(row, column)
        return f"{value:.{digits}g}" if value is not None else point.status

    @property
    def best(self) -> tuple | None:
        """(row, column) of the lowest value (every family here is lower-is-better), or None."""
        found = [(v, r, c) for r in self.rows for c in self.columns if (v := self.value(r, c)) is not None]
        return min(found, key=lambda x: x[0])[1:] if found else None

    def best_text(self) -> str:
        """'best: 0.00123 at 2 NFE, any, t = 1,0.3,0' or a sentence saying there is none."""
        if self.best is None:
            return "best: no finished point yet"
        row, column = self.best
        return (f"best: {self.value(row, column):.4g} at {row[0]} NFE, {self.column_label(column)}, "
                f"t = {self.times_label(row)}")


def point_tables(points: list[SamplerPoint]) -> list[PointTable]:
    """Points split by (family, weights, samples), each group a table."""
    groups: dict[tuple, list[SamplerPoint]] = {}
    for p in points:
        groups.setdefault((p.family, p.weights, p.samples), []).append(p)
    return [PointTable(f, w, n, pts) for (f, w, n), pts in sorted(groups.items())]


def describe(table: PointTable) -> str:
    """What the numbers are: metric, weights, sample count, checkpoint step and the commits."""
    steps = sorted({p.checkpoint_step for p in table.points if p.checkpoint_step})
    commits = sorted({p.commit[:7] for p in table.points if p.commit})
    return (f"{table.family} (lower is better) of {table.samples} samples from the {table.weights} weights of the "
            f"checkpoint at step {', '.join(steps) or 'unknown'}; {len(table.points)} points, sampler commit "
            f"{', '.join(commits) or 'unknown'}")


def markdown_lines(table: PointTable) -> list[str]:
    """A Markdown table: a line per (NFE, times), a column per (style, w), the best value in bold."""
    best = table.best
    labels = [table.column_label(c) for c in table.columns]
    lines = ["| NFE | times | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for row in table.rows:
        cells = []
        for column in table.columns:
            text = table.cell_text(row, column)
            cells.append(f"**{text}**" if (row, column) == best else text)
        lines.append(f"| {row[0]} | {table.times_label(row)} | " + " | ".join(cells) + " |")
    return lines


def trial_markdown(tracking_uri: str, trial_run_id: str) -> str:
    """Provenance and the tables of one trial run's sampler points."""
    trial, points = _trial_and_points(tracking_uri, trial_run_id)
    out = []
    for table in point_tables(points):
        out += [f"Sampler grid of trial run {trial.info.run_name} ({trial_run_id}): {describe(table)}.", ""]
        out += markdown_lines(table) + ["", table.best_text() + " (bold)", ""]
    return "\n".join(out).rstrip() + "\n"


def trial_summary(tracking_uri: str, trial_run_id: str) -> str:
    """One line per table of a trial's points: its name, run id and best setting."""
    trial, points = _trial_and_points(tracking_uri, trial_run_id)
    return "".join(f"{trial.info.run_name} ({trial_run_id}): {t.family}, {t.weights} weights, {t.samples} samples, "
                   f"{t.best_text()}\n" for t in point_tables(points))


def _trial_and_points(tracking_uri: str, trial_run_id: str):
    """The trial's run and its sampler points; a one-line DashboardError when there is no such run or no point."""
    client = client_for(tracking_uri)
    try:
        trial = client.get_run(trial_run_id)
    except MlflowException:
        raise DashboardError(f"no MLflow run {trial_run_id!r} at {tracking_uri}: pass a trial's run id to --run "
                             "(the MLflow UI shows it) or check --tracking-uri") from None
    points = sampler_points(tracking_uri, trial.info.experiment_id, [trial_run_id])
    if not points:
        raise DashboardError(f"trial run {trial_run_id} has no sampler points yet: run "
                             f"`python sweeps/sample_grid.py --run {trial_run_id}` first")
    return trial, points


def html_rows(table: PointTable) -> tuple[list[dict], list[str], set[tuple[int, str]]]:
    """(rows, columns, marked) for htmlpage.table: numbers as floats, statuses as words, the best marked."""
    labels = [table.column_label(c) for c in table.columns]
    rows, marked = [], set()
    for i, row in enumerate(table.rows):
        out = {"NFE": row[0], "times": table.times_label(row)}
        for column, label in zip(table.columns, labels):
            value = table.value(row, column)
            out[label] = value if value is not None else table.cell_text(row, column)
            if (row, column) == table.best:
                marked.add((i, label))
        rows.append(out)
    return rows, ["NFE", "times", *labels], marked


def heatmap_figure(table: PointTable, title: str):
    """Cells coloured by the metric on a log scale, the value written in each, the best outlined."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize, to_rgba
    from matplotlib.patches import Rectangle

    from dashboards.figures import UNHEALTHY_FACE, new_figure, text_colour

    values = [v for r in table.rows for c in table.columns if (v := table.value(r, c)) is not None]
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values):
        lo, hi = min(positive), max(positive)
        norm = LogNorm(lo / 1.5, hi * 1.5) if hi / lo < 1.5 else LogNorm(lo, hi)  # a flat scale paints one colour
    else:
        norm = Normalize(min(values, default=0.0), max(values, default=1.0))  # an unbiased MMD^2 can dip below 0
    cmap = colormaps["viridis"]
    ncols, nrows = len(table.columns), len(table.rows)
    fig = new_figure(max(2.2 + 1.3 * ncols, 5.0), 1.2 + 0.45 * nrows)
    ax = fig.subplots()
    for y, row in enumerate(table.rows):
        for x, column in enumerate(table.columns):
            value = table.value(row, column)
            if value is not None:
                face = cmap(norm(max(value, norm.vmin)))
            else:  # grey: the point ran and has no number (failed, diverged); white: never run
                face = to_rgba(UNHEALTHY_FACE if (row, column) in table.cells else "white")
            best = (row, column) == table.best
            ax.add_patch(Rectangle((x, y), 1, 1, facecolor=face, edgecolor="red" if best else "white",
                                   linewidth=2.5 if best else 1.0))
            ax.text(x + 0.5, y + 0.5, table.cell_text(row, column, 3), ha="center", va="center", fontsize=8,
                    color=text_colour(face), fontweight="bold" if best else "normal")
    ax.set_xlim(0, ncols)
    ax.set_ylim(nrows, 0)
    ax.set_xticks([i + 0.5 for i in range(ncols)], [table.column_label(c) for c in table.columns], fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(nrows)], [f"{r[0]} NFE: {table.times_label(r)}" for r in table.rows], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title + "\nred box = best (lowest)", fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(table.family + (" (log scale)" if isinstance(norm, LogNorm) else ""), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def table_blocks(table: PointTable, title: str, png: Path, files: list[Path]) -> list[str]:
    """HTML blocks of one table: what it is, the heatmap (written to png), the numbers with the best marked."""
    from dashboards.figures import save

    files.append(save(heatmap_figure(table, title), png))
    rows, columns, marked = html_rows(table)
    blocks = [H.paragraph(describe(table), "meta"), H.image(png, title), H.table(rows, columns, marked),
              H.paragraph(table.best_text() + " (highlighted)")]
    definition = next((p.definition for p in table.points if p.definition), None)
    if definition:
        blocks.append(H.paragraph(f"{table.family}: {definition}"))
    return blocks


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def trial_blocks(trial_name: str, points: list[SamplerPoint], out: Path, prefix: str, files: list[Path]) -> list[str]:
    """Every table of one trial's points, each with its heatmap."""
    blocks = []
    for table in point_tables(points):
        title = f"{trial_name}: {table.family}, {table.weights} weights, {table.samples} samples"
        png = out / f"{prefix}sampler_{_safe(trial_name)}_{table.family}_{table.weights}_n{table.samples}.png"
        blocks += [H.heading(title, 3)] + table_blocks(table, title, png, files)
    return blocks


def write_trial_page(tracking_uri: str, trial_run_id: str, out_dir: str | Path, log: bool = True) -> Path:
    """Write the trial's sampler page (HTML + PNG heatmaps) under out_dir; log them to the trial's run under sampler/."""
    trial, points = _trial_and_points(tracking_uri, trial_run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    name = trial.info.run_name or trial_run_id
    intro = H.paragraph(f"Trial run {name} ({trial_run_id}), experiment id {trial.info.experiment_id}, tracking URI "
                        f"{tracking_uri}. Each cell is one MLflow child run of the trial's run.", "meta")
    blocks = [intro] + trial_blocks(name, points, out, "", files)
    page = out / "sampler.html"
    page.write_text(H.page(f"Sampler settings of {name}", blocks), encoding="utf-8")
    files.append(page)
    if log:
        client = client_for(tracking_uri)
        for path in files:
            client.log_artifact(trial_run_id, str(path), ARTIFACT_DIR)
    return page


def report_blocks(tracking_uri: str, experiment_id: str, trials: dict[str, str], out: Path, prefix: str,
                  files: list[Path]) -> list[str]:
    """The sweep report's sampler section (trials: run id -> run name); nothing when no trial has points."""
    points = sampler_points(tracking_uri, experiment_id, list(trials))
    if not points:
        return []
    by_trial: dict[str, list[SamplerPoint]] = {}
    for p in points:
        by_trial.setdefault(p.trial_run_id, []).append(p)
    blocks = [H.heading("Sampler settings on frozen checkpoints", 3),
              H.paragraph("Each trial's final checkpoint scored at other sampler settings by sweeps/sample_grid.py "
                          "(rows NFE x time grid, columns sample style x sampling guidance; best highlighted).")]
    for run_id in sorted(by_trial, key=lambda r: trials.get(r) or r):
        blocks += trial_blocks(trials.get(run_id) or run_id, by_trial[run_id], out, prefix, files)
    return blocks


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print the Markdown tables, or exit 2 with one line saying what to do."""
    ap = argparse.ArgumentParser(prog="python -m dashboards.sampler_table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="a trial's MLflow run id (repeatable)")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    args = ap.parse_args(argv)
    try:
        print("\n".join(trial_markdown(args.tracking_uri or default_tracking_uri(), run) for run in args.run), end="")
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
