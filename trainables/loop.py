"""The training step: model, target model, optimizer and random streams of one trial on one rank."""

from __future__ import annotations

import math

import torch

from trainables import acceleration
from trainables.config import TrialConfig
from trainables.cost import measure_step_cost
from trainables.data import load_task
from trainables.eval_ema import EvalEMA
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


def _generator(seed: int, device: torch.device) -> torch.Generator:
    """The trial's random stream: on the GPU for GPU runs (batches and noise made where they are used).

    A CPU run draws exactly what it drew before; a GPU run draws another (Philox) stream, the
    same on every run of the same seed, torch and GPU kind (docs/design.md, reproducibility).
    """
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu")
    gen.manual_seed(seed)
    return gen


class Trainer:
    """Model, target model, optimizer and per-rank random streams for one trial."""

    def __init__(self, cfg: TrialConfig, device=None, rank: int = 0, world_size: int = 1, wrap_model=None,
                 measure_cost: bool = False):
        self.cfg = cfg
        self.device = torch.device(device or "cpu")
        self.rank, self.world_size = rank, world_size
        acceleration.configure_device(self.device)
        self.precision = acceleration.resolve_precision(cfg.precision, self.device)
        self.attention = acceleration.resolve_attention(cfg.attention)
        # Same seed on every rank: DDP also broadcasts rank 0's weights, but the target copy
        # is made before wrapping and must match on all ranks.
        torch.manual_seed(cfg.seed)
        self.task = load_task(cfg.task, seed=cfg.data_seed, rank=rank, world_size=world_size)
        self.model = build_model(cfg.model, self.task.shape, self.task.num_classes,
                                 attention=self.attention).to(self.device)
        self.target = TargetModel(self.model, cfg.kappa)
        # Every rank keeps it (DDP keeps the online weights equal), so any rank's checkpoint is whole.
        self.eval_ema = EvalEMA(self.model, cfg.eval_ema, cfg.batch_size) if cfg.eval_ema else None
        self.objective = build_objective(
            cfg.objective, order=cfg.order, delta_t=cfg.delta_t, clip=cfg.clip, placement=cfg.placement,
            guidance=cfg.guidance, num_classes=self.task.num_classes, label_dropout=cfg.label_dropout,
        )
        self.schedule = build_time_schedule(cfg.time_schedule, dict(cfg.time_params), cfg.flow_fraction)
        self.optimizer = acceleration.build_optimizer(self.model.parameters(), cfg.lr, self.device)
        # The global batch is split over workers, so a sweep cell means the same thing at any scale.
        self.local_batch = cfg.batch_size // world_size + (1 if rank < cfg.batch_size % world_size else 0)
        self.generator = _generator(1_000_003 * cfg.seed + 7919 * rank + 1, self.device)
        self.step = 0
        # Counted on the eager, unwrapped model: the counter cannot see into compiled graphs or DDP.
        self.cost = measure_step_cost(self) if measure_cost else None
        if cfg.compile:
            acceleration.compile_model(self.model)
            if self.target.module is not self.model:
                acceleration.compile_model(self.target.module)
        self.online = wrap_model(self.model) if wrap_model else self.model

    def draw_batch(self, batch: int, generator: torch.Generator):
        """(x, y, z, t, r) for one step, drawn from generator on its device and moved to the trial's."""
        x, y = self.task.sample(batch, generator)
        x = x.to(self.device)
        y = y.to(self.device) if y is not None else None
        z = torch.randn(x.shape, generator=generator, device=generator.device).to(self.device)
        t, r = self.schedule.sample(batch, generator, self.device)
        return x, y, z, t, r

    def train_step(self) -> float:
        """One optimizer step of the objective; returns the loss (NaN when it diverged)."""
        self.model.train()
        x, y, z, t, r = self.draw_batch(self.local_batch, self.generator)
        with acceleration.autocast(self.device, self.precision):
            loss, _ = self.objective.loss(self.online, self.target, x, z, t, r, y=y, generator=self.generator)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.target.update(self.model)
        if self.eval_ema is not None:
            self.eval_ema.update(self.model)
        self.step += 1
        value = float(loss.detach())
        return value if math.isfinite(value) else float("nan")

    def state_dict(self) -> dict:
        """Everything a resumed trial needs to continue bit-for-bit from this step."""
        state = {
            "model": self.model.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "generator": self.generator.get_state(),
        }
        if self.eval_ema is not None:
            state["eval_ema"] = self.eval_ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by state_dict()."""
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.eval_ema is not None:
            if "eval_ema" not in state:
                raise ValueError("checkpoint has no eval_ema state: it was saved by a trial with --eval-ema 0")
            self.eval_ema.load_state_dict(state["eval_ema"])
        # get_state() is a CPU byte tensor for any generator; map_location may have moved it.
        self.generator.set_state(state["generator"].cpu())
