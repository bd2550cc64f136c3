"""One trial on real Ray Train (local, CPU, gloo) tracked in a real SQLite MLflow store."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import keep_artifact, run_cli
from trainables.config import TrialConfig
from trainables.tracking import TrialTracking, ensure_experiment, find_run, open_sweep_run
from trainables.trial import build_torch_trainer

pytestmark = pytest.mark.slow  # real Ray Train and MLflow runs

SMALL = dict(task="moons", order=2, kappa=0.99, batch_size=128, eval_samples=300, nfe=(1, 2, 4), lr=1e-3, cpus_per_worker=0.9)


def _fit(cfg, uri, key, tmp_path, parent=None, hooks=None):
    """Fit one trial and return its MLflow run."""
    tracking = TrialTracking(uri, "t", trial_key=key, run_name=key, parent_run_id=parent, sweep="s")
    trainer = build_torch_trainer(cfg, tracking, name=f"train-{key}", storage_path=str(tmp_path / "ray"), test_hooks=hooks)
    result = trainer.fit()
    client = MlflowClient(uri)
    runs = client.search_runs([ensure_experiment(uri, "t")], filter_string=f"tags.`rcgm.trial_key` = '{key}'")
    return result, runs


def test_two_worker_trial_is_tracked_under_its_parent(local_ray, sqlite_uri, tmp_path):
    cfg = TrialConfig(**SMALL, steps=400, eval_every=200, workers=2)
    parent, created = open_sweep_run(sqlite_uri, "t", "s", settings={"orders": "2"}, tags={})
    assert created
    result, runs = _fit(cfg, sqlite_uri, "two-workers", tmp_path, parent=parent)
    assert len(runs) == 1
    run = runs[0]
    client = MlflowClient(sqlite_uri)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["status"] == "finished"
    assert run.data.tags["git.commit"] not in ("", None)
    assert run.data.tags["ray.job_id"]
    assert "RBF" in run.data.tags["metric_definition.mmd2"] or "rbf" in run.data.tags["metric_definition.mmd2"].lower()
    assert run.data.params["order"] == "2" and run.data.params["kappa"] == "0.99" and run.data.params["workers"] == "2"
    assert run.data.params["nfe"] == "1,2,4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [200, 400]
    for k in (1, 2, 4):
        hist = client.get_metric_history(run.info.run_id, f"mmd2_{k}nfe")
        assert [m.step for m in hist] == [200, 400]
        assert all(0 <= m.value < 1 for m in hist)
        assert run.data.metrics[f"best_mmd2_{k}nfe"] == min(m.value for m in hist)
    assert run.data.metrics["final_step"] == 400
    assert run.data.metrics["noise_mmd2"] > run.data.metrics["best_mmd2_1nfe"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert artifacts == {"samples/step_0000200.png", "samples/step_0000400.png"}
    ckpt_dir = client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / "dl"))
    state = torch.load(f"{ckpt_dir}/state.pt", weights_only=True)
    assert state["trainer"]["step"] == 400
    assert state["config"]["workers"] == 2
    png = client.download_artifacts(run.info.run_id, "samples/step_0000400.png", str(tmp_path / "png"))
    keep_artifact(png, "trial_samples.png")
    assert result.metrics["status"] == "finished" and result.metrics["step"] == 400


def test_killed_worker_resumes_from_checkpoint_in_the_same_run(local_ray, sqlite_uri, tmp_path):
    cfg = TrialConfig(**SMALL, steps=500, eval_every=100, checkpoint_every=100)
    hooks = {"crash_at_step": 300, "crash_marker": str(tmp_path / "crashed")}
    result, runs = _fit(cfg, sqlite_uri, "crashy", tmp_path, hooks=hooks)
    assert (tmp_path / "crashed").read_text() == "300"  # it really died once
    assert len(runs) == 1  # the retry reopened the run instead of duplicating it
    run = runs[0]
    client = MlflowClient(sqlite_uri)
    resumed = client.get_metric_history(run.info.run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [200]  # the checkpoint before the crash, not step 0
    assert run.data.metrics["final_step"] == 500
    assert run.data.tags["status"] == "finished"
    assert result.metrics["step"] == 500


def test_diverging_trial_ends_with_a_status_not_a_crash(sqlite_uri):
    proc = run_cli(["-m", "trainables.run", "--local", "--tracking-uri", sqlite_uri, "--name", "boom", "--order", "1",
                    "--kappa", "0", "--lr", "50", "--clip", "1e6", "--steps", "1000", "--eval-every", "100",
                    "--eval-samples", "200", "--nfe", "1"], timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    client = MlflowClient(sqlite_uri)
    run_id = find_run(sqlite_uri, ensure_experiment(sqlite_uri, "trials"), {"rcgm.trial_key": "boom"})
    run = client.get_run(run_id)
    assert run.data.tags["status"] in ("diverged", "collapsed")
    assert run.data.metrics["final_step"] < 1000  # ended early
    assert "status: " + run.data.tags["status"] in proc.stdout


def test_unreachable_tracking_server_is_refused_before_compute():
    proc = run_cli(["-m", "trainables.run", "--local", "--tracking-uri", "http://127.0.0.1:9", "--steps", "10"], timeout=120)
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr and "--tracking-uri" in proc.stderr
    assert "step=" not in proc.stdout


def test_checkpoint_write_failing_half_way_resumes_from_the_previous_checkpoint(local_ray, sqlite_uri, tmp_path):
    """An injected ENOSPC in the middle of the step-300 write: the trial errs, Ray Train retries it from step 200."""
    cfg = TrialConfig(**SMALL, steps=500, eval_every=100, checkpoint_every=100)
    hooks = {"fail_checkpoint_at_step": 300, "crash_marker": str(tmp_path / "failed")}
    result, runs = _fit(cfg, sqlite_uri, "full-disk", tmp_path, hooks=hooks)
    assert (tmp_path / "failed").read_text() == "300"  # the write really failed once
    assert len(runs) == 1
    client = MlflowClient(sqlite_uri)
    resumed = client.get_metric_history(runs[0].info.run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [200]  # the half-written 300 was never a checkpoint
    assert runs[0].data.tags["status"] == "finished" and runs[0].data.metrics["final_step"] == 500
    assert result.metrics["step"] == 500
