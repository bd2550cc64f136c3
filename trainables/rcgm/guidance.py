"""Training-time classifier-free guidance: label dropout to a null class and the guided velocity (notes 1.7)."""

import torch

from trainables.rcgm import ranges
from trainables.rcgm.checks import check_int
from trainables.rcgm.errors import ConfigError
from trainables.rcgm.tensors import evaluate, uniform_like

GUIDED_LABEL_DROPOUT = 0.1  # the share of null labels guidance needs to learn the unconditional velocity


def default_label_dropout(guidance: float) -> float:
    """Guidance needs a learned null class, so it switches label dropout on; without it, none."""
    return GUIDED_LABEL_DROPOUT if guidance > 0.0 else 0.0


def check_guidance(guidance, label_dropout, conditional: bool) -> tuple[float, float]:
    """(guidance, label_dropout) checked for a task with (conditional) or without class labels.

    label_dropout None means default_label_dropout(guidance).
    """
    guidance = ranges.GUIDANCE.check("guidance", guidance)
    if guidance > 0.0 and not conditional:
        raise ConfigError("guidance", guidance, "0.0 for an unconditional task (no class labels)")
    label_dropout = default_label_dropout(guidance) if label_dropout is None else label_dropout
    return guidance, ranges.LABEL_DROPOUT.check("label_dropout", label_dropout)


class GuidedLabels:
    """Label dropout to the null class and the training-time guided velocity (method notes 1.7)."""

    def __init__(self, guidance: float, num_classes, label_dropout):
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1)
        self.guidance, self.label_dropout = check_guidance(guidance, label_dropout, num_classes is not None)
        self.num_classes = num_classes

    def drop(self, y, like: torch.Tensor, generator):
        """y with a label_dropout share of its entries replaced by the null class num_classes."""
        if y is None or self.label_dropout == 0.0:
            return y
        keep = uniform_like(y.shape, like, generator) >= self.label_dropout
        return torch.where(keep, y, torch.full_like(y, self.num_classes))

    @torch.no_grad()
    def velocity(self, net, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, y) -> torch.Tensor:
        """v_g = v + w (F-(x_t,t,t|y) - F-(x_t,t,t|null)); plain v when guidance is off."""
        if self.guidance == 0.0:
            return v
        if y is None:
            raise ConfigError("guidance", self.guidance, "0.0 when batches carry no labels (y is None)")
        null = torch.full_like(y, self.num_classes)
        return v + self.guidance * (evaluate(net, x_t, t, t, y) - evaluate(net, x_t, t, t, null))
