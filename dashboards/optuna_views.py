"""Optuna sweeps: rebuild a study from the trial table, then history, parallel coordinates, importance."""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from optuna.distributions import (CategoricalDistribution, FloatDistribution, IntDistribution)
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState, create_trial

from dashboards import columns as C
from dashboards.figures import PANEL_LABEL, new_figure
from dashboards.ordering import pick_column

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Params that are not search dimensions even when they vary.
NOT_SEARCHED = {C.param_col(p) for p in C.REPLICATE_PARAMS}


def objective_column(table: pa.Table, parent_tags: dict | None = None) -> tuple[str | None, str]:
    """(column, direction): from the parent's rcgm.metric / rcgm.mode tags, else the default."""
    tags = parent_tags or {}
    metric, mode = tags.get("rcgm.metric"), tags.get("rcgm.mode", "min")
    direction = "maximize" if mode.lower().startswith("max") else "minimize"
    if metric:
        for candidate in (metric, "final." + metric, "best." + metric.removeprefix("best_")):
            if candidate in table.column_names:
                return candidate, direction
    return pick_column(table), direction


def _distribution(values: list):
    """An Optuna distribution spanning the observed values of one param column."""
    present = [v for v in values if v is not None]
    if isinstance(present[0], str):
        return CategoricalDistribution(sorted(set(present)))
    lo, hi = min(present), max(present)
    if isinstance(present[0], int) and not isinstance(present[0], bool):
        return IntDistribution(int(lo), int(hi))
    # lr-like spans read better (and import better) on a log axis
    return FloatDistribution(float(lo), float(hi), log=lo > 0 and hi / lo >= 20)


def searched_params(table: pa.Table) -> dict[str, object]:
    """param name -> distribution, for each param that varies across the sweep's trials."""
    out = {}
    for name in table.column_names:
        if not name.startswith("params.") or name in NOT_SEARCHED:
            continue
        values = table.column(name).to_pylist()
        if len({v for v in values if v is not None}) > 1:
            out[name[len("params."):]] = _distribution(values)
    return out


def build_study(table: pa.Table, column: str, direction: str = "minimize") -> optuna.Study:
    """An in-memory study with one FrozenTrial per row (failed when unhealthy or valueless)."""
    study = optuna.create_study(direction=direction)
    dists = searched_params(table)
    rows = table.to_pylist()
    for row in rows:
        params = {p: row[C.param_col(p)] for p in dists if row[C.param_col(p)] is not None}
        value = row.get(column)
        ok = row["status"] not in C.UNHEALTHY and C.finite(value)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE if ok else TrialState.FAIL, value=value if ok else None,
            params=params, distributions={p: dists[p] for p in params},
            user_attrs={"run_id": row["run_id"], "status": row["status"]}))
    return study


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """PED-ANOVA importances (Optuna's default), or {} and the reason they cannot be computed."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 4:
        return {}, f"only {len(done)} completed trial(s): importance needs at least 4"
    if not study.best_trial.params:
        return {}, "no searched parameter varies"
    # The default top-10% quantile holds under 2 trials in small studies; widen it to ~3 trials.
    quantile = min(0.5, max(0.1, 3 / len(done)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile))
    return dict(result), None


def _values(study):
    return [(t.number, t.value, t.state == TrialState.COMPLETE) for t in study.trials]


def history_figure(study: optuna.Study, column: str):
    """Objective per trial in launch order, with the best-so-far line; failed trials as red x."""
    fig = new_figure(6.5, 3.6)
    ax = fig.subplots()
    points = _values(study)
    good = [(n, v) for n, v, ok in points if ok]
    if good:
        xs, ys = zip(*good)
        ax.scatter(xs, ys, s=18, color="#3182bd", label="trial")
        pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        best = [pick(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, best, where="post", color="#e6550d", label="best so far")
        if all(y > 0 for y in ys):
            ax.set_yscale("log")
        top = max(ys)
        bad = [n for n, _, ok in points if not ok]
        if bad:
            ax.scatter(bad, [top] * len(bad), marker="x", color="red",
                       label="unhealthy / no value")
    ax.set_xlabel("trial (launch order)", fontsize=8)
    ax.set_ylabel(column, fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("Optimisation history", fontsize=9)
    ax.set_label(PANEL_LABEL)
    return fig


def _axis_position(values: list, dist) -> list[float]:
    """Map a param's values to [0, 1] along its own parallel-coordinates axis."""
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        return [choices.index(v) / max(len(choices) - 1, 1) if v is not None else math.nan
                for v in values]
    lo, hi = dist.low, dist.high
    if getattr(dist, "log", False):
        lo, hi = math.log(lo), math.log(hi)
        values = [math.log(v) if v is not None else None for v in values]
    span = (hi - lo) or 1.0
    return [(v - lo) / span if v is not None else math.nan for v in values]


def parallel_figure(study: optuna.Study, column: str):
    """Parallel coordinates: an axis per searched param plus the objective, lines coloured by it."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({p for t in done for p in t.params})
    fig = new_figure(max(2.0 * (len(names) + 1), 6.5), 3.8)
    ax = fig.subplots()
    ax.set_label(PANEL_LABEL)
    if not done:
        ax.text(0.5, 0.5, "no completed trials", ha="center")
        return fig
    values = [t.value for t in done]
    positive = all(v > 0 for v in values)
    norm = LogNorm(min(values), max(values)) if positive and min(values) < max(values) else \
        Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    cmap = colormaps["viridis_r"]  # better (lower) objectives in bright yellow
    columns, ends = [], []
    for name in names:
        dist = next(t.distributions[name] for t in done if name in t.distributions)
        columns.append(_axis_position([t.params.get(name) for t in done], dist))
        ends.append((dist.choices[0], dist.choices[-1]) if isinstance(dist, CategoricalDistribution)
                    else (f"{dist.low:.3g}", f"{dist.high:.3g}"))
    ends.append((f"{min(values):.3g}", f"{max(values):.3g}"))
    objective = [float(norm(v)) for v in values]
    columns.append(objective)
    xs = np.arange(len(columns))
    for i, value in enumerate(values):
        ax.plot(xs, [col[i] for col in columns], color=cmap(norm(value)), alpha=0.8, linewidth=1.2)
    for x, (low, high) in zip(xs, ends):
        ax.axvline(x, color="#555555", linewidth=0.8)
        ax.text(x, 1.02, str(high), ha="center", va="bottom", fontsize=7)
        ax.text(x, -0.02, str(low), ha="center", va="top", fontsize=7)
    ax.set_ylim(-0.12, 1.12)
    ax.set_xticks(xs)
    ax.set_xticklabels(names + [column], fontsize=8)
    ax.set_yticks([])
    ax.set_title("Parallel coordinates (each axis spans its observed range)", fontsize=9)
    return fig


def importance_figure(result: dict[str, float], note: str | None):
    """Horizontal bars of parameter importance, or the reason there are none."""
    fig = new_figure(6.5, 0.8 + 0.4 * max(len(result), 2))
    ax = fig.subplots()
    ax.set_label(PANEL_LABEL)
    if not result:
        ax.text(0.5, 0.5, note or "no importances", ha="center", va="center", fontsize=9)
        ax.set_axis_off()
        return fig
    names = list(result)[::-1]
    ax.barh(names, [result[n] for n in names], color="#3182bd")
    for y, name in enumerate(names):
        ax.text(result[name], y, f" {result[name]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.15 * max(result.values()))
    ax.tick_params(labelsize=8)
    ax.set_title("Parameter importance (Optuna PED-ANOVA, normalised)", fontsize=9)
    return fig
