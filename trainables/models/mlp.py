"""The point-cloud network: an MLP on raw [x, t, r] (method notes 3.2), optionally class-conditional."""

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class VelocityMLP(nn.Module):
    """F(x_t, t, r, y) -> average velocity over [r, t]; depth Linear layers with activations between."""

    def __init__(self, dim: int, num_classes: int | None = None, width: int = 128, depth: int = 3,
                 activation: str = "relu", label_dim: int = 16):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth={depth}: need at least an input and an output layer")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.dim = dim
        self.num_classes = num_classes
        # Index num_classes is the null class (label dropout, training-time guidance).
        self.label_embed = None if num_classes is None else nn.Embedding(num_classes + 1, label_dim)
        in_dim = dim + 2 + (0 if num_classes is None else label_dim)
        layers = [nn.Linear(in_dim, width)]
        for _ in range(depth - 2):
            layers += [ACTIVATIONS[activation](), nn.Linear(width, width)]
        layers += [ACTIVATIONS[activation](), nn.Linear(width, dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, y: torch.Tensor | None = None):
        """x: (B, dim); t, r: (B,); y: (B,) labels, or None (the null class for conditional models)."""
        # Raw scalar times, no sinusoidal embedding: the reference Moons net does exactly this.
        parts = [x, t.to(x.dtype)[:, None], r.to(x.dtype)[:, None]]
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            parts.append(self.label_embed(y).to(x.dtype))
        elif y is not None:
            raise ValueError("this VelocityMLP is unconditional (num_classes=None) but got labels y")
        return self.net(torch.cat(parts, dim=1))
