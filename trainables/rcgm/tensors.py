"""Small tensor helpers the objectives share: network calls in fp32, per-sample times, the MSE, seeded uniforms."""

from collections.abc import Mapping

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


class DeviceStats(Mapping):
    """Scalar diagnostics kept where they were computed, moved to the host in one transfer when first read.

    Computing them must not wait for the GPU: a .tolist() between forward and backward would
    stall the queue every step, and the training loop never reads them.
    """

    def __init__(self, **tensors: torch.Tensor):
        self._tensors = {k: v.detach() for k, v in tensors.items()}
        self._values: dict[str, float] | None = None

    def _host(self) -> dict[str, float]:
        """The values as floats (one device-to-host copy)."""
        if self._values is None:
            stacked = torch.stack([v.float().reshape(()) for v in self._tensors.values()])
            self._values = dict(zip(self._tensors, stacked.tolist()))
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._host()[key]

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def evaluate(net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, y) -> torch.Tensor:
    """net(x, t, r, y) in x's dtype: under bf16 autocast the objective's arithmetic stays fp32.

    The residual divides a difference of nearly equal terms by delta_t; in bf16 that division
    would multiply the rounding of each term by 1/delta_t (tests/test_precision.py).
    """
    return net(x, t, r, y).to(x.dtype)
