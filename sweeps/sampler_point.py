"""One sampler point on a frozen checkpoint: load it, sample at one setting, score, record a child run of the trial.

The Tune trial function `sampler_point` runs one point. Trial processes are reused from point
to point (reuse_actors), so the loaded checkpoint and its Evaluator (reference set, fixed
noise) are kept for the next point of the same trial instead of being rebuilt each time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dashboards import sampler_table as schema
from sweeps.sampler_space import SamplerSetting
from trainables.config import TrialConfig
from trainables.metric_names import definition_tag
from trainables.rcgm.errors import ConfigError
from trainables.status import Status
from trainables.tracking import TrialTracker, TrialTracking

CHECKPOINT_ARTIFACT = "checkpoint/state.pt"  # where Rank0.finish logs a trial's final state
WEIGHTS = ("online", "target", "ema")
KEEP_LOADED = 2  # checkpoints a trial process keeps: the points of one trial come one after the other


@dataclass(frozen=True)
class TrialCheckpoint:
    """A trial's MLflow run and its final checkpoint: what every point of that trial shares."""

    tracking_uri: str
    experiment: str  # the trial run's experiment, where its points' child runs go
    run_id: str
    run_name: str
    checkpoint: str  # state.pt on the driver's disk; a point on another node downloads its own copy
    step: int  # the checkpoint's training step
    commit: str  # the git commit that trained it

    @property
    def checkpoint_uri(self) -> str:
        """The artifact the points sample from, as MLflow addresses it."""
        return f"runs:/{self.run_id}/{CHECKPOINT_ARTIFACT}"


@dataclass(frozen=True)
class PointSpec:
    """One Tune trial: a sampler setting on one trial's checkpoint, with its weights, sample count and resources."""

    trial: TrialCheckpoint
    setting: SamplerSetting
    weights: str
    samples: int
    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def key(self) -> str:
        """'online-n2000-2nfe-few-t1,0.3,0-w1': the point among its trial's points (tag rcgm.sampler.point)."""
        return f"{self.weights}-n{self.samples}-{self.setting.key}"

    def to_dict(self) -> dict:
        """Plain values: Tune keeps trial configs in its experiment state."""
        return {"trial": dataclasses.asdict(self.trial), "setting": dataclasses.asdict(self.setting),
                "weights": self.weights, "samples": self.samples, "cpus": self.cpus, "gpus": self.gpus}

    @classmethod
    def from_dict(cls, values: dict) -> "PointSpec":
        """The spec that to_dict wrote."""
        setting = dict(values["setting"])
        setting["times"] = tuple(setting["times"])
        return cls(TrialCheckpoint(**values["trial"]), SamplerSetting(**setting), values["weights"], values["samples"],
                   values["cpus"], values["gpus"])

    def params(self) -> dict[str, str]:
        """The point's MLflow params."""
        return {**self.setting.params(), schema.WEIGHTS: self.weights, schema.SAMPLES: str(self.samples)}

    def tracking(self) -> TrialTracking:
        """The point's child run of the trial's run, found again by its key (a retry reopens, never duplicates it)."""
        t = self.trial
        return TrialTracking(t.tracking_uri, t.experiment, trial_key=f"sampler/{t.run_id}/{self.key}",
                             run_name=self.key, parent_run_id=t.run_id)

    def tags(self) -> dict[str, str]:
        """What the point is and where its number comes from."""
        t = self.trial
        return {"rcgm.kind": schema.KIND, schema.POINT_TAG: self.key, schema.CHECKPOINT_TAG: t.checkpoint_uri,
                schema.STEP_TAG: str(t.step), schema.TRIAL_COMMIT_TAG: t.commit}


def sampling_config(values: dict, samples: int | None) -> TrialConfig:
    """The trial's config, to sample with samples per point (None: its own eval_samples) and no compile."""
    cfg = TrialConfig.from_dict(values)
    # compile: each point samples a few batches, far fewer than compiling would pay back.
    changes = {"compile": False, **({"eval_samples": samples} if samples is not None else {})}
    try:
        return dataclasses.replace(cfg, **changes)
    except ConfigError as err:
        if err.field == "eval_samples":
            raise ConfigError("samples", samples, err.expected, flag="--samples") from None
        raise


def load_checkpoint(path) -> dict:
    """A trial's state.pt (torch.load with weights_only: a checkpoint cannot run code)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def weights_of(trainer, weights: str):
    """The network behind the chosen weights: the online model, the target model, or the evaluation EMA."""
    if weights == "online":
        return trainer.model
    if weights == "target":
        return trainer.target.module  # kappa = 0: the online model itself
    ema = getattr(trainer, "eval_ema", None)
    if ema is None:
        raise ConfigError("weights", weights, "online or target: this checkpoint keeps no evaluation EMA", flag="--weights")
    return ema.module


@dataclass
class Loaded:
    """A checkpoint ready to sample: the chosen network, its Evaluator and the labels' null class."""

    net: object
    evaluator: object
    num_classes: int | None
    device: object


_LOADED: OrderedDict = OrderedDict()


def local_checkpoint(trial: TrialCheckpoint) -> Path:
    """The driver's copy when this node sees it, else one downloaded from the trial's run into a temporary folder."""
    path = Path(trial.checkpoint)
    if path.is_file():
        return path
    from mlflow.tracking import MlflowClient

    folder = tempfile.mkdtemp(prefix="rcgm-sampler-ckpt-")
    return Path(MlflowClient(trial.tracking_uri).download_artifacts(trial.run_id, CHECKPOINT_ARTIFACT, folder))


def loaded(spec: PointSpec) -> Loaded:
    """The spec's checkpoint loaded into a Trainer, with an Evaluator of spec.samples (cached per process)."""
    import torch

    from trainables.evaluation import Evaluator
    from trainables.loop import Trainer

    device = torch.device("cuda" if spec.gpus > 0 and torch.cuda.is_available() else "cpu")
    key = (spec.trial.tracking_uri, spec.trial.run_id, spec.weights, spec.samples, str(device))
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    state = load_checkpoint(local_checkpoint(spec.trial))
    cfg = sampling_config(state["config"], spec.samples)
    # The Trainer rebuilds the model exactly as trained and loads every weight set the state holds.
    trainer = Trainer(cfg, device)
    trainer.load_state_dict(state["trainer"])
    net = weights_of(trainer, spec.weights).eval()
    _LOADED[key] = Loaded(net, Evaluator(cfg, trainer.task, device), trainer.task.num_classes, device)
    while len(_LOADED) > KEEP_LOADED:
        _LOADED.popitem(last=False)
    return _LOADED[key]


def score(ctx: Loaded, setting: SamplerSetting) -> float:
    """The metric of samples drawn at setting from the Evaluator's fixed noise (and labels).

    The 'few' sampler's re-noising generator is seeded as the trial's own evaluation seeds it,
    so a point at the trial's setting reproduces its final metric (tests/test_sample_grid.py).
    """
    import torch

    from trainables.rcgm.sampling import sample
    from trainables.rcgm.sampling_guidance import guided

    ev = ctx.evaluator
    gen = torch.Generator()
    gen.manual_seed(ev.sample_generator_seed)
    y = ev.labels.to(ctx.device) if ev.labels is not None else None
    net = guided(ctx.net, setting.guidance, ctx.num_classes)
    x = sample(net, ev.noise.to(ctx.device), setting.nfe, style=setting.style, times=list(setting.times), y=y,
               generator=gen)
    return ev.score(x.cpu())


def run_point(spec: PointSpec) -> tuple[float, Status]:
    """Score one point and record it as a child run of the trial's run; returns (value, status)."""
    import torch

    torch.set_num_threads(max(1, int(round(spec.cpus))))  # two points on two cores must not fight
    tracker = TrialTracker(spec.tracking())
    try:
        ctx = loaded(spec)
        value = score(ctx, spec.setting)
    except Exception as err:
        tracker.start(spec.params(), spec.tags())
        tracker.finish(Status.FAILED, f"{type(err).__name__}: {err}"[:500])
        raise
    family = ctx.evaluator.family  # the Evaluator's: a latent folder with a VAE scores decoded images (fd, fid)
    tags = {**spec.tags(), definition_tag(family): ctx.evaluator.description, "rcgm.device": str(ctx.device)}
    tracker.start(spec.params(), tags)
    status = Status.FINISHED if math.isfinite(value) else Status.DIVERGED
    # At the checkpoint's step: the point's number sits beside the trial's curve at the step it came from.
    tracker.log_metrics({schema.metric_name(family): value, f"noise_{family}": ctx.evaluator.noise_level}, spec.trial.step)
    tracker.finish(status, "" if status == Status.FINISHED else "samples are not finite")
    return value, status


def sampler_point(config: dict) -> None:
    """Tune function trainable: run the point in config['point'] and report its value."""
    from ray import tune

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    spec = PointSpec.from_dict(config["point"])
    value, status = run_point(spec)
    tune.report({"value": value if math.isfinite(value) else float("nan"), "status": str(status)})
