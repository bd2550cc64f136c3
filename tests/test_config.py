"""TrialConfig and the shared CLI flags: every bad value is refused with the field's name."""

from __future__ import annotations

import argparse
import math

import pytest

from trainables.cli import add_trial_arguments, parse_nfe, parse_time_params, trial_values_from_args
from trainables.config import TrialConfig
from trainables.rcgm.errors import ConfigError

BAD = [
    ("order", -1), ("order", 2.5), ("order", True), ("kappa", 1.5), ("kappa", -0.01), ("kappa", math.nan),
    ("delta_t", 0.0), ("delta_t", 1.0), ("clip", 0.0), ("task", "cifar100"), ("model", "resnet"),
    ("model", "DiT-T/4"), ("objective", "sCM"), ("placement", "middle"), ("time_schedule", "cosine"),
    ("flow_fraction", 1.5), ("guidance", 0.5), ("lr", 0.0), ("lr_schedule", "linear"), ("batch_size", 0), ("steps", 0),
    ("eval_every", 0), ("nfe", (0,)), ("nfe", ()), ("sample_style", "euler"), ("image_metric", "is"),
    ("workers", 0), ("gpus_per_worker", -1), ("cpus_per_worker", 0), ("collapse_after", 2.0),
]


@pytest.mark.parametrize("field,value", BAD)
def test_bad_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        TrialConfig(**{field: value})
    assert err.value.field == field
    assert "--" + field.replace("_", "-") in str(err.value)


def test_schedule_parameters_are_checked():
    with pytest.raises(ConfigError, match="time_schedule"):
        TrialConfig(time_schedule="beta", time_params={"alpha": 1.0})
    cfg = TrialConfig(time_schedule="beta", time_params={"a": 0.8, "b": 1.0})
    assert cfg.tracking_params()["time_schedule.a"] == "0.8"


def test_meanflow_refuses_several_workers_and_batch_must_cover_workers():
    with pytest.raises(ConfigError, match="workers"):
        TrialConfig(objective="meanflow", workers=2)
    with pytest.raises(ConfigError, match="batch_size"):
        TrialConfig(batch_size=2, workers=4)


def test_auto_model_and_derived_defaults():
    assert TrialConfig(task="moons").model == "mlp"
    assert TrialConfig(task="mnist").model == "DiT-T/4"
    cfg = TrialConfig(eval_every=250, nfe=(4, 1, 1))
    assert cfg.checkpoint_every == 250 and cfg.nfe == (1, 4)
    assert cfg.metric_names() == ["mmd2_1nfe", "mmd2_4nfe"]
    assert TrialConfig(task="mnist", image_metric="fid").metric_family == "fid"


def test_round_trip_and_unknown_keys():
    cfg = TrialConfig(order=3, kappa=0.9, time_schedule="logit_normal", time_params={"mu": -0.4, "sigma": 1.0})
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="known trial setting"):
        TrialConfig.from_dict({"ordr": 2})
    assert cfg.replace(order=4).order == 4


def test_tracking_params_use_the_architecture_names():
    params = TrialConfig(order=2, kappa=0.999).tracking_params()
    for name in ("order", "kappa", "time_schedule", "delta_t", "clip", "guidance", "nfe"):
        assert name in params
    assert all(isinstance(v, str) for v in params.values())


def test_cli_flags_build_the_same_config():
    parser = argparse.ArgumentParser()
    add_trial_arguments(parser)
    args = parser.parse_args(["--order", "3", "--kappa", "0.9", "--nfe", "1,2", "--time-schedule", "beta", "--time-params", "a=2,b=1.5"])
    cfg = TrialConfig.from_dict(trial_values_from_args(args))
    assert (cfg.order, cfg.kappa, cfg.nfe, cfg.time_params) == (3, 0.9, (1, 2), {"a": 2.0, "b": 1.5})
    with pytest.raises(ConfigError, match="--nfe"):
        parse_nfe("1,two")
    with pytest.raises(ConfigError, match="--time-params"):
        parse_time_params("a:2")
