"""Small tensor helpers the objectives share: network calls in fp32, per-sample times, the MSE, seeded uniforms."""

import torch


def expand(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) time as (B, 1, ..., 1) so it broadcasts against a batch like `like`."""
    return s.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims, then over the batch (the reference's l2_loss)."""
    return (a - b).pow(2).flatten(1).mean(dim=1).mean()


def uniform_like(shape, like: torch.Tensor, generator) -> torch.Tensor:
    """U(0,1) drawn on the generator's device, returned on like's device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device, like.dtype)


def evaluate(net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, y) -> torch.Tensor:
    """net(x, t, r, y) in x's dtype: under bf16 autocast the objective's arithmetic stays fp32.

    The residual divides a difference of nearly equal terms by delta_t; in bf16 that division
    would multiply the rounding of each term by 1/delta_t (tests/test_precision.py).
    """
    return net(x, t, r, y).to(x.dtype)
