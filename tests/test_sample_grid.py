"""Sampler sweeps on frozen checkpoints: the grid, sampling-time guidance, the table, and sample_grid end to end.

The end-to-end test trains a short real Moons trial into a real SQLite MLflow store, then runs
sweeps/sample_grid.py on its checkpoint on a real local Ray: no mocks.
"""

from __future__ import annotations

import time

import pytest
import torch

from conftest import keep_artifact, run_cli
from dashboards.sampler_table import PointTable, SamplerPoint, markdown_lines
from sweeps.sampler_space import SamplerGrid, power_times
from trainables.rcgm.errors import ConfigError
from trainables.rcgm.sampling import default_times
from trainables.rcgm.sampling_guidance import GuidedModel, guided

SCRIPT = "sweeps/sample_grid.py"


# ---- sampling-time guidance ------------------------------------------------------------------

def _conditional_net():
    from trainables.models.mlp import VelocityMLP

    torch.manual_seed(0)
    return VelocityMLP(dim=2, num_classes=3).eval()


def _inputs(batch=32):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 2, generator=gen)
    t = torch.rand(batch, generator=gen)
    y = torch.randint(0, 3, (batch,), generator=gen)
    return x, t, 0.5 * t, y


@torch.no_grad()
def test_guidance_mixes_the_conditional_and_null_fields():
    net = _conditional_net()
    x, t, r, y = _inputs()
    cond, null = net(x, t, r, y), net(x, t, r, torch.full_like(y, 3))
    assert not torch.allclose(cond, null)  # the labels matter, so the mixing below is seen
    assert guided(net, 1.0, 3) is net  # w = 1 is the conditional model itself
    assert torch.allclose(GuidedModel(net, 0.0, 3)(x, t, r, y), null, atol=1e-6)
    assert torch.allclose(GuidedModel(net, 2.5, 3)(x, t, r, y), null + 2.5 * (cond - null), atol=1e-5)


def test_guidance_needs_labels_and_a_conditional_model():
    net = _conditional_net()
    x, t, r, _ = _inputs()
    with pytest.raises(ConfigError, match="sampling_guidance"):
        GuidedModel(net, 2.0, 3)(x, t, r, None)
    with pytest.raises(ConfigError, match="unconditional"):
        guided(net, 2.0, None)
    with pytest.raises(ConfigError, match="sampling_guidance"):
        guided(net, -1.0, 3)


# ---- the grid --------------------------------------------------------------------------------

def test_default_grid_keeps_each_schedule_across_nfe():
    grid = SamplerGrid.from_flags("1,2,4", "few,any,mul", "0.3,0.5,0.7", None, "1")
    settings = grid.settings()
    assert len(settings) == 3 + 3 * 3 + 3 * 3 and len({s.key for s in settings}) == len(settings)
    assert {s.times for s in settings if s.nfe == 1} == {(1.0, 0.0)}
    assert {s.times for s in settings if s.nfe == 2} == {(1.0, m, 0.0) for m in (0.3, 0.5, 0.7)}
    # The power rho of mid time m puts the halfway step of every even grid at m; rho = 1 is the uniform grid.
    four = {s.times for s in settings if s.nfe == 4}
    assert {times[2] for times in four} == {0.3, 0.5, 0.7}
    assert tuple(default_times(4)) in four
    assert power_times(4, 2.0) == (1.0, 0.5625, 0.25, 0.0625, 0.0)


@pytest.mark.parametrize("flags,flag", [
    (dict(nfe="0"), "--nfe"), (dict(nfe="two"), "--nfe"), (dict(styles="fast"), "--styles"),
    (dict(mid_times="1"), "--mid-times"), (dict(mid_times=""), "--mid-times"), (dict(time_power="0"), "--time-power"),
    (dict(time_power="150"), "--time-power"),
    (dict(time_power="1e-9"), "--time-power"),  # every time below 1 rounds to 1: not a grid of distinct times
    (dict(guidance="-1"), "--guidance"),
])
def test_bad_grid_values_name_their_flag(flags, flag):
    values = {**dict(nfe="1,2,4", styles="few,any,mul", mid_times="0.3,0.5,0.7", time_power=None, guidance="1"), **flags}
    with pytest.raises(ConfigError) as err:
        SamplerGrid.from_flags(**values)
    assert err.value.flag == flag, str(err.value)


# ---- the table -------------------------------------------------------------------------------

def _point(nfe, style, times, value, guidance=1.0, status="finished", power="none"):
    return SamplerPoint("r", "trial", nfe, style, times, power, guidance, "online", 100, "mmd2", value, status)


def test_table_rows_are_nfe_by_times_columns_style_by_guidance_best_in_bold():
    points = [_point(1, "few", "1,0", 0.3), _point(1, "any", "1,0", 0.3, guidance=2.0),
              _point(2, "few", "1,0.7,0", 0.05, power="0.5146"), _point(2, "few", "1,0.3,0", 0.2, power="1.737"),
              _point(2, "any", "1,0.3,0", None, guidance=2.0, status="diverged", power="1.737")]
    table = PointTable("mmd2", "online", 100, points)
    lines = markdown_lines(table)
    assert lines[0] == "| NFE | times | few w=1 | any w=2 |"
    assert [line.split(" | ")[1] for line in lines[2:]] == ["1,0", "1,0.3,0 (\u03c1=1.737)", "1,0.7,0 (\u03c1=0.5146)"]
    assert lines[3] == "| 2 | 1,0.3,0 (\u03c1=1.737) | 0.2 | diverged |"
    assert lines[4] == "| 2 | 1,0.7,0 (\u03c1=0.5146) | **0.05** |  |"
    assert "".join(lines).count("**") == 2
    assert table.best_text().startswith("best: 0.05 at 2 NFE, few w=1")


# ---- weights of a checkpoint -----------------------------------------------------------------

def test_weights_are_the_online_target_or_eval_ema_networks():
    from sweeps.sampler_point import weights_of
    from trainables.config import TrialConfig
    from trainables.loop import Trainer

    trainer = Trainer(TrialConfig(task="moons", kappa=0.9, steps=10, batch_size=16, eval_samples=50))
    assert weights_of(trainer, "online") is trainer.model
    assert weights_of(trainer, "target") is trainer.target.module and trainer.target.module is not trainer.model
    with pytest.raises(ConfigError, match="--weights"):
        weights_of(trainer, "ema")
    if "eval_ema" in TrialConfig.__dataclass_fields__:  # the evaluation EMA, where this checkout has it
        with_ema = Trainer(TrialConfig(task="moons", steps=10, batch_size=16, eval_samples=50, eval_ema=0.99))
        assert weights_of(with_ema, "ema") is with_ema.eval_ema.module


def test_a_point_on_a_class_conditional_model_guides_with_its_labels():
    from sweeps.sampler_point import Loaded, score
    from sweeps.sampler_space import SamplerSetting
    from trainables.config import TrialConfig
    from trainables.evaluation import Evaluator
    from trainables.loop import Trainer

    torch.set_num_threads(1)
    cfg = TrialConfig(task="digits", model="DiT-XS/4", guidance=0.5, steps=30, batch_size=32, eval_samples=100, nfe=(1,))
    trainer = Trainer(cfg)
    for _ in range(cfg.steps):  # the DiT starts at F = 0, where every w gives the same samples
        trainer.train_step()
    evaluator = Evaluator(cfg, trainer.task, "cpu")
    ctx = Loaded(trainer.model.eval(), evaluator, trainer.task.num_classes, torch.device("cpu"))
    fd = {w: score(ctx, SamplerSetting(1, "few", (1.0, 0.0), None, w)) for w in (0.0, 1.0, 2.0)}
    assert fd[1.0] == evaluator.evaluate(trainer.model, cfg.steps).metrics["fd_1nfe"]  # w = 1: the trial's own number
    assert len(set(fd.values())) == 3 and all(v > 0 for v in fd.values()), fd


# ---- the command -----------------------------------------------------------------------------

@pytest.mark.parametrize("flags,flag", [
    (["--weights", "best"], "--weights"), (["--samples", "1"], "--samples"), (["--cpus-per-point", "0"], "--cpus-per-point"),
    (["--gpus-per-point", "-1"], "--gpus-per-point"), (["--guidance", "1,x"], "--guidance"),
])
def test_bad_options_name_their_flag(flags, flag):
    from sweeps.sample_grid import check_flags, parse_args

    with pytest.raises(ConfigError) as err:
        check_flags(parse_args(["--run", "0123abcd", *flags]))
    assert err.value.flag == flag, str(err.value)


@pytest.mark.parametrize("flags,needle", [
    (["--nfe", "0"], "--nfe"),
    (["--tracking-uri", "sqlite:////nonexistent/store/mlflow.db"], "no MLflow database"),
])
def test_bad_flags_are_refused_before_ray_starts(flags, needle, tmp_path):
    started = time.time()
    proc = run_cli([SCRIPT, "--run", "0123abcd", "--storage-path", str(tmp_path / "ray"), *flags], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr.replace(needle, "")
    assert time.time() - started < 60


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real Moons trial of sweep 's' in a real SQLite store: (uri, trial run id)."""
    from trainables.config import TrialConfig
    from trainables.run import run_local
    from trainables.tracking import TrialTracking, open_sweep_run, trial_run_id

    uri = f"sqlite:///{tmp_path_factory.mktemp('sampler') / 'mlflow.db'}"
    parent, _ = open_sweep_run(uri, "t", "s", {"orders": "2"}, {})
    cfg = TrialConfig(task="moons", order=2, kappa=0.9, steps=100, eval_every=100, eval_samples=200, nfe=(1, 2),
                      batch_size=64)
    run_local(cfg, TrialTracking(uri, "t", trial_key="s/N2", run_name="N2-k0.9-s0", parent_run_id=parent, sweep="s"))
    return uri, trial_run_id(uri, "t", "s/N2")


def _points(uri, trial_id):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(trial_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{trial_id}' and tags.`rcgm.kind` = 'sampler'")


@pytest.mark.slow
def test_sample_grid_on_a_trained_checkpoint(trained, local_ray, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from dashboards import sampler_table
    from dashboards.report import build_report
    from sweeps.sample_grid import main

    uri, trial_id = trained
    grid = ["--tracking-uri", uri, "--experiment", "t", "--storage-path", str(tmp_path / "ray"), "--no-report",
            "--nfe", "1,2", "--styles", "few,any"]
    assert main(["--sweep", "s", *grid, "--mid-times", "0.5,0.7"]) == 0, capsys.readouterr()
    runs = _points(uri, trial_id)
    assert len(runs) == 2 + 2 * 2
    by_key = {r.data.tags["rcgm.sampler.point"]: r for r in runs}
    assert set(by_key) == {f"online-n200-{k}" for k in ("1nfe-few-t1,0-w1", "1nfe-any-t1,0-w1", "2nfe-few-t1,0.5,0-w1",
                                                      "2nfe-any-t1,0.5,0-w1", "2nfe-few-t1,0.7,0-w1", "2nfe-any-t1,0.7,0-w1")}
    point = by_key["online-n200-2nfe-any-t1,0.7,0-w1"]
    assert point.data.params == {"nfe": "2", "sample_style": "any", "times": "1,0.7,0", "time_power": "0.5146",
                                 "sampling_guidance": "1", "weights": "online", "samples": "200"}
    assert point.data.tags["status"] == "finished" and point.data.tags["rcgm.sampler.checkpoint_step"] == "100"
    assert point.data.tags["rcgm.sampler.checkpoint"] == f"runs:/{trial_id}/checkpoint/state.pt"
    assert "RBF" in point.data.tags["metric_definition.mmd2"]
    value = {k: r.data.metrics["sampler_mmd2"] for k, r in by_key.items()}
    # At 1 NFE few and any are one sampler; the trial's own settings (uniform grid, few) reproduce its final metrics.
    assert value["online-n200-1nfe-few-t1,0-w1"] == value["online-n200-1nfe-any-t1,0-w1"]
    trial = MlflowClient(uri).get_run(trial_id)
    assert value["online-n200-1nfe-few-t1,0-w1"] == pytest.approx(trial.data.metrics["mmd2_1nfe"], rel=1e-12)
    assert value["online-n200-2nfe-few-t1,0.5,0-w1"] == pytest.approx(trial.data.metrics["mmd2_2nfe"], rel=1e-12)
    assert value["online-n200-2nfe-any-t1,0.7,0-w1"] != value["online-n200-2nfe-any-t1,0.5,0-w1"]
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(trial_id, "sampler")}
    assert "sampler/sampler.html" in artifacts and any(p.endswith(".png") for p in artifacts), artifacts
    out = capsys.readouterr().out
    page = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("sampler page: "))
    keep_artifact(page, "sampler_page.html")

    # The same command again runs nothing; one more mid time runs only its two new points.
    ids = {r.info.run_id for r in runs}
    assert main(["--run", trial_id, *grid, "--mid-times", "0.5,0.7"]) == 0
    assert "6 already done" in capsys.readouterr().out and {r.info.run_id for r in _points(uri, trial_id)} == ids
    assert main(["--run", trial_id, *grid, "--mid-times", "0.3,0.5,0.7"]) == 0
    rerun = _points(uri, trial_id)
    assert len(rerun) == 8 and ids < {r.info.run_id for r in rerun}
    assert len({r.data.tags["rcgm.sampler.point"] for r in rerun}) == 8

    # Guidance on an unconditional task is refused before any point runs.
    assert main(["--run", trial_id, *grid, "--guidance", "1,2"]) == 2
    assert "--guidance" in capsys.readouterr().err and len(_points(uri, trial_id)) == 8

    assert sampler_table.main(["--run", trial_id, "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    assert "| NFE | times | few | any |" in table and table.count("**") == 2
    assert "| 2 | 1,0.3,0 (\u03c1=1.737) |" in table and "| 1 | 1,0 |" in table
    report = build_report(uri, "t", sweep="s", out_dir=tmp_path / "report", log_to_parent=False)
    assert "Sampler settings on frozen checkpoints" in report.read_text()
