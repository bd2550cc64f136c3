"""TrialConfig: one validated object describing a trial, checked once before Ray starts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from trainables.data import LATENT_PREFIX, POINT_TASKS, TASK_NAMES, is_latent_task
from trainables.models import MODEL_NAMES
from trainables.rcgm.checks import check_choice, check_int, check_real
from trainables.rcgm.errors import ConfigError

OBJECTIVES = ("rcgm", "meanflow")
PLACEMENTS = ("equal", "random")
SAMPLE_STYLES = ("few", "any", "mul")
LR_SCHEDULES = ("constant", "cosine")
IMAGE_METRICS = ("fd", "fid")
# Default model per kind of task, so `--task mnist` alone is a working trial.
# Latents: patch 2 fits any even latent grid (VAE f8 32x32, the tiny encoder's 14x14, 28x28 pixels).
DEFAULT_MODEL = {"points": "mlp", "images": "DiT-T/4", "latents": "DiT-T/2"}
# Default evaluation set per kind (0 = auto): the bundled MNIST holds out 500 images, and a
# latent folder of its 4500 training digits holds out 562 rows.
DEFAULT_EVAL_SAMPLES = {"points": 2000, "images": 500, "latents": 500}


_INF = float("inf")


def _is_int(value) -> bool:
    """True for real integers (bools are refused: order=True is a typo, not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trial; field names are the MLflow param names."""

    task: str = "moons"
    model: str = "auto"
    objective: str = "rcgm"
    order: int = 2
    kappa: float = 0.999
    delta_t: float = 0.01
    clip: float = 1.0
    placement: str = "equal"
    time_schedule: str = "uniform"
    time_params: dict = field(default_factory=dict)
    flow_fraction: float = 0.0
    guidance: float = 0.0
    label_dropout: float = 0.1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    batch_size: int = 256
    steps: int = 10_000
    grad_clip: float = 0.0
    seed: int = 0
    data_seed: int = 0
    eval_every: int = 1000
    eval_samples: int = 0
    nfe: tuple = (1, 2, 4)
    sample_style: str = "few"
    image_metric: str = "fd"
    checkpoint_every: int = 0
    collapse_after: float = 0.25
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self):
        """Validate every field; replace derived defaults ('auto' model, checkpoint_every)."""
        if is_latent_task(self.task):
            folder = self.task[len(LATENT_PREFIX):]
            if not folder.strip():
                raise ConfigError("task", self.task, f"{LATENT_PREFIX}<folder written by trainables.data.build_latents>")
            # Absolute: Ray workers run in per-trial directories, where a relative path would miss.
            object.__setattr__(self, "task", LATENT_PREFIX + os.path.abspath(os.path.expanduser(folder)))
        elif self.task not in TASK_NAMES:
            raise ConfigError("task", self.task, "one of " + ", ".join(TASK_NAMES) + f" or {LATENT_PREFIX}<folder>")
        kind = self.kind
        if self.model == "auto":
            object.__setattr__(self, "model", DEFAULT_MODEL[kind])
        if self.model not in MODEL_NAMES:
            raise ConfigError("model", self.model, "'auto' or one of " + ", ".join(MODEL_NAMES))
        if (self.model == "mlp") != (kind == "points"):
            want = "mlp" if kind == "points" else "a DiT (e.g. DiT-T/4)"
            raise ConfigError("model", self.model, f"{want} for the {kind} task {self.task!r}")
        check_choice("objective", self.objective, OBJECTIVES)
        check_int("order", self.order, 0)
        check_real("kappa", self.kappa, 0.0, 1.0)
        check_real("delta_t", self.delta_t, 0.0, 1.0, low_open=True, high_open=True)
        check_real("clip", self.clip, 0.0, _INF, low_open=True)
        check_choice("placement", self.placement, PLACEMENTS)
        check_real("flow_fraction", self.flow_fraction, 0.0, 1.0)
        # Building the schedule validates its name and parameters in one place (the method layer).
        from trainables.rcgm.schedules import build_time_schedule

        build_time_schedule(self.time_schedule, dict(self.time_params), self.flow_fraction)
        check_real("guidance", self.guidance, 0.0, _INF)
        if self.guidance > 0 and kind == "points":
            raise ConfigError("guidance", self.guidance, "0 for the unconditional point task " + repr(self.task))
        check_real("label_dropout", self.label_dropout, 0.0, 1.0, high_open=True)
        check_real("lr", self.lr, 0.0, _INF, low_open=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_int("batch_size", self.batch_size, 1)
        check_int("steps", self.steps, 1)
        check_real("grad_clip", self.grad_clip, 0.0, _INF)
        check_int("seed", self.seed, 0)
        check_int("data_seed", self.data_seed, 0)
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_samples", self.eval_samples, 0)
        if self.eval_samples == 0:
            object.__setattr__(self, "eval_samples", DEFAULT_EVAL_SAMPLES[kind])
        check_int("eval_samples", self.eval_samples, 2)
        nfe = tuple(self.nfe) if isinstance(self.nfe, (list, tuple)) else (self.nfe,)
        if not nfe or not all(_is_int(k) and k >= 1 for k in nfe):
            raise ConfigError("nfe", self.nfe, "one or more integers >= 1, e.g. 1,2,4")
        object.__setattr__(self, "nfe", tuple(sorted(set(nfe))))
        check_choice("sample_style", self.sample_style, SAMPLE_STYLES)
        check_choice("image_metric", self.image_metric, IMAGE_METRICS)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.checkpoint_every == 0:
            object.__setattr__(self, "checkpoint_every", self.eval_every)
        check_real("collapse_after", self.collapse_after, 0.0, 1.0)
        check_int("workers", self.workers, 1)
        check_real("gpus_per_worker", self.gpus_per_worker, 0.0, _INF)
        check_real("cpus_per_worker", self.cpus_per_worker, 0.0, _INF, low_open=True)
        if self.batch_size < self.workers:
            raise ConfigError("batch_size", self.batch_size, f">= workers ({self.workers}): the batch is split over workers")
        if self.objective == "meanflow" and self.workers > 1:
            # torch.func.jvp cannot pass through DistributedDataParallel.
            raise ConfigError("workers", self.workers, "1 with objective 'meanflow' (its JVP cannot run under DDP)")

    @property
    def kind(self) -> str:
        """'points', 'images' or 'latents'."""
        if is_latent_task(self.task):
            return "latents"
        return "points" if self.task in POINT_TASKS else "images"

    @property
    def metric_family(self) -> str:
        """The sample-quality metric family this trial reports: mmd2, fd, fid, or fld (latents)."""
        if self.kind == "latents":
            return "fld"
        return "mmd2" if self.kind == "points" else self.image_metric

    @property
    def task_label(self) -> str:
        """The task as a short name for runs and folders ('latents:/data/in1k' -> 'latents-in1k')."""
        if self.kind != "latents":
            return self.task
        return "latents-" + (os.path.basename(self.task.rstrip("/")) or "root")

    def metric_names(self) -> list[str]:
        """Metric names per NFE, e.g. ['mmd2_1nfe', 'mmd2_2nfe']."""
        return [f"{self.metric_family}_{k}nfe" for k in self.nfe]

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
        if "nfe" in values:
            values["nfe"] = tuple(values["nfe"]) if isinstance(values["nfe"], (list, tuple)) else values["nfe"]
        return cls(**values)

    def replace(self, **changes) -> "TrialConfig":
        """A copy with some fields changed, validated again."""
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def tracking_params(self) -> dict[str, str]:
        """Flat MLflow params with the architecture page's names."""
        params = {
            "task": self.task, "model": self.model, "objective": self.objective,
            "order": self.order, "kappa": self.kappa, "delta_t": self.delta_t, "clip": self.clip,
            "placement": self.placement, "time_schedule": self.time_schedule,
            "flow_fraction": self.flow_fraction, "guidance": self.guidance, "lr": self.lr,
            "batch_size": self.batch_size, "steps": self.steps, "seed": self.seed,
            "nfe": ",".join(str(k) for k in self.nfe), "sample_style": self.sample_style,
            "workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
            "eval_every": self.eval_every, "eval_samples": self.eval_samples,
            "grad_clip": self.grad_clip, "data_seed": self.data_seed,
        }
        if self.lr_schedule != "constant":
            # Logged only when set: sweeps from before this option resume with the same params.
            params["lr_schedule"] = self.lr_schedule
        if self.kind != "points":
            params["label_dropout"] = self.label_dropout
            params["image_metric"] = self.image_metric
        for key, value in sorted(self.time_params.items()):
            params[f"time_schedule.{key}"] = value
        return {k: str(v) for k, v in params.items()}
