"""Squared maximum mean discrepancy between two point clouds (the paradox study's metric)."""

import torch

SIGMAS = (0.1, 0.2, 0.5, 1.0, 2.0)
MMD_DESCRIPTION = (
    "MMD^2, biased V-statistic (all pairs incl. i=j), kernel = mean of RBF kernels "
    "exp(-||a-b||^2 / (2 sigma^2)) over sigma in {0.1, 0.2, 0.5, 1, 2}, computed in float64"
)
_BLOCK = 2048  # rows per block: keeps the pairwise matrix at a few tens of MB for any n


def _as_float64(a) -> torch.Tensor:
    """A (n, d) float64 CPU tensor from a tensor or array of n samples."""
    a = torch.as_tensor(a).detach().to("cpu", torch.float64)
    return a.reshape(a.shape[0], -1)


def _kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of the mixed RBF kernel over all pairs (a_i, b_j).

    Two block-sized buffers are reused for every bandwidth (in-place ops, the same arithmetic in the
    same order as the plain expression): a 2000-point evaluation otherwise makes ten 32 MB
    temporaries per call, which glibc keeps and fragments, so a trial process grew by hundreds of MB.
    """
    total = torch.zeros((), dtype=torch.float64)
    b_sq = (b * b).sum(dim=1)
    for start in range(0, a.shape[0], _BLOCK):
        blk = a[start:start + _BLOCK]
        # d2 = (|a|^2 + |b|^2) - 2 a.b, clamped: the expanded form can go slightly negative for coincident points.
        work = torch.mm(blk, b.T).mul_(2.0)
        d2 = ((blk * blk).sum(dim=1)[:, None] + b_sq[None, :]).sub_(work).clamp_min_(0.0)
        kernel = 0
        for s in SIGMAS:
            # d2 / -(2 s^2) is exactly -d2 / (2 s^2): negation is exact in floating point.
            kernel = kernel + torch.div(d2, -(2.0 * s * s), out=work).exp_().sum()
        total += kernel / len(SIGMAS)
    return total / (a.shape[0] * b.shape[0])


def mmd2(x, y) -> float:
    """Biased MMD^2 between samples x (n, d) and y (m, d); 0 for identical sets."""
    x, y = _as_float64(x), _as_float64(y)
    return float(_kernel_mean(x, x) + _kernel_mean(y, y) - 2.0 * _kernel_mean(x, y))
