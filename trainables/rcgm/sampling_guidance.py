"""Classifier-free guidance at sampling time: a model wrapper mixing the conditional and null-label fields.

F_w(x, t, r | y) = F(x, t, r | null) + w (F(x, t, r | y) - F(x, t, r | null))

(Ho & Salimans 2022, "Classifier-free diffusion guidance", whose (1 + w) is this w; written for the
average velocity F of the method notes, section 1.7.)

w = 1 is the plain conditional model, w = 0 the unconditional one (the null class), w > 1 pushes
samples towards their label. This is not the training-time `guidance` of GuidedLabels: that one
changes the regression target (v_g = v + g (F(y) - F(null))), so a model trained with g > 0
already carries guidance and a sampling w > 1 adds more on top of it.
"""

import torch

from trainables.rcgm.checks import RealRange, check_int
from trainables.rcgm.errors import ConfigError

# The same bound as training-time guidance: beyond 1e3 the difference term only amplifies noise.
SAMPLING_GUIDANCE = RealRange(0.0, 1e3)
PLAIN = 1.0  # the weight at which F_w is the conditional model itself


class GuidedModel(torch.nn.Module):
    """The guided field F_w of a class-conditional model whose null class is label index num_classes."""

    def __init__(self, model: torch.nn.Module, guidance: float, num_classes: int):
        super().__init__()
        self.model = model
        self.guidance = SAMPLING_GUIDANCE.check("sampling_guidance", guidance)
        self.num_classes = check_int("num_classes", num_classes, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, y=None) -> torch.Tensor:
        """F_w(x, t, r | y); y must hold class labels (guidance mixes them with the null class)."""
        if y is None:
            raise ConfigError("sampling_guidance", self.guidance, f"{PLAIN:g} when sampling without labels (y is None)")
        if self.guidance == PLAIN:
            return self.model(x, t, r, y)  # exactly the conditional model, no second pass
        null = torch.full_like(y, self.num_classes)
        # One call on a batch of 2B rows instead of two calls of B: half the kernel launches.
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([r, r]), torch.cat([y, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + self.guidance * (conditional - unconditional)


def guided(model: torch.nn.Module, guidance: float, num_classes: int | None) -> torch.nn.Module:
    """The model to sample with at weight guidance: the model itself at w = 1, else its GuidedModel.

    num_classes None (an unconditional model) accepts only w = 1: there is no null class to mix.
    """
    guidance = SAMPLING_GUIDANCE.check("sampling_guidance", guidance)
    if num_classes is None:
        if guidance != PLAIN:
            raise ConfigError("sampling_guidance", guidance, f"{PLAIN:g} for an unconditional model (no class labels)")
        return model
    return model if guidance == PLAIN else GuidedModel(model, guidance, num_classes)
