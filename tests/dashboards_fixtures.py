"""A real SQLite MLflow store with sweeps of known values, written through MlflowClient."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENT = "kappa_by_order"
MAIN, OLD, OPTUNA, EMPTY = "kappa_grid", "moons_smoke", "moons_optuna", "empty_sweep"
T0 = 1_700_000_000_000  # fixed start times (ms) so "newest" and row order are known
NOISE_MMD2 = 0.056
STEPS = (0, 100, 200, 300)

# Main sweep: (order, kappa, seed) -> (status, final mmd2 at 1 NFE). 2 NFE is 0.8x, best is 0.9x.
MAIN_GRID = {
    (1, 0.0, 0): ("finished", 0.006), (1, 0.0, 1): ("finished", 0.008),
    (1, 0.99, 0): ("finished", 0.010), (1, 0.99, 1): ("diverged", 5.0),
    (1, 0.999, 0): ("collapsed", 0.20), (1, 0.999, 1): ("collapsed", 0.25),
    (2, 0.0, 0): ("finished", 0.007), (2, 0.0, 1): ("finished", 0.009),
    (2, 0.99, 0): ("finished", 0.004), (2, 0.99, 1): ("finished", 0.006),
    (2, 0.999, 0): ("finished", 0.003), (2, 0.999, 1): ("failed", None),
}
# The one finished trial that forgot a metric (a missing-metrics warning must name it).
FORGETFUL = (1, 0.0, 1)
# Older smoke sweep: N=0 logged once without kappa (flow matching ignores it), 1 NFE only.
OLD_GRID = {(0, None, 0): 0.012, (1, 0.0, 0): 0.006, (1, 0.999, 0): 0.03,
            (2, 0.0, 0): 0.007, (2, 0.999, 0): 0.004}
OPTUNA_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-4, 8e-4, 5e-3)
# Cost (issue 14): the main sweep ran on CPU, the Optuna sweep on a GPU; the old one predates it.
BATCH = 256
FORWARD_FLOPS = 2.5e8  # one forward of the model on one batch
PEAK_TFLOPS = 989.0  # the GPU's dense bf16 peak, for its MFU
CPU_TAGS = {"rcgm.precision": "fp32", "rcgm.attention": "none", "rcgm.compile": "false",
            "rcgm.device": "cpu"}
GPU_TAGS = {"rcgm.precision": "bf16", "rcgm.attention": "sdpa", "rcgm.compile": "true",
            "rcgm.device": "NVIDIA H200"}


def optuna_value(lr: float, a: float) -> float:
    """The Optuna sweep's objective: driven by lr (best at 1e-3), barely by the schedule's a."""
    return 0.002 + 0.004 * (math.log10(lr) + 3.0) ** 2 + 1e-5 * a


def steps_per_s(seed: int) -> float:
    """A trial's final speed: seeds differ, so a cell's mean shows which seeds it counted."""
    return 50.0 + 10.0 * seed


def saved_activations_mb(order: int) -> float:
    """What autograd saves for one CPU step's backward."""
    return 1.5 + 0.5 * order


def cost_metrics(order: int, seed: int, gpu: bool = False) -> list[tuple[str, float, int]]:
    """(key, value, step) at each evaluation, as trials log them: the last step's are final."""
    per_step = FORWARD_FLOPS * (3 + order)
    out = []
    for step in STEPS[1:]:
        rate = steps_per_s(seed) * step / STEPS[-1]  # warm-up: earlier values differ from the final
        values = {"cost_forward_flops": FORWARD_FLOPS, "cost_flops_per_step": per_step,
                  "cost_forward_equivalents": 3 + order, "cost_total_flops": per_step * step,
                  "cost_steps_per_s": rate, "cost_samples_per_s": rate * BATCH,
                  "cost_tflops_per_s": per_step * rate / 1e12, "cost_train_time_s": step / rate}
        if gpu:
            values.update(cost_mfu=values["cost_tflops_per_s"] / PEAK_TFLOPS,
                          cost_peak_memory_mb=900.0 + 100.0 * order)
        else:
            values["cost_saved_activations_mb"] = saved_activations_mb(order)
        out += [(k, float(v), step) for k, v in values.items()]
    return out


def run_name(order: int, kappa, seed: int) -> str:
    """Trial run names of the fixture sweeps."""
    return f"N{order}_k{kappa}_s{seed}"


def curve(status: str, final: float) -> list[float]:
    """Metric history at STEPS ending at `final`; collapsed trials go wrong after step 100."""
    if status == "collapsed":
        return [0.05, 0.01, 0.08, final]
    if status == "diverged":
        return [0.05, 0.02, 0.5, final]
    return [final * 4, final * 2, final * 0.9, final]


@dataclass
class Store:
    """Where the fixture store lives and the ids the tests look up."""

    root: Path
    db: Path
    uri: str
    experiment_id: str
    parents: dict[str, str] = field(default_factory=dict)
    runs: dict[tuple[str, str], str] = field(default_factory=dict)


def _trial(client, store, exp_id, sweep, parent_id, start, name, params, status, metrics,
           mlflow_status="FINISHED", definition=True, cost_tags=None):
    from mlflow.entities import Metric, Param
    tags = {"mlflow.parentRunId": parent_id, "rcgm.kind": "trial", "rcgm.sweep": sweep,
            "rcgm.trial_key": f"{sweep}/{name}", "status": status, "git.commit": "abc1234",
            "git.dirty": "false", "ray.trial_id": f"t_{name}", **(cost_tags or {})}
    if definition:
        tags["metric_definition.mmd2"] = "MMD^2 V-statistic, RBF mixture"
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=name)
    rid = run.info.run_id
    client.log_batch(rid, metrics=[Metric(k, v, start + 10 * s, s) for k, v, s in metrics],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(rid, status=mlflow_status, end_time=start + 60_000)
    store.runs[(sweep, name)] = rid
    return rid


def _parent(client, store, exp_id, sweep, search, start):
    tags = {"rcgm.kind": "sweep", "rcgm.sweep": sweep, "rcgm.search": search,
            "git.commit": "abc1234", "git.dirty": "true"}
    if search == "optuna":
        tags.update({"rcgm.metric": "final.mmd2_1nfe", "rcgm.mode": "min"})
    rid = client.create_run(exp_id, start_time=start, tags=tags, run_name=sweep).info.run_id
    store.parents[sweep] = rid
    return rid


def _base_params(order, kappa, seed, nfe):
    params = {"task": "moons", "model": "mlp", "objective": "rcgm", "order": order,
              "delta_t": 0.01, "clip": 1.0, "placement": "equal", "time_schedule": "uniform",
              "flow_fraction": 0.25, "guidance": 0.0, "lr": 0.001, "batch_size": 256,
              "steps": 300, "seed": seed, "nfe": nfe, "sample_style": "few", "workers": 1,
              "gpus_per_worker": 0}
    if kappa is not None:
        params["kappa"] = kappa
    return params


def _main_sweep(client, store, exp_id):
    parent = _parent(client, store, exp_id, MAIN, "grid", T0 + 1_000_000)
    for i, ((order, kappa, seed), (status, final)) in enumerate(sorted(MAIN_GRID.items())):
        name = run_name(order, kappa, seed)
        start = T0 + 1_000_000 + 1000 * (i + 1)
        metrics = [("loss", 1.0 / (s + 1), s) for s in STEPS]
        if status == "failed":  # died at step 100: a loss, nothing else
            metrics = metrics[:2]
        else:
            for nfe, scale in ((1, 1.0), (2, 0.8)):
                values = [v * scale for v in curve(status, final)]
                metrics += [(f"mmd2_{nfe}nfe", v, s) for v, s in zip(values, STEPS)]
                if not ((order, kappa, seed) == FORGETFUL and nfe == 2):
                    metrics.append((f"best_mmd2_{nfe}nfe", min(values), STEPS[-1]))
            metrics += [("final_step", STEPS[-1], STEPS[-1]), ("wall_time_s", 60.0 + i, STEPS[-1]),
                        ("noise_mmd2", NOISE_MMD2, STEPS[-1])]
            metrics += cost_metrics(order, seed)
        _trial(client, store, exp_id, MAIN, parent, start, name, _base_params(order, kappa, seed,
               "1,2"), status, metrics, "FAILED" if status == "failed" else "FINISHED",
               cost_tags=CPU_TAGS)
    client.set_terminated(parent, end_time=T0 + 2_000_000)


def _old_sweep(client, store, exp_id):
    parent = _parent(client, store, exp_id, OLD, "grid", T0)
    for i, ((order, kappa, seed), final) in enumerate(sorted(OLD_GRID.items(),
                                                             key=lambda kv: str(kv[0]))):
        metrics = [("mmd2_1nfe", v, s) for v, s in zip(curve("finished", final), STEPS)]
        metrics += [("best_mmd2_1nfe", final * 0.9, 300), ("final_step", 300, 300),
                    ("wall_time_s", 30.0, 300)]
        params = _base_params(order, kappa, seed, "1")
        if order == 0:
            params["objective"] = "flow_matching"
        _trial(client, store, exp_id, OLD, parent, T0 + 1000 * (i + 1),
               run_name(order, kappa, seed), params, "finished", metrics)
    client.set_terminated(parent, end_time=T0 + 100_000)


def _optuna_sweep(client, store, exp_id):
    parent = _parent(client, store, exp_id, OPTUNA, "optuna", T0 + 3_000_000)
    placements = ("equal", "random")
    for i, lr in enumerate(OPTUNA_LRS):
        a = 0.5 + 0.25 * i
        status = "collapsed" if i == 4 else "finished"
        value = optuna_value(lr, a)
        params = _base_params(2, 0.999, 0, "1")
        params.update({"lr": lr, "time_schedule": "beta", "time_schedule.a": a,
                       "placement": placements[i % 2]})
        metrics = [("mmd2_1nfe", value, 300), ("best_mmd2_1nfe", value, 300),
                   ("final_step", 300, 300), ("wall_time_s", 20.0, 300)]
        metrics += cost_metrics(2, 0, gpu=True)
        _trial(client, store, exp_id, OPTUNA, parent, T0 + 3_000_000 + 1000 * (i + 1),
               f"optuna_{i}", params, status, metrics, cost_tags=GPU_TAGS)


def build_store(root: Path) -> Store:
    """Create the SQLite store under root with the four sweeps and an empty second experiment."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient
    root.mkdir(parents=True, exist_ok=True)
    db = root / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("nothing_here", artifact_location=(root / "artifacts2").as_uri())
    store = Store(root, db, uri, exp_id)
    _old_sweep(client, store, exp_id)
    _main_sweep(client, store, exp_id)
    _optuna_sweep(client, store, exp_id)
    _parent(client, store, exp_id, EMPTY, "grid", T0 + 4_000_000)
    return store


_CACHE: dict[str, Store] = {}


def cached_store(tmp_path_factory) -> Store:
    """One store per pytest session, shared by both dashboards test modules (it is read-only)."""
    if "store" not in _CACHE:
        _CACHE["store"] = build_store(tmp_path_factory.mktemp("mlflow_store"))
    return _CACHE["store"]
