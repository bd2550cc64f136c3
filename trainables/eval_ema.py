"""The evaluation EMA: an average of the weights kept for scoring, apart from the target model.

The target model's decay kappa is part of the objective (its jumps are the regression target);
the evaluation EMA only changes which weights are scored, as peers do (UCGM trains with a
teacher decay of 1.0 and scores an EMA of 0.9999). Its setting is either a half-life in training
images (the same average for any batch size or worker count) or a fixed per-step decay.
"""

from __future__ import annotations

import copy

import torch

from trainables.rcgm.target import unwrap

# EDM's ramp-up (Karras et al. 2022, training/training_loop.py): early on the half-life is at
# most this fraction of the images seen, so the average forgets the random initialisation.
RAMPUP = 0.05


def is_half_life(setting: float) -> bool:
    """True when the setting is a half-life in images (>= 1), False for a per-step decay in (0, 1)."""
    return setting >= 1.0


def step_decay(setting: float, batch_size: int, images_seen: int) -> float:
    """The decay of one update after images_seen training images (this update's batch included).

    Half-life H images at global batch B: the weight of an image halves every H images, so one
    step of B images keeps 0.5 ** (B / H) of the average. A decay setting is used as given.
    """
    if not is_half_life(setting):
        return setting
    half_life = min(setting, RAMPUP * images_seen)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


def describe(setting: float) -> str:
    """The setting in words, for a report or a run's tags."""
    if is_half_life(setting):
        return f"eval EMA, half-life {setting:g} training images (EDM ramp-up {RAMPUP:g})"
    return f"eval EMA, decay {setting:g} per step"


class EvalEMA:
    """An exponential moving average of the online weights, updated after every optimizer step."""

    def __init__(self, online: torch.nn.Module, setting: float, batch_size: int):
        self.setting, self.batch_size = float(setting), int(batch_size)
        self.images_seen = 0
        self.module = copy.deepcopy(unwrap(online)).requires_grad_(False)

    @property
    def description(self) -> str:
        """What this average is, in words."""
        return describe(self.setting)

    @torch.no_grad()
    def update(self, online: torch.nn.Module) -> None:
        """Move the average toward the online weights by one step's decay."""
        self.images_seen += self.batch_size
        decay = step_decay(self.setting, self.batch_size, self.images_seen)
        averages, sources = list(self.module.parameters()), [p.detach() for p in unwrap(online).parameters()]
        torch._foreach_lerp_(averages, sources, 1.0 - decay)
        buffers = list(self.module.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(unwrap(online).buffers()))

    def state_dict(self) -> dict:
        """The setting, the images seen (the ramp-up's clock) and the averaged weights."""
        return {"setting": self.setting, "images_seen": self.images_seen, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); the stored setting must be this object's."""
        if float(state["setting"]) != self.setting:
            raise ValueError(f"checkpoint has eval_ema={state['setting']}, this trial eval_ema={self.setting}")
        self.images_seen = int(state["images_seen"])
        self.module.load_state_dict(state["module"])
