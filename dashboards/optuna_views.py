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
MAX_INTEGER_MARKS = 12  # an integer axis this short labels every value (order 1..6)


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


# Params the views show through a transform: name -> (shown name, transform, log axis). kappa's
# useful values crowd towards 1 (0.9, 0.99, 0.999); 1 - kappa on a log axis spreads them, as the
# order_kappa search (sweeps/spaces.py) samples it.
SHOWN_AS = {"kappa": ("1 - kappa", lambda kappa: 1.0 - kappa, True)}


def _distribution(values: list, log: bool | None = None):
    """An Optuna distribution spanning the observed values of one param column (log: None = by its span)."""
    present = [v for v in values if v is not None]
    if isinstance(present[0], str):
        return CategoricalDistribution(sorted(set(present)))
    lo, hi = min(present), max(present)
    if isinstance(present[0], int) and not isinstance(present[0], bool):
        return IntDistribution(int(lo), int(hi))
    if log is None:
        log = hi / lo >= 20 if lo > 0 else False  # lr-like spans read better (and import better) on a log axis
    return FloatDistribution(float(lo), float(hi), log=log and lo > 0)


def _searched(table: pa.Table) -> dict[str, tuple[object, list]]:
    """shown name -> (distribution, value per row), for each param that varies across the sweep's trials."""
    out = {}
    for col in table.column_names:
        if not col.startswith("params.") or col in NOT_SEARCHED:
            continue
        values = table.column(col).to_pylist()
        if len({v for v in values if v is not None}) < 2:
            continue
        name, log = col[len("params."):], None
        if name in SHOWN_AS:
            name, transform, log = SHOWN_AS[name]
            values = [None if v is None else transform(v) for v in values]
        out[name] = (_distribution(values, log), values)
    return out


def params_text(params: dict) -> str:
    """A trial's params for a sentence: 4 significant digits, a shown param with its own value (1 - kappa=0.001 (kappa 0.999))."""
    own = {shown: (name, transform) for name, (shown, transform, _) in SHOWN_AS.items()}
    parts = []
    for name, value in params.items():
        text = f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        if name in own and isinstance(value, float):
            # 1 - x is its own inverse: the shown value's transform gives back the param.
            param, transform = own[name]
            text += f" ({param} {transform(value):.6g})"
        parts.append(text)
    return ", ".join(parts)


def build_study(table: pa.Table, column: str, direction: str = "minimize") -> optuna.Study:
    """An in-memory study with one FrozenTrial per row (failed when unhealthy or valueless)."""
    study = optuna.create_study(direction=direction)
    searched = _searched(table)
    for i, row in enumerate(table.to_pylist()):
        params = {p: values[i] for p, (_, values) in searched.items() if values[i] is not None}
        value = row.get(column)
        ok = row["status"] not in C.UNHEALTHY and C.finite(value)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE if ok else TrialState.FAIL, value=value if ok else None,
            params=params, distributions={p: searched[p][0] for p in params},
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


def _inner_marks(dist) -> list[tuple[float, str]]:
    """(position, label) inside a param's axis: each integer of a short integer range, each decade of a log axis."""
    if isinstance(dist, IntDistribution) and dist.high - dist.low <= MAX_INTEGER_MARKS:
        inner = list(range(dist.low + 1, dist.high))
    elif isinstance(dist, FloatDistribution) and dist.log:
        decades = range(math.floor(math.log10(dist.low)) + 1, math.ceil(math.log10(dist.high)))
        inner = [v for v in (10.0 ** k for k in decades) if dist.low < v < dist.high]
    else:
        return []
    return list(zip(_axis_position(inner, dist), (f"{v:g}" for v in inner)))


def _axis_title(name: str, dist) -> str:
    """A parallel-coordinates axis' name, saying when it counts integers or runs on a log scale."""
    if isinstance(dist, IntDistribution):
        return f"{name}\n(integer)"
    if isinstance(dist, FloatDistribution) and dist.log:
        return f"{name}\n(log scale)"
    return name


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
    columns, ends, inner, titles = [], [], [], []
    for name in names:
        dist = next(t.distributions[name] for t in done if name in t.distributions)
        columns.append(_axis_position([t.params.get(name) for t in done], dist))
        ends.append((dist.choices[0], dist.choices[-1]) if isinstance(dist, CategoricalDistribution)
                    else (f"{dist.low:.3g}", f"{dist.high:.3g}"))
        inner.append(_inner_marks(dist))
        titles.append(_axis_title(name, dist))
    ends.append((f"{min(values):.3g}", f"{max(values):.3g}"))
    inner.append([])
    objective = [float(norm(v)) for v in values]
    columns.append(objective)
    xs = np.arange(len(columns))
    for i, value in enumerate(values):
        ax.plot(xs, [col[i] for col in columns], color=cmap(norm(value)), alpha=0.8, linewidth=1.2)
    for x, (low, high), marks in zip(xs, ends, inner):
        ax.axvline(x, color="#555555", linewidth=0.8)
        ax.text(x, 1.02, str(high), ha="center", va="bottom", fontsize=7)
        ax.text(x, -0.02, str(low), ha="center", va="top", fontsize=7)
        for position, label in marks:
            ax.plot([x - 0.03, x], [position, position], color="#555555", linewidth=0.8)
            ax.text(x - 0.05, position, label, ha="right", va="center", fontsize=6, color="#333333")
    ax.set_ylim(-0.12, 1.12)
    ax.set_xticks(xs)
    ax.set_xticklabels(titles + [column], fontsize=8)
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
