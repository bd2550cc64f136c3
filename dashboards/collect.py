"""MLflow trial runs of a sweep, sweeps or an experiment -> one pyarrow table -> parquet."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dashboards import columns as C
from trainables import locations
from trainables.metric_names import DEFINITION_PREFIX
from dashboards.errors import (DashboardError, ExperimentNotFound, MissingMetricsWarning,
                               NoTrialRuns, SweepNotFound, TrackingStoreNotFound)

PAGE_SIZE = 1000
_PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class Parent:
    """One sweep's parent run: where the report is logged and what kind of search it ran."""

    run_id: str
    sweep: str
    search: str | None
    start_time: int | None
    tags: dict = field(default_factory=dict, compare=False)


@dataclass
class Collection:
    """The trial table plus what the report needs to say about how it was read."""

    table: pa.Table
    parents: list[Parent]
    missing: dict[str, list[str]]
    pages: int
    label: str
    experiment: str
    tracking_uri: str
    notes: list[str] = field(default_factory=list)


def default_tracking_uri() -> str:
    """The URI used when none is given: the sweeps' own ($MLFLOW_TRACKING_URI, else SQLite under runs/)."""
    return locations.default_tracking_uri()


def check_store(tracking_uri: str) -> None:
    """Refuse a missing SQLite file: MLflow would silently create an empty database there."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return
    path = tracking_uri[len("sqlite:///"):]
    if path and path != ":memory:" and not Path(path).exists():
        raise TrackingStoreNotFound(
            f"no MLflow database at {Path(path).resolve()} (tracking URI {tracking_uri}); run a "
            "sweep first, run from the repo root, or pass --tracking-uri / set MLFLOW_TRACKING_URI")


def client_for(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for the URI, after checking a local store exists."""
    check_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _quote(value: str) -> str:
    """A string literal for an MLflow filter (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def search_all(client: MlflowClient, experiment_id: str, filter_string: str,
               page_size: int = PAGE_SIZE) -> tuple[list, int]:
    """Every run matching the filter, following page tokens; returns (runs, pages read)."""
    runs, pages, token = [], 0, None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=page_size, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        runs.extend(page)
        pages += 1
        token = page.token
        if not token:
            return runs, pages


def _experiment(client: MlflowClient, name: str, tracking_uri: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ExperimentNotFound(
            f"no MLflow experiment named {name!r} at {tracking_uri}; known experiments: "
            f"{', '.join(known) or 'none'}. Pass --experiment with one of them or check "
            "--tracking-uri / MLFLOW_TRACKING_URI")
    return exp


def _parent_of(run) -> Parent:
    tags = run.data.tags
    return Parent(run.info.run_id, tags.get("rcgm.sweep") or run.info.run_name or run.info.run_id,
                  tags.get("rcgm.search"), run.info.start_time, dict(tags))


def _sweep_parents(client, exp, page_size) -> tuple[list[Parent], int]:
    runs, pages = search_all(client, exp.experiment_id, "tags.`rcgm.kind` = 'sweep'", page_size)
    return [_parent_of(r) for r in runs], pages


def _parents_by_id(client, exp, run_ids: list[str]) -> list[Parent]:
    parents = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            raise SweepNotFound(f"no MLflow run with id {run_id!r} ({err.error_code}); copy the "
                                "sweep's parent run id from the MLflow UI or use --sweep NAME") from None
        if run.info.experiment_id != exp.experiment_id:
            raise SweepNotFound(f"run {run_id} belongs to experiment id {run.info.experiment_id}, "
                                f"not {exp.name!r} (id {exp.experiment_id}); pass the matching "
                                "--experiment")
        parents.append(_parent_of(run))
    return parents


def _parents_by_name(client, exp, names: list[str], page_size) -> tuple[list[Parent], int, list[str]]:
    """The newest parent run of each sweep name (a re-run under the same name supersedes)."""
    every, pages = _sweep_parents(client, exp, page_size)
    chosen, notes = [], []
    for name in names:
        same = [p for p in every if p.sweep == name]
        if not same:
            known = sorted({p.sweep for p in every})
            raise SweepNotFound(
                f"no sweep named {name!r} in experiment {exp.name!r}; known sweeps: "
                f"{', '.join(known) or 'none'}. Pass --sweep with one of them")
        same.sort(key=lambda p: p.start_time or 0)
        if len(same) > 1:
            note = (f"{len(same)} parent runs are named {name!r}; using the newest "
                    f"({same[-1].run_id}); pass --parent-run-id to pick another")
            warnings.warn(note, stacklevel=3)
            notes.append(note)
        chosen.append(same[-1])
    return chosen, pages, notes


def _typed_params(runs) -> dict[str, pa.DataType]:
    """A type per param name: the schema's where known, else what all values parse as."""
    names = sorted({k for r in runs for k in r.data.params})
    types = {}
    for name in names:
        values = [r.data.params.get(name) for r in runs]
        types[name] = C.param_type(name) or C.infer_param_type(values)
    return types


def _metric_column(key: str) -> str | None:
    """Where a run-level metric goes in the table; None for the meta and cost metrics."""
    if key in ("wall_time_s", "final_step") or key in C.COST_METRICS:
        return None
    if C.parse_nfe_key(key):
        return "final." + key
    if key.startswith("best_") and C.parse_nfe_key(key[len("best_"):]):
        return "best." + key[len("best_"):]
    if key.startswith("noise_"):
        return "noise." + key[len("noise_"):]
    return "metrics." + key


def _row(run, parents: dict[str, Parent]) -> dict:
    info, tags, metrics = run.info, run.data.tags, run.data.metrics
    parent_id = tags.get(_PARENT_TAG)
    parent = parents.get(parent_id)
    wall = metrics.get("wall_time_s")
    if wall is None and info.start_time and info.end_time:  # killed trials never log it
        wall = (info.end_time - info.start_time) / 1000.0
    final_step = metrics.get("final_step")
    row = {
        "run_id": info.run_id, "run_name": info.run_name, "parent_run_id": parent_id,
        "sweep": tags.get("rcgm.sweep") or (parent.sweep if parent else None),
        "search": parent.search if parent else None, "experiment_id": info.experiment_id,
        "trial_key": tags.get("rcgm.trial_key"), "ray_trial_id": tags.get("ray.trial_id"),
        "status": tags.get("status") or C.MLFLOW_STATUS.get(info.status, info.status.lower()),
        "mlflow_status": info.status, "start_time": info.start_time, "end_time": info.end_time,
        "wall_time_s": wall, "final_step": int(final_step) if final_step is not None else None,
        "git_commit": tags.get("git.commit"), "git_dirty": C.parse_bool(tags.get("git.dirty")),
    }
    row.update({name: metrics.get(name) for name in C.COST_METRICS})
    row.update({name: tags.get(tag) for name, tag in C.COST_TAGS.items()})
    for key, value in metrics.items():
        col = _metric_column(key)
        if col:
            row[col] = float(value)
    for key, value in tags.items():
        if key.startswith(DEFINITION_PREFIX):
            row["definition." + key[len(DEFINITION_PREFIX):]] = value
    return row


def _expected(row: dict, run, families: set[str], nfes_seen: dict[str, set[int]]) -> list[str]:
    """Columns the schema promises for this trial that it lacks."""
    nfe_text = run.data.params.get("nfe")
    own = None
    if nfe_text:
        try:
            own = {int(x) for x in nfe_text.split(",") if x.strip()}
        except ValueError:
            own = None
    wanted = []
    for family in sorted(families):
        for nfe in sorted(own if own is not None else nfes_seen.get(family, set())):
            wanted += [C.final_col(family, nfe), C.best_col(family, nfe)]
    missing = [c for c in wanted if c not in row]
    missing += [k for k in ("wall_time_s", "final_step") if k not in run.data.metrics]
    return missing


def _missing_metrics(rows, runs) -> dict[str, list[str]]:
    families_by_sweep: dict[str | None, set[str]] = {}
    nfes_seen: dict[str, set[int]] = {}
    for row in rows:
        fams = families_by_sweep.setdefault(row["sweep"], set())
        for col in row:
            if col.startswith("final."):
                family, nfe = C.parse_nfe_key(col[len("final."):])
                fams.add(family)
                nfes_seen.setdefault(family, set()).add(nfe)
            elif col.startswith("definition."):
                fams.add(col[len("definition."):])
    missing = {}
    for row, run in zip(rows, runs):
        lacking = _expected(row, run, families_by_sweep[row["sweep"]], nfes_seen)
        if lacking:
            missing[row["run_id"]] = lacking
    return missing


def _warn_missing(missing: dict[str, list[str]], rows: list[dict]) -> None:
    by_id = {r["run_id"]: r for r in rows}
    shown = []
    for run_id, cols in list(missing.items())[:10]:
        r = by_id[run_id]
        shown.append(f"{r['run_name']} ({run_id}, status {r['status']}): {', '.join(cols)}")
    more = f"; and {len(missing) - 10} more" if len(missing) > 10 else ""
    warnings.warn(MissingMetricsWarning(
        f"{len(missing)} trial run(s) lack metrics; their heatmap cells skip them: "
        + "; ".join(shown) + more), stacklevel=3)


def _build_table(rows: list[dict], param_types: dict[str, pa.DataType], runs) -> pa.Table:
    arrays, fields = [], []
    fixed = C.META_FIELDS + C.COST_FIELDS
    for name, dtype in fixed:
        arrays.append(pa.array([r.get(name) for r in rows], type=dtype))
        fields.append(pa.field(name, dtype))
    for name, dtype in param_types.items():
        values = [C.convert_param(run.data.params.get(name), dtype) for run in runs]
        arrays.append(pa.array(values, type=dtype))
        fields.append(pa.field(C.param_col(name), dtype))
    extra = sorted({c for r in rows for c in r} - {n for n, _ in fixed})
    order = ("final.", "best.", "noise.", "metrics.", "definition.")
    extra.sort(key=lambda c: (next(i for i, p in enumerate(order) if c.startswith(p)), c))
    for name in extra:
        dtype = pa.string() if name.startswith("definition.") else pa.float64()
        arrays.append(pa.array([r.get(name) for r in rows], type=dtype))
        fields.append(pa.field(name, dtype))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    # A stable order makes the same store read identically over sqlite:// and http://.
    return table.sort_by([("sweep", "ascending"), ("start_time", "ascending"),
                          ("run_id", "ascending")])


def collect(tracking_uri: str, experiment: str, parent_run_ids: list[str] | None = None,
            sweeps: list[str] | None = None, page_size: int = PAGE_SIZE) -> Collection:
    """Read the trial runs of the given parents, sweeps, or (neither) the whole experiment."""
    client = client_for(tracking_uri)
    exp = _experiment(client, experiment, tracking_uri)
    notes: list[str] = []
    if parent_run_ids:
        parents, pages = _parents_by_id(client, exp, list(parent_run_ids)), 0
    elif sweeps:
        parents, pages, notes = _parents_by_name(client, exp, list(sweeps), page_size)
    else:
        parents, pages = _sweep_parents(client, exp, page_size)
    if parent_run_ids or sweeps:
        runs = []
        for parent in parents:
            found, n = search_all(client, exp.experiment_id,
                                  f"tags.{_PARENT_TAG} = {_quote(parent.run_id)}", page_size)
            runs += found
            pages += n
        if not runs:
            named = ", ".join(f"{p.sweep!r} (parent run {p.run_id})" for p in parents)
            raise NoTrialRuns(f"sweep {named} has no trial runs yet: wait for its trials to start, "
                              "or check that trials are logged as child runs (tag "
                              "mlflow.parentRunId) of that parent")
        label = "+".join(p.sweep for p in parents)
    else:
        runs, n = search_all(client, exp.experiment_id, "tags.`rcgm.kind` = 'trial'", page_size)
        pages += n
        if not runs:
            raise NoTrialRuns(f"experiment {experiment!r} has no trial runs (tag rcgm.kind=trial); "
                              "run a sweep into it first, or pass the experiment the sweep used")
        label = experiment
    by_id = {p.run_id: p for p in parents}
    rows = [_row(run, by_id) for run in runs]
    missing = _missing_metrics(rows, runs)
    if missing:
        _warn_missing(missing, rows)
    table = _build_table(rows, _typed_params(runs), runs)
    return Collection(table, parents, missing, pages, label, experiment, tracking_uri, notes)


def history_keys(table: pa.Table) -> list[str]:
    """The stepped metric keys worth a curve: every family at every NFE, plus the loss."""
    keys = [C.metric_key(f, k) for f, k in C.metric_columns(table)]
    return keys + (["loss"] if "metrics.loss" in table.column_names else [])


def collect_history(tracking_uri: str, table: pa.Table, keys: list[str] | None = None) -> pa.Table:
    """Long table (run_id, key, step, value) of every stepped metric of every trial."""
    client = client_for(tracking_uri)
    keys = history_keys(table) if keys is None else keys
    run_ids, out = table.column("run_id").to_pylist(), {"run_id": [], "key": [], "step": [],
                                                        "value": []}
    for key in keys:
        col = ("metrics." + key) if key == "loss" else ("final." + key)
        present = table.column(col).to_pylist() if col in table.column_names else []
        for run_id, value in zip(run_ids, present):
            if value is None:  # never logged: skip the round trip
                continue
            for m in client.get_metric_history(run_id, key):
                out["run_id"].append(run_id)
                out["key"].append(key)
                out["step"].append(int(m.step))
                out["value"].append(float(m.value))
    schema = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("step", pa.int64()),
                        ("value", pa.float64())])
    return pa.Table.from_pydict(out, schema=schema).sort_by(
        [("run_id", "ascending"), ("key", "ascending"), ("step", "ascending")])


def default_out_dir(label: str) -> Path:
    """runs/reports/<label>/, where the sweeps write a sweep's report too."""
    return locations.reports_dir(label)


def write_parquet(table: pa.Table, out_dir: str | os.PathLike, name: str = "trials.parquet") -> Path:
    """Write the table under out_dir (created) and return the file path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    pq.write_table(table, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: collect a sweep (or experiment) into parquet and print where it went."""
    ap = argparse.ArgumentParser(prog="python -m dashboards.collect", description=__doc__)
    ap.add_argument("--experiment", default="kappa_by_order", help="MLflow experiment name")
    ap.add_argument("--sweep", action="append", help="sweep name (repeatable)")
    ap.add_argument("--parent-run-id", action="append", help="sweep parent run id (repeatable)")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else SQLite under runs/")
    ap.add_argument("--out", default=None, help="output folder (default runs/reports/<sweep>/)")
    args = ap.parse_args(argv)
    try:
        col = collect(args.tracking_uri or default_tracking_uri(), args.experiment,
                      args.parent_run_id, args.sweep)
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_parquet(col.table, args.out or default_out_dir(col.label))
    print(f"{col.table.num_rows} trials -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
