"""The closing FID-N (`--fid-samples`): refused where it cannot run, and logged by a two-worker Ray Train trial.

That the value does not depend on the worker count is tested where it is made, with two real gloo
processes (tests/test_feature_stats.py); a recompute here would double this test's Inception time.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from trainables.config import TrialConfig
from trainables.metrics.sharded import CHUNK_SIZE
from trainables.rcgm.errors import ConfigError
from trainables.tracking import TrialTracking, ensure_experiment
from trainables.trial import build_torch_trainer

# One chunk: rank 0 samples them all and rank 1 joins the gather with none (the Inception costs ~0.25 s
# an image here; that the value is the same for any split is tested in tests/test_feature_stats.py).
SAMPLES = 20
assert SAMPLES < CHUNK_SIZE
DIGITS = dict(task="digits", model="DiT-XS/4", batch_size=32, eval_samples=100, nfe=(1,), steps=20, eval_every=20,
              cpus_per_worker=0.9)


@pytest.mark.parametrize("task", ["moons", "latents:/nowhere"])
def test_only_image_tasks_take_a_closing_fid(task):
    with pytest.raises(ConfigError, match="--fid-samples"):
        TrialConfig(task=task, model="auto", fid_samples=1000)


def test_one_sample_is_refused():
    with pytest.raises(ConfigError, match=">= 2"):
        TrialConfig(task="mnist", fid_samples=1)


@pytest.mark.slow  # real Ray Train with two workers, the Inception network on the CPU
def test_a_two_worker_trial_logs_its_closing_fid_with_its_definition(local_ray, sqlite_uri, tmp_path):
    cfg = TrialConfig(**DIGITS, workers=2, fid_samples=SAMPLES)
    tracking = TrialTracking(sqlite_uri, "t", trial_key="fid", run_name="fid", sweep="s")
    result = build_torch_trainer(cfg, tracking, name="train-fid", storage_path=str(tmp_path / "ray")).fit()
    assert result.metrics["status"] == "finished"
    client = MlflowClient(sqlite_uri)
    (run,) = client.search_runs([ensure_experiment(sqlite_uri, "t")], filter_string="tags.`rcgm.trial_key` = 'fid'")
    name = f"fid{SAMPLES}_1nfe"
    (logged,) = client.get_metric_history(run.info.run_id, name)
    assert logged.step == 20 and 0 < logged.value < 1e4
    assert run.data.metrics[f"best_{name}"] == logged.value
    definition = run.data.tags[f"metric_definition.fid{SAMPLES}"]
    assert "over 2 worker(s)" in definition and "sha256" in definition and "class-balanced" in definition
