"""TrialConfig: every trial setting declared once, beside its field, and checked once before Ray starts.

A field's declaration carries its default, its help text, what it accepts (a range object; for
the method's settings the same object the method layer checks with, `trainables.rcgm.ranges`)
and when it is logged as an MLflow param. The command-line flags (`trainables.cli`), the MLflow
params (`tracking_params`) and the dashboards' column types (`param_types`) are derived from it:
a new setting is one new field here. This module imports no torch (the dashboards read it);
the checks that need the method layer's code (time schedules, guidance) import it when run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from enum import Enum

from trainables.data.catalog import IMAGE_HELD_OUT, LATENT_PREFIX, TASK_NAMES, is_latent_task, task_kind
from trainables.metric_names import nfe_metric
from trainables.models import MODEL_NAMES
from trainables.rcgm import ranges
from trainables.rcgm.checks import Boolean, Choice, IntRange, RealRange
from trainables.rcgm.errors import ConfigError

# Default model per kind of task, so `--task mnist` alone is a working trial.
# Latents: patch 2 fits any even latent grid (VAE f8 32x32, the tiny encoder's 14x14, 28x28 pixels).
DEFAULT_MODEL = {"points": "mlp", "images": "DiT-T/4", "latents": "DiT-T/2"}
# Default evaluation set per kind (0 = auto), capped at an image task's held-out split: the bundled
# MNIST holds out 500 images, digits 300; a latent folder of MNIST's 4500 training digits, 562 rows.
DEFAULT_EVAL_SAMPLES = {"points": 2000, "images": 500, "latents": 500}
RCGM_DEFAULT_ORDER = 2
PRECISIONS = ("fp32", "bf16")
ATTENTIONS = ("sdpa", "math")


class Track(Enum):
    """When a setting is logged as an MLflow param (and so compared when a sweep resumes)."""

    ALWAYS = "always"
    UNLESS_DEFAULT = "unless default"  # added after sweeps existed: old sweeps resume with the same params
    LABELLED = "labelled tasks"  # image and latent tasks only: point tasks have no labels
    PER_KEY = "per key"  # a dict logged as `<param>.<key>` per entry (time_schedule.a, ...)
    NEVER = "never"  # changes how a trial runs, not what it computes


def setting(default, help: str, *, accepts=None, track: Track = Track.ALWAYS, param: str | None = None,
            auto: str | None = None):
    """A TrialConfig field with its declaration: default, help, accepted values, MLflow param policy.

    accepts: a range object (`.check(field, value)`, `.describe()`), or None when __post_init__
    checks the field with the method layer's code (named in the help). auto: what the default
    means when it is a placeholder resolved per task ('auto', 0, None). param: the MLflow param
    name when it differs from the field's.
    """
    meta = {"help": help, "accepts": accepts, "track": track, "param": param, "auto": auto}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE = RealRange(0.0, math.inf, low_open=True)
NON_NEGATIVE = RealRange(0.0, math.inf)


class EvalEmaSetting:
    """0 (off), a per-step decay in (0, 1), or a half-life in training images (>= 1)."""

    def check(self, name: str, value) -> float:
        """value as a float if it is one of the three forms."""
        try:
            return NON_NEGATIVE.check(name, value)
        except ConfigError:
            raise ConfigError(name, value, self.describe()) from None

    def describe(self) -> str:
        """The accepted values in words (help text and errors)."""
        return "0 (off), a decay per step in (0, 1) such as 0.9999, or a half-life in training images >= 1 such as 500000"


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trial; field names are the MLflow param names."""

    task: str = setting("moons", "dataset: " + ", ".join(TASK_NAMES) + f", or {LATENT_PREFIX}<folder> (shards from "
                        "python -m trainables.data.build_latents)")
    model: str = setting("auto", "the network F(x_t, t, r, y)", accepts=Choice(("auto", *MODEL_NAMES)),
                         auto="auto: " + ", ".join(f"{m} for {k}" for k, m in DEFAULT_MODEL.items()))
    objective: str = setting("rcgm", "rcgm (the N-th order recursive objective), or a first-order peer under the same "
                             "target model: meanflow (JVP), shortcut (self-consistency), consistency (ECT-style)",
                             accepts=ranges.OBJECTIVE)
    order: int | None = setting(None, "RCGM order N (0 = flow matching, 1 = consistency/MeanFlow-like, >= 2 higher "
                                "order); the peers are first order", accepts=ranges.ORDER,
                                auto=f"auto: {RCGM_DEFAULT_ORDER} for rcgm, 1 for the first-order peers")
    kappa: float = setting(0.999, "target-model EMA decay: 0 = the online model, 1 = frozen initial copy",
                           accepts=ranges.KAPPA)
    delta_t: float = setting(0.01, "length of the Euler first segment", accepts=ranges.DELTA_T)
    clip: float = setting(1.0, "clip of the consistency residual xi (inf = no clipping)", accepts=ranges.CLIP)
    placement: str = setting("equal", "intermediate points: equal (reference code) or random (hierarchical)",
                             accepts=ranges.PLACEMENT)
    time_schedule: str = setting("uniform", "(t, r) sampling: uniform, beta, logit_normal (checked with its "
                                 "parameters by trainables.rcgm.schedules)")
    time_params: dict = setting({}, "schedule parameters as k=v pairs, e.g. a=0.8,b=1,scale=1 (beta), "
                                "mu=-0.4,sigma=1 (logit_normal)", track=Track.PER_KEY, param="time_schedule")
    flow_fraction: float = setting(0.0, "fraction of each batch with r = t (flow-matching samples)",
                                   accepts=ranges.FLOW_FRACTION)
    guidance: float = setting(0.0, "training-time guidance strength (class-conditional tasks only)",
                              accepts=ranges.GUIDANCE)
    label_dropout: float | None = setting(None, "fraction of labels dropped to the null class",
                                          accepts=ranges.LABEL_DROPOUT, track=Track.LABELLED,
                                          auto="auto: 0.1 with guidance, else 0 (the objective's default)")
    lr: float = setting(1e-3, "Adam learning rate", accepts=POSITIVE)
    lr_schedule: str = setting("constant", "constant, or cosine (from lr down to 0 at the last step)",
                               accepts=Choice(("constant", "cosine")), track=Track.UNLESS_DEFAULT)
    batch_size: int = setting(256, "global batch size (split over workers)", accepts=IntRange(1))
    steps: int = setting(10_000, "optimizer steps", accepts=IntRange(1))
    grad_clip: float = setting(0.0, "gradient-norm clip (0 = off)", accepts=NON_NEGATIVE)
    seed: int = setting(0, "training seed (init, batches, noise)", accepts=IntRange(0))
    data_seed: int = setting(0, "seed of the dataset pools and the evaluation set", accepts=IntRange(0))
    eval_every: int = setting(1000, "evaluate (samples, metrics, picture) every this many steps", accepts=IntRange(1))
    eval_samples: int = setting(0, "samples per NFE for the metric", accepts=IntRange(0),
                                auto="0 = auto: 2000 for points, 500 for images and latents (at most the held-out split)")
    nfe: tuple = setting((1, 2, 4), "comma-separated numbers of function evaluations to sample with, e.g. 1,2,4",
                         accepts=ranges.NFE)
    sample_style: str = setting("few", "multi-step sampling: few (re-noise), any (jump to next time), mul (Euler)",
                                accepts=ranges.SAMPLE_STYLE)
    eval_ema: float = setting(0.0, "also score an EMA of the weights kept for evaluation (not the target model): a "
                              "half-life in training images, e.g. 500000 (the same for any batch size or worker "
                              "count), or a decay per step, e.g. 0.9999; 0 = off",
                              accepts=EvalEmaSetting(), track=Track.UNLESS_DEFAULT)
    fid_samples: int = setting(0, "at the trial's end, an Inception FID of this many samples per NFE (e.g. 50000), "
                               "generated across all the trial's workers, against the whole held-out split "
                               "(image tasks); 0 = off", accepts=IntRange(0), track=Track.UNLESS_DEFAULT)
    image_metric: str = setting("fd", "image metric: fd (offline digit-classifier features) or fid (the bundled Inception port, or $RCGM_FID_WEIGHTS)",
                                accepts=Choice(("fd", "fid")), track=Track.LABELLED)
    checkpoint_every: int = setting(0, "checkpoint every this many steps", accepts=IntRange(0), track=Track.NEVER,
                                    auto="0 = with every evaluation")
    collapse_after: float = setting(0.25, "fraction of steps after which no-better-than-noise samples end the trial "
                                    "as collapsed", accepts=RealRange(0.0, 1.0), track=Track.UNLESS_DEFAULT)
    precision: str = setting("auto", "forward precision: bf16 (autocast; weights, optimizer, target model and the "
                             "residual stay fp32) or fp32", accepts=Choice(("auto", *PRECISIONS)),
                             track=Track.UNLESS_DEFAULT, auto="auto: bf16 on CUDA, fp32 on CPU")
    attention: str = setting("auto", "DiT attention: sdpa (PyTorch's fused kernels: flash / memory-efficient on GPU) "
                             "or math (explicit softmax)", accepts=Choice(("auto", *ATTENTIONS)),
                             track=Track.UNLESS_DEFAULT, auto="auto: sdpa; MeanFlow's JVP takes SDPA's math kernel by itself")
    # How it runs, not what it computes (up to rounding): NEVER keeps sweeps resumable with or without it.
    compile: bool = setting(False, "torch.compile the model (inductor; the first steps pay for compiling)",
                            accepts=Boolean(), track=Track.NEVER)
    workers: int = setting(1, "Ray Train workers per trial (DDP)", accepts=IntRange(1))
    gpus_per_worker: float = setting(0.0, "GPUs per worker (0 = CPU)", accepts=NON_NEGATIVE)
    # Resources, not results: Ray records the placement; NEVER keeps old sweeps resumable.
    cpus_per_worker: float = setting(1.0, "CPUs per worker (also its torch threads)", accepts=POSITIVE, track=Track.NEVER)

    def __post_init__(self):
        """Check every field with its declared range and the method layer; resolve 'auto' values."""
        try:
            self._check()
        except ConfigError as err:
            raise with_flag(err) from None

    def _check(self) -> None:
        """The checks themselves (errors carry no flag yet; __post_init__ adds it)."""
        self._check_task()
        for f in dataclasses.fields(self):
            accepts = f.metadata["accepts"]
            value = getattr(self, f.name)
            if accepts is None or value is None:
                continue
            if f.name == "nfe":
                self._set("nfe", _nfe_tuple(value, accepts))
            else:
                self._set(f.name, accepts.check(f.name, value))
        self._check_order()
        kind = self.kind
        if self.model == "auto":
            self._set("model", DEFAULT_MODEL[kind])
        if (self.model == "mlp") != (kind == "points"):
            want = "mlp" if kind == "points" else "a DiT (e.g. DiT-T/4)"
            raise ConfigError("model", self.model, f"{want} for the {kind} task {self.task!r}")
        self._check_method()
        if self.eval_samples == 0:
            self._set("eval_samples", min(DEFAULT_EVAL_SAMPLES[kind], IMAGE_HELD_OUT.get(self.task, math.inf),
                                          latent_held_out(self.task) if kind == "latents" else math.inf))
        IntRange(2).check("eval_samples", self.eval_samples)
        if self.fid_samples and self.kind != "images":
            raise ConfigError("fid_samples", self.fid_samples, f"0 for the {self.kind} task {self.task!r}: the closing "
                              "FID is for image tasks (latent folders score fd / fid on decoded samples instead)")
        if self.fid_samples == 1:
            raise ConfigError("fid_samples", 1, "0 (off) or >= 2 (a covariance needs two samples)")
        if self.checkpoint_every == 0:
            self._set("checkpoint_every", self.eval_every)
        if self.batch_size < self.workers:
            raise ConfigError("batch_size", self.batch_size, f">= workers ({self.workers}): the batch is split over workers")
        if self.objective == "meanflow" and self.compile:
            # Dynamo cannot trace torch.func.jvp into a compiled module: it would run eager, silently.
            raise ConfigError("compile", self.compile, "off with objective 'meanflow' (its JVP runs the model eager)")
        if self.objective == "meanflow" and self.workers > 1:
            # torch.func.jvp cannot pass through DistributedDataParallel.
            raise ConfigError("workers", self.workers, "1 with objective 'meanflow' (its JVP cannot run under DDP)")

    def _check_order(self) -> None:
        """Resolve the order: the recursive objective's N, or 1 for a first-order peer (which has no other)."""
        if self.objective == "rcgm":
            if self.order is None:
                self._set("order", RCGM_DEFAULT_ORDER)
        elif self.order is None:
            self._set("order", 1)
        elif self.order != 1:
            raise ConfigError("order", self.order, f"1 (or unset) with objective {self.objective!r}, a first-order "
                              "objective; higher orders are objective 'rcgm'")

    def _check_task(self) -> None:
        """A known task name, or a latents folder made absolute."""
        if is_latent_task(self.task):
            folder = self.task[len(LATENT_PREFIX):]
            if not folder.strip():
                raise ConfigError("task", self.task, f"{LATENT_PREFIX}<folder written by trainables.data.build_latents>")
            # Absolute: Ray workers run in per-trial directories, where a relative path would miss.
            self._set("task", LATENT_PREFIX + os.path.abspath(os.path.expanduser(folder)))
        elif self.task not in TASK_NAMES:
            raise ConfigError("task", self.task, "one of " + ", ".join(TASK_NAMES) + f" or {LATENT_PREFIX}<folder>")

    def _check_method(self) -> None:
        """The checks the method layer owns, by its own code: the time schedule, guidance and labels."""
        from trainables.rcgm.guidance import check_guidance
        from trainables.rcgm.schedules import build_time_schedule

        if not isinstance(self.time_params, dict):
            raise ConfigError("time_params", self.time_params, "a dict of schedule parameters, e.g. {'a': 0.8}")
        build_time_schedule(self.time_schedule, dict(self.time_params), self.flow_fraction)
        # Image and latent tasks are class-conditional unless a latent folder has no labels: preflight
        # checks that case with the folder's metadata (trainables.preflight).
        _, dropout = check_guidance(self.guidance, self.label_dropout, conditional=self.kind != "points")
        self._set("label_dropout", dropout)

    def _set(self, name: str, value) -> None:
        """Replace a field's value during validation (the dataclass is frozen)."""
        object.__setattr__(self, name, value)

    @property
    def kind(self) -> str:
        """'points', 'images' or 'latents'."""
        return task_kind(self.task)

    @property
    def metric_family(self) -> str:
        """The sample-quality metric family this trial reports: mmd2, fd, fid, or for latents fld.

        A latents folder built with a VAE is scored in image space, fd or fid by the decoded
        shape, when that VAE loads here (trainables.metrics.decoded); image_metric is then unused.
        """
        if self.kind == "latents":
            from trainables.metrics.decoded import latent_metric_family

            return latent_metric_family(self.task[len(LATENT_PREFIX):])
        return "mmd2" if self.kind == "points" else self.image_metric

    @property
    def task_label(self) -> str:
        """The task as a short name for runs and folders ('latents:/data/in1k' -> 'latents-in1k')."""
        if self.kind != "latents":
            return self.task
        return "latents-" + (os.path.basename(self.task.rstrip("/")) or "root")

    def metric_names(self) -> list[str]:
        """Metric names per NFE, e.g. ['mmd2_1nfe', 'mmd2_2nfe']."""
        return [nfe_metric(self.metric_family, k) for k in self.nfe]

    def to_dict(self) -> dict:
        """Plain dict (JSON- and pickle-safe) that from_dict turns back into this config."""
        out = dataclasses.asdict(self)
        out["nfe"] = list(self.nfe)
        out["time_params"] = dict(self.time_params)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "TrialConfig":
        """Build from a dict, refusing unknown keys with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], values[unknown[0]], "a known trial setting: " + ", ".join(sorted(known)))
        values = dict(values)
        if isinstance(values.get("nfe"), list):
            values["nfe"] = tuple(values["nfe"])
        return cls(**values)

    def tracking_params(self) -> dict[str, str]:
        """Flat MLflow params, as each field's declaration says (architecture page names)."""
        params = {}
        for f in dataclasses.fields(self):
            track, value = f.metadata["track"], getattr(self, f.name)
            name = f.metadata["param"] or f.name
            if track is Track.NEVER or (track is Track.LABELLED and self.kind == "points"):
                continue
            if track is Track.UNLESS_DEFAULT and value == f.default:
                continue
            if track is Track.PER_KEY:
                params.update({f"{name}.{k}": v for k, v in sorted(value.items())})
            else:
                params[name] = ",".join(map(str, value)) if isinstance(value, tuple) else value
        return {k: str(v) for k, v in params.items()}


def latent_held_out(task: str) -> float:
    """How many rows a latents folder holds out for evaluation (inf when it cannot be read: the preflight says why)."""
    from trainables.data.catalog import DatasetUnavailable
    from trainables.data.latent_task import held_out_rows
    from trainables.data.latents import LatentShards

    try:
        return held_out_rows(len(LatentShards(task[len(LATENT_PREFIX):])))
    except (DatasetUnavailable, OSError, KeyError, ValueError):
        return math.inf


def _nfe_tuple(value, accepts) -> tuple[int, ...]:
    """One or more NFE counts, sorted and deduplicated."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise ConfigError("nfe", value, "one or more integers >= 1, e.g. 1,2,4")
    return tuple(sorted({accepts.check("nfe", k) for k in values}))


def declarations() -> dict[str, dataclasses.Field]:
    """The declared settings by field name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(TrialConfig)}


def flag_of(name: str) -> str | None:
    """The command-line flag that sets a field (time_schedule.<k> is set by --time-params); None if none."""
    if name.startswith("time_schedule."):
        return "--time-params"
    return "--" + name.replace("_", "-") if name in declarations() else None


def with_flag(err: ConfigError) -> ConfigError:
    """err naming the flag of its field, when that field is a trial setting (else unchanged)."""
    flag = flag_of(err.field)
    return err.with_flag(flag) if flag and not err.flag else err


def field_type(f: dataclasses.Field) -> type:
    """The Python type a field holds (int, float, str, tuple or dict), from its annotation."""
    hint = typing.get_type_hints(TrialConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def param_types() -> dict[str, type]:
    """MLflow param name -> Python type of its values, for every logged setting (dashboards' column types).

    A PER_KEY dict gives its prefix with a trailing dot (`time_schedule.`); tuples are logged as text.
    """
    out = {}
    for name, f in declarations().items():
        track, param = f.metadata["track"], f.metadata["param"] or name
        if track is Track.NEVER:
            continue
        if track is Track.PER_KEY:
            out[param + "."] = float
        else:
            kind = field_type(f)
            out[param] = str if kind is tuple else kind
    return out
