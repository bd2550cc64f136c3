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


# ---- one declaration per setting -------------------------------------------------------------

def test_every_setting_is_declared_once_and_reaches_a_flag_a_param_and_a_column():
    from dashboards import columns
    from trainables.config import Track, declarations, flag_of

    parser = argparse.ArgumentParser()
    add_trial_arguments(parser)
    dests = {a.dest: a for a in parser._actions}
    # A config under which every tracked setting is logged: labelled task, non-default values.
    cfg = TrialConfig(task="mnist", lr_schedule="cosine", collapse_after=0.5, time_schedule="beta", time_params={"a": 0.8},
                      precision="bf16", attention="math", eval_ema=0.9999, fid_samples=1000)
    params = cfg.tracking_params()
    expected = set()
    for name, f in declarations().items():
        meta = f.metadata
        assert meta["help"].strip(), name
        assert name in dests and dests[name].help, f"{name} has no flag"
        assert flag_of(name) == "--" + name.replace("_", "-")
        if meta["track"] is Track.NEVER:
            continue
        param = meta["param"] or name
        expected |= {f"{param}.a"} if meta["track"] is Track.PER_KEY else {param}
        assert columns.param_type(f"{param}.a" if meta["track"] is Track.PER_KEY else param) is not None, name
    assert set(params) == expected


def _dict_literals_listing_settings(source: str, names: set[str], at_least: int = 4) -> list[int]:
    """Lines of dict literals keyed by several setting names (a second list of the settings)."""
    import ast

    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & names) >= at_least:
                hits.append(node.lineno)
    return hits


def test_nothing_else_lists_the_settings():
    from pathlib import Path

    from trainables.config import declarations

    names, repo = set(declarations()), Path(__file__).resolve().parents[1]
    found = {str(p.relative_to(repo)): lines for pkg in ("trainables", "sweeps", "dashboards", "bench")
             for p in (repo / pkg).rglob("*.py") if (lines := _dict_literals_listing_settings(p.read_text(), names))}
    assert found == {}
    # Teeth: the help table that cli.py kept before the declarations is what this catches.
    old = 'HELP = {"task": "dataset", "model": "auto", "order": "N", "kappa": "decay", "clip": "xi"}'
    assert _dict_literals_listing_settings(old, names) == [1]


def test_cli_defaults_are_the_declared_placeholders_not_values_resolved_for_moons():
    from trainables.run import parse_args

    args = parse_args(["--task", "mnist"])
    cfg = TrialConfig.from_dict(trial_values_from_args(args))
    assert (cfg.model, cfg.eval_samples, cfg.steps) == ("DiT-T/4", 500, 5000)
    assert TrialConfig(task="digits").eval_samples == 300  # auto fits the 300 held-out digits


@pytest.mark.parametrize("field,value,needle", [
    ("clip", float("inf"), None),  # documented as "clipping off" (docs/method.md)
    ("guidance", 2000.0, "[0.0, 1000.0]"),  # refused here, not inside a worker
    ("lr", float("inf"), "(0.0, inf)"),  # inf is not in the range, and the message says so
])
def test_ranges_are_the_method_layers(field, value, needle):
    values = {"task": "mnist", field: value}
    if needle is None:
        assert getattr(TrialConfig(**values), field) == value
        return
    with pytest.raises(ConfigError) as err:
        TrialConfig(**values)
    assert needle in str(err.value) and "--" + field in str(err.value)


def test_errors_name_a_flag_only_for_fields_that_are_flags():
    from trainables.config import with_flag

    assert "(change --order)" in str(with_flag(ConfigError("order", -1, "an integer >= 0")))
    assert "change" not in str(with_flag(ConfigError("num_classes", 0, "an integer >= 1")))
    assert "(change --time-params)" in str(with_flag(ConfigError("time_schedule.a", 0, "a number in (0.0, inf)")))


def test_label_dropout_has_one_default_the_objectives():
    from trainables.rcgm.guidance import GUIDED_LABEL_DROPOUT

    assert TrialConfig(task="mnist", guidance=0.5).label_dropout == GUIDED_LABEL_DROPOUT
    assert TrialConfig(task="mnist").label_dropout == 0.0
    assert TrialConfig(task="mnist", label_dropout=0.3).label_dropout == 0.3
