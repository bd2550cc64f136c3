"""Rank-0 evaluation: any-step samples from fixed noise, their metric, and the trial's health."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from trainables.config import TrialConfig
from trainables.metric_names import EMA_PREFIX, nfe_metric
from trainables.metrics.reference_stats import EVAL_SEED
from trainables.rcgm.sampling import sample
from trainables.status import Status

# A metric this many times worse than the noise itself means the samples blew up.
EXPLODE_FACTOR = 10.0


@dataclass
class Evaluation:
    """One evaluation's metrics (per NFE), samples for pictures and the health verdict."""

    step: int
    metrics: dict[str, float]
    samples: dict[int, torch.Tensor] = field(repr=False)
    status: Status = Status.RUNNING
    reason: str = ""


class Evaluator:
    """Scores a model's 1/2/4-NFE samples against held-out data, always from the same noise."""

    def __init__(self, cfg: TrialConfig, task, device):
        self.cfg, self.task, self.device = cfg, task, torch.device(device)
        gen = torch.Generator()
        gen.manual_seed(EVAL_SEED + cfg.data_seed)  # the seed the reference-statistics command draws with too
        self.reference, self.labels = task.reference(cfg.eval_samples, gen)
        # Fixed evaluation noise: curves measure the model, not the luck of the draw.
        self.noise = torch.randn((cfg.eval_samples, *task.shape), generator=gen)
        self.sample_generator_seed = 20_011 + cfg.seed
        self.family = cfg.metric_family
        self._scorer, description = self._build_scorer()
        # The rest of a score's provenance: how its samples were drawn (labels, sampler, time grid).
        labels = "" if self.labels is None else ("; labels: those of the held-out images drawn (a random draw "
                                                 "from a class-stratified split)")
        self.description = f"{description}{labels}; sampler {cfg.sample_style} on the uniform time grid at the NFE of the metric's name"
        self.noise_level = self.score(self.noise)
        self.best: dict[str, float] = {}

    def _build_scorer(self):
        """The metric for this task and its description (logged beside every score)."""
        if self.cfg.kind == "points":
            from trainables.metrics import MMD_DESCRIPTION, mmd2

            ref, n = self.reference, self.cfg.eval_samples
            return (lambda x: mmd2(x, ref)), f"{MMD_DESCRIPTION}; {n} samples vs {n} held-out points"
        if self.cfg.kind == "latents":
            from trainables.metrics.decoded import latent_task_scorer

            # A folder with a VAE scores decoded images (fd / fid); the family follows what is scored.
            score, description, self.family = latent_task_scorer(self.task, self.reference, self.device)
            return score, description
        from trainables.metrics.frechet import FrechetScorer

        scorer = FrechetScorer(self.cfg.image_metric, self.reference)
        return scorer.score, scorer.description

    def score(self, samples: torch.Tensor) -> float:
        """The metric of samples against the reference set (inf when samples are not finite)."""
        if not torch.isfinite(samples).all():
            return float("inf")
        return float(self._scorer(samples.detach().cpu()))

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, prefix: str = "") -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        """Sample at every NFE from the fixed noise and score; names start with prefix (EMA_PREFIX for the eval EMA)."""
        was_training = model.training
        model.eval()
        gen = torch.Generator()
        gen.manual_seed(self.sample_generator_seed)
        z = self.noise.to(self.device)
        y = self.labels.to(self.device) if self.labels is not None else None
        metrics, samples = {}, {}
        for k in self.cfg.nfe:
            x = sample(model, z, k, style=self.cfg.sample_style, y=y, generator=gen).cpu()
            name = nfe_metric(prefix + self.family, k)
            metrics[name] = self.score(x)
            samples[k] = x
            if math.isfinite(metrics[name]):
                self.best[name] = min(self.best.get(name, math.inf), metrics[name])
        model.train(was_training)
        return metrics, samples

    def evaluate(self, model: torch.nn.Module, step: int, eval_ema: torch.nn.Module | None = None) -> Evaluation:
        """Score the online model (and the eval EMA's weights), update best-so-far, judge the trial's health.

        Health is the online model's: the objective trains it, and an average can hide a divergence.
        """
        metrics, samples = self.measure(model)
        status, reason = self.health(metrics, step)
        if eval_ema is not None:
            metrics.update(self.measure(eval_ema, EMA_PREFIX)[0])
        return Evaluation(step, metrics, samples, status, reason)

    def health(self, metrics: dict[str, float], step: int) -> tuple[Status, str]:
        """diverged: non-finite or exploded samples; collapsed: no better than noise late on."""
        values = list(metrics.values())
        if any(not math.isfinite(v) for v in values):
            return Status.DIVERGED, "samples are not finite"
        if all(v > EXPLODE_FACTOR * self.noise_level for v in values):
            return Status.DIVERGED, f"metric > {EXPLODE_FACTOR:g}x the noise level {self.noise_level:.4g}"
        if step >= self.cfg.collapse_after * self.cfg.steps and all(v >= self.noise_level for v in values):
            return Status.COLLAPSED, f"no better than noise ({self.noise_level:.4g}) at every NFE after step {step}"
        return Status.RUNNING, ""
