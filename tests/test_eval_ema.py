"""The evaluation EMA: its arithmetic, its checkpoint round trip, and both metric sets in MLflow."""

import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from trainables.config import TrialConfig
from trainables.eval_ema import RAMPUP, EvalEMA, step_decay
from trainables.metric_names import EMA_PREFIX, nfe_metric
from trainables.loop import Trainer
from trainables.rcgm.errors import ConfigError

LONG_AGO = 10**12  # images seen: the ramp-up no longer shortens the half-life


def test_a_half_life_in_images_gives_the_decay_per_step_of_its_batch():
    assert step_decay(100_000, 256, LONG_AGO) == pytest.approx(0.5 ** (256 / 100_000), rel=1e-12)
    # After H images an image's weight has halved, whatever the batch: k steps of H/k images.
    for batch in (50, 100, 1000):
        assert step_decay(100_000, batch, LONG_AGO) ** (100_000 // batch) == pytest.approx(0.5, rel=1e-9)
    # One batch of 128 averages like two of 64 (one worker or two: the global batch counts).
    assert step_decay(1e6, 64, LONG_AGO) ** 2 == pytest.approx(step_decay(1e6, 128, LONG_AGO), rel=1e-12)


def test_the_ramp_up_caps_the_half_life_at_a_fraction_of_the_images_seen():
    seen = 10_000
    assert step_decay(1e6, 100, seen) == pytest.approx(0.5 ** (100 / (RAMPUP * seen)), rel=1e-12)
    assert step_decay(1e6, 100, seen) < step_decay(1e6, 100, 10 * seen) < step_decay(1e6, 100, LONG_AGO)


def test_a_decay_setting_is_used_as_given():
    assert step_decay(0.999, 256, 256) == 0.999
    assert step_decay(0.999, 1, LONG_AGO) == 0.999


def test_the_average_follows_its_recursion_and_stays_apart_from_the_online_weights():
    online = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        online.weight.fill_(0.0)
    ema = EvalEMA(online, 0.9, batch_size=8)
    expected = 0.0
    for value in (1.0, 2.0, -3.0, 4.0):
        with torch.no_grad():
            online.weight.fill_(value)
        ema.update(online)
        expected = 0.9 * expected + 0.1 * value
        assert ema.module.weight.item() == pytest.approx(expected, abs=1e-6)
    assert ema.module.weight.item() != online.weight.item()
    assert not ema.module.weight.requires_grad
    assert ema.images_seen == 32


def _trainer(**overrides) -> Trainer:
    cfg = dict(steps=20, batch_size=32, eval_samples=64, eval_ema=5000.0)
    return Trainer(TrialConfig(**{**cfg, **overrides}))


def test_a_resumed_trial_continues_the_same_average_bit_for_bit():
    straight = _trainer()
    for _ in range(12):
        straight.train_step()

    first = _trainer()
    for _ in range(5):
        first.train_step()
    state = first.state_dict()
    assert state["eval_ema"]["images_seen"] == 5 * 32
    resumed = _trainer()
    resumed.load_state_dict(state)
    for _ in range(7):
        resumed.train_step()

    for a, b in zip(straight.eval_ema.module.state_dict().values(), resumed.eval_ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.eval_ema.images_seen == straight.eval_ema.images_seen
    # The average is not the online model, nor the target model (kappa 0.999 is another decay).
    online, ema = straight.model.state_dict(), straight.eval_ema.module.state_dict()
    target = straight.target.module.state_dict()
    assert any(not torch.equal(online[k], ema[k]) for k in online)
    assert any(not torch.equal(target[k], ema[k]) for k in target)


def test_a_checkpoint_of_another_setting_is_refused():
    saved = _trainer(eval_ema=0.0)
    saved.train_step()
    with pytest.raises(ValueError, match="no eval_ema state"):
        _trainer().load_state_dict(saved.state_dict())
    other = _trainer(eval_ema=0.99)
    other.train_step()
    with pytest.raises(ValueError, match="eval_ema=0.99"):
        _trainer().load_state_dict(other.state_dict())


def test_the_dashboards_name_the_eval_ema_families_as_the_trials_write_them():
    from dashboards import columns

    for family in ("mmd2", "fd", f"{EMA_PREFIX}fd", "fid50000", f"{EMA_PREFIX}fid50000"):
        assert columns.parse_nfe_key(nfe_metric(family, 4)) == (family, 4)  # the reader takes apart what the writer names
    assert "eval EMA" in columns.family_title(f"{EMA_PREFIX}fd") and columns.family_title("fd") == "fd"


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), "fast"])
def test_bad_settings_are_refused_naming_the_flag(value):
    with pytest.raises(ConfigError, match="--eval-ema"):
        TrialConfig(eval_ema=value)


def test_a_tracked_trial_logs_the_online_and_the_eval_ema_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # --local: the same runner and Rank0 as a Ray Train worker, without Ray's start-up.
    cmd = [sys.executable, "-m", "trainables.run", "--local", "--steps", "60", "--eval-every", "30", "--eval-samples", "200",
           "--eval-ema", "3000", "--nfe", "1,2", "--tracking-uri", uri, "--name", "ema-trial"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # A client bound to the store: mlflow.set_tracking_uri would export MLFLOW_TRACKING_URI to every later test.
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("trials").experiment_id],
                                filter_string="tags.mlflow.runName = 'ema-trial'")
    for k in (1, 2):
        online = client.get_metric_history(run.info.run_id, f"mmd2_{k}nfe")
        averaged = client.get_metric_history(run.info.run_id, f"{EMA_PREFIX}mmd2_{k}nfe")
        assert [m.step for m in online] == [m.step for m in averaged] == [30, 60]
        assert [m.value for m in online] != [m.value for m in averaged]
        assert f"best_{EMA_PREFIX}mmd2_{k}nfe" in run.data.metrics
    assert run.data.params["eval_ema"] == "3000.0"
    assert "sampler few on the uniform time grid" in run.data.tags["metric_definition.mmd2"]
    assert "half-life 3000 training images" in run.data.tags["rcgm.eval_ema"]
