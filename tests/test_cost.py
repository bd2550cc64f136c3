"""What a trial costs: FLOPs counted once per trial, checked against the analytic count, and logged to MLflow."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli
from trainables.config import TrialConfig
from trainables.cost import StepCost, count_flops, forward_equivalents, peak_tflops, rates
from trainables.loop import Trainer
from trainables.tracking import ensure_experiment, find_run


@pytest.mark.parametrize("task,order,guidance", [
    ("moons", 0, 0.0), ("moons", 1, 0.0), ("moons", 3, 0.0),
    ("mnist", 0, 0.0), ("mnist", 2, 0.0), ("mnist", 2, 1.0),
])
def test_counted_step_flops_match_the_analytic_forward_equivalents(task, order, guidance):
    cfg = TrialConfig(task=task, order=order, guidance=guidance, batch_size=16, steps=1,
                      model="DiT-XS/4" if task == "mnist" else "auto")
    cost = Trainer(cfg, measure_cost=True).cost
    expected = forward_equivalents("rcgm", order, guidance)
    assert expected == 3 + order + (2 if guidance else 0)
    # Slightly under: the first layers' input gradients are never computed (inputs need no grad).
    assert expected * 0.97 < cost.equivalents <= expected
    assert cost.saved_bytes > 0  # CPU: the saved-activation count stands in for a peak


def test_the_count_is_what_a_training_step_runs_and_leaves_the_trial_untouched():
    cfg = TrialConfig(task="mnist", model="DiT-XS/4", order=2, batch_size=16, steps=3)
    counted, plain = Trainer(cfg, measure_cost=True), Trainer(cfg)
    assert plain.cost is None
    assert count_flops(counted.train_step) == counted.cost.step_flops
    assert all(p.grad is None for p in plain.model.parameters())
    # The counting step drew from its own generator and took no optimizer step.
    again = Trainer(cfg, measure_cost=True)
    assert [again.train_step() for _ in range(2)] == [plain.train_step() for _ in range(2)]


def test_meanflow_is_counted_by_the_counter_not_the_formula():
    assert forward_equivalents("meanflow", 1, 0.0) is None
    online = Trainer(TrialConfig(task="moons", objective="meanflow", kappa=0.0, batch_size=16, steps=1), measure_cost=True)
    ema = Trainer(TrialConfig(task="moons", objective="meanflow", kappa=0.999, batch_size=16, steps=1), measure_cost=True)
    # kappa = 0: one JVP of the online model (primal and tangent forwards) plus the backward, well above
    # flow matching's 3; an EMA target adds its own primal forward, since the online F is a separate pass.
    assert 4.0 < online.cost.equivalents < 6.0
    assert 0.7 < ema.cost.equivalents - online.cost.equivalents < 1.3


def test_peaks_are_matched_most_specific_name_first():
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.5
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 494.7  # fp32 matmuls run on TF32
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert peak_tflops("NVIDIA A10", "bf16") == 125.0
    assert peak_tflops("NVIDIA L40S", "bf16") == 362.1
    assert peak_tflops("NVIDIA L4", "bf16") == 121.0
    assert peak_tflops("cpu", "fp32") is None
    assert peak_tflops("NVIDIA Imaginary 9000", "bf16") is None


def test_rates_give_mfu_only_against_a_known_peak():
    cost = StepCost(forward_flops=10**12, step_flops=5 * 10**12, saved_bytes=None)
    out = rates(cost, steps=10, seconds=5.0, global_batch=256, peak=100.0)
    assert out == pytest.approx({"steps_per_s": 2.0, "samples_per_s": 512.0, "tflops_per_s": 10.0, "mfu": 0.1})
    assert "mfu" not in rates(cost, 10, 5.0, 256, None)
    assert rates(cost, 0, 0.0, 256, 100.0) == {}


def test_a_trial_run_carries_its_cost_and_how_it_ran(sqlite_uri):
    proc = run_cli(["-m", "trainables.run", "--local", "--tracking-uri", sqlite_uri, "--name", "costed",
                    "--steps", "40", "--eval-every", "20", "--eval-samples", "200", "--nfe", "1",
                    "--batch-size", "64", "--precision", "bf16"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = MlflowClient(sqlite_uri)
    run = client.get_run(find_run(sqlite_uri, ensure_experiment(sqlite_uri, "trials"), {"rcgm.trial_key": "costed"}))
    m, tags = run.data.metrics, run.data.tags
    assert tags["rcgm.precision"] == "bf16" and tags["rcgm.attention"] == "none"
    assert tags["rcgm.device"] == "cpu" and tags["rcgm.compile"] == "false" and tags["rcgm.peak_tflops"] == "unknown"
    assert m["cost_total_flops"] == pytest.approx(m["cost_flops_per_step"] * 40)
    assert 4.9 < m["cost_forward_equivalents"] <= 5.0  # N = 2: 3 + 2 forwards
    assert m["cost_samples_per_s"] == pytest.approx(64 * m["cost_steps_per_s"])
    assert m["cost_tflops_per_s"] == pytest.approx(m["cost_flops_per_step"] * m["cost_steps_per_s"] / 1e12)
    assert 0 < m["cost_train_time_s"] < run.data.metrics["wall_time_s"]
    assert m["cost_saved_activations_mb"] > 0 and "cost_mfu" not in m  # no MFU on a CPU
    history = client.get_metric_history(run.info.run_id, "steps_per_s")
    assert [h.step for h in history] == [20, 40]
