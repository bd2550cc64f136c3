"""The training step: model, target model, optimizer and random streams of one trial on one rank."""

from __future__ import annotations

import math

import torch

from trainables.config import TrialConfig
from trainables.data import load_task
from trainables.models import build_model
from trainables.rcgm.registry import build_objective
from trainables.rcgm.schedules import build_time_schedule
from trainables.rcgm.target import TargetModel


def learning_rate(cfg: TrialConfig, step: int) -> float:
    """The learning rate for the step after `step` completed ones.

    A function of the step alone, so a resumed trial continues on the same curve.
    """
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    return cfg.lr


def _generator(seed: int) -> torch.Generator:
    """A CPU generator: data and noise draws stay reproducible on any device."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


class Trainer:
    """Model, target model, optimizer and per-rank random streams for one trial."""

    def __init__(self, cfg: TrialConfig, device=None, rank: int = 0, world_size: int = 1, wrap_model=None):
        self.cfg = cfg
        self.device = torch.device(device or "cpu")
        self.rank, self.world_size = rank, world_size
        # Same seed on every rank: DDP also broadcasts rank 0's weights, but the target copy
        # is made before wrapping and must match on all ranks.
        torch.manual_seed(cfg.seed)
        self.task = load_task(cfg.task, seed=cfg.data_seed, rank=rank, world_size=world_size)
        self.model = build_model(cfg.model, self.task.shape, self.task.num_classes).to(self.device)
        self.online = wrap_model(self.model) if wrap_model else self.model
        self.target = TargetModel(self.model, cfg.kappa)
        self.objective = build_objective(
            cfg.objective, order=cfg.order, delta_t=cfg.delta_t, clip=cfg.clip, placement=cfg.placement,
            guidance=cfg.guidance, num_classes=self.task.num_classes, label_dropout=cfg.label_dropout,
        )
        self.schedule = build_time_schedule(cfg.time_schedule, dict(cfg.time_params), cfg.flow_fraction)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        # The global batch is split over workers, so a sweep cell means the same thing at any scale.
        self.local_batch = cfg.batch_size // world_size + (1 if rank < cfg.batch_size % world_size else 0)
        self.generator = _generator(1_000_003 * cfg.seed + 7919 * rank + 1)
        self.step = 0

    def train_step(self) -> float:
        """One optimizer step of the objective; returns the loss (NaN when it diverged)."""
        self.model.train()
        x, y = self.task.sample(self.local_batch, self.generator)
        x = x.to(self.device)
        y = y.to(self.device) if y is not None else None
        z = torch.randn(x.shape, generator=self.generator).to(self.device)
        t, r = self.schedule.sample(self.local_batch, self.generator, self.device)
        loss, _ = self.objective.loss(self.online, self.target, x, z, t, r, y=y, generator=self.generator)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.target.update(self.model)
        self.step += 1
        value = float(loss.detach())
        return value if math.isfinite(value) else float("nan")

    def state_dict(self) -> dict:
        """Everything a resumed trial needs to continue bit-for-bit from this step."""
        return {
            "model": self.model.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by state_dict()."""
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
