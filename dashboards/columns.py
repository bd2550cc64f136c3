"""Column names and types of the trial table (see docs/dashboards.md for the schema)."""

from __future__ import annotations

import math
import re

import pyarrow as pa

from trainables import cost_schema, metric_names
from trainables.config import param_types
from trainables.status import FROM_MLFLOW_RUN_STATUS, UNHEALTHY as _UNHEALTHY

# Statuses that mean "this trial's number says nothing about the config": excluded from means.
UNHEALTHY = tuple(sorted(str(s) for s in _UNHEALTHY))

# MLflow run status -> our status, for trials that died before tagging `status` themselves.
MLFLOW_STATUS = {k: str(v) for k, v in FROM_MLFLOW_RUN_STATUS.items()}

# Metric keys per docs/design.md: `<family>_<k>nfe` (with steps) and `best_<family>_<k>nfe`.
_NFE_KEY = re.compile(r"^(?P<family>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_(?P<nfe>\d+)nfe$")

# Param types from the trial settings' declarations (trainables.config); any other param is typed
# by what all its values parse as. A name ending in "." types every param under that prefix.
_ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string()}
PARAM_TYPES: dict[str, pa.DataType] = {name: _ARROW[kind] for name, kind in param_types().items()}


def param_type(name: str) -> pa.DataType | None:
    """The declared type of an MLflow param (time_schedule.a is a float), or None for an undeclared one."""
    if name in PARAM_TYPES:
        return PARAM_TYPES[name]
    prefix = name.split(".", 1)[0] + "."
    return PARAM_TYPES.get(prefix) if "." in name else None


# Params that identify a repetition or the hardware, not the config: cells pool over them.
REPLICATE_PARAMS = ("seed", "workers", "gpus_per_worker")

META_FIELDS: list[tuple[str, pa.DataType]] = [
    ("run_id", pa.string()), ("run_name", pa.string()), ("parent_run_id", pa.string()),
    ("sweep", pa.string()), ("search", pa.string()), ("experiment_id", pa.string()),
    ("trial_key", pa.string()), ("ray_trial_id", pa.string()), ("status", pa.string()),
    ("mlflow_status", pa.string()), ("start_time", pa.timestamp("ms", tz="UTC")),
    ("end_time", pa.timestamp("ms", tz="UTC")), ("wall_time_s", pa.float64()),
    ("final_step", pa.int64()), ("git_commit", pa.string()), ("git_dirty", pa.bool_()),
]

# What a trial cost (issue 14): columns named as the metrics (as wall_time_s is) and as the
# tags saying what ran, less "rcgm." (as trial_key is). Runs made before issue 14 carry none:
# their columns are null, and the collector does not count them as missing.
COST_METRICS = cost_schema.SUMMARY_METRICS
COST_TAGS = cost_schema.RUN_TAGS
COST_FIELDS: list[tuple[str, pa.DataType]] = (
    [(name, pa.float64()) for name in COST_METRICS] + [(name, pa.string()) for name in COST_TAGS])


def parse_nfe_key(key: str) -> tuple[str, int] | None:
    """`mmd2_1nfe` -> ("mmd2", 1); None for any other key (including `best_...`)."""
    if key.startswith("best_"):
        return None
    m = _NFE_KEY.match(key)
    return (m["family"], int(m["nfe"])) if m else None


# The eval EMA's families: `ema_fd` beside `fd`.
EMA_PREFIX = metric_names.EMA_PREFIX


def family_title(family: str) -> str:
    """A family as a report heading says it: which weights were scored."""
    if family.startswith(EMA_PREFIX):
        return f"{family} (the eval EMA's weights)"
    return family


def metric_key(family: str, nfe: int) -> str:
    """The MLflow metric key of a family at an NFE."""
    return metric_names.nfe_metric(family, nfe)


def final_col(family: str, nfe: int) -> str:
    """Column of the last logged value."""
    return f"final.{metric_key(family, nfe)}"


def best_col(family: str, nfe: int) -> str:
    """Column of the trial's own `best_` metric."""
    return f"best.{metric_key(family, nfe)}"


def param_col(name: str) -> str:
    """Column of an MLflow param."""
    return f"params.{name}"


def metric_columns(table: pa.Table) -> list[tuple[str, int]]:
    """(family, nfe) pairs that have a `final.` column, sorted by family then NFE."""
    pairs = set()
    for name in table.column_names:
        if name.startswith("final."):
            parsed = parse_nfe_key(name[len("final."):])
            if parsed:
                pairs.add(parsed)
    return sorted(pairs)


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def infer_param_type(values: list[str | None]) -> pa.DataType:
    """int64 if every present value is an integer, float64 if every one is a number, else string."""
    present = [v for v in values if v not in (None, "", "None")]
    if present and all(_as_int(v) is not None for v in present):
        return pa.int64()
    if present and all(_as_float(v) is not None for v in present):
        return pa.float64()
    return pa.string()


def convert_param(text: str | None, dtype: pa.DataType):
    """MLflow stores params as strings; this returns the typed value or None."""
    if text in (None, "", "None"):
        return None
    if pa.types.is_integer(dtype):
        value = _as_int(text)
        if value is None:  # "2.0" from a float-typed config is still an integer param
            as_float = _as_float(text)
            value = int(as_float) if as_float is not None and as_float.is_integer() else None
        return value
    if pa.types.is_floating(dtype):
        return _as_float(text)
    return text


def parse_bool(text: str | None) -> bool | None:
    """Tag text such as "true"/"False"/"1" -> bool; None when absent or unreadable."""
    if text is None:
        return None
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return None


def finite(value) -> bool:
    """True for a real number that is neither NaN nor infinite."""
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
