"""Closed-form oracle for Gaussian data x ~ N(mu, s^2 I) on the path x_t = t z + (1-t) x.

The marginal of x_t is N(m_t, sigma_t^2 I) with m_t = (1-t) mu and
sigma_t^2 = t^2 + (1-t)^2 s^2. The marginal velocity u(x, t) = E[z - x | x_t = x] is affine,
so the probability-flow ODE maps Gaussians to Gaussians affinely:
Phi_{t->r}(x) = m_r + (sigma_r / sigma_t)(x - m_t). The exact average velocity is then
F*(x, t, r) = (x - Phi_{t->r}(x)) / (t - r), written below without dividing by t - r.
"""

import torch


class GaussianOracle:
    """Exact marginal velocity, flow map and average velocity for N(mu, s^2 I) data."""

    def __init__(self, mu, s: float):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.s = float(s)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """m_t as (B, d)."""
        return (1 - t)[:, None] * self.mu

    def std(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t as (B, 1)."""
        return torch.sqrt(t**2 + (1 - t) ** 2 * self.s**2)[:, None]

    def velocity(self, x, t) -> torch.Tensor:
        """u(x, t) = -mu + (t - (1-t) s^2) / sigma_t^2 (x - m_t)."""
        gain = (t - (1 - t) * self.s**2)[:, None] / self.std(t) ** 2
        return -self.mu + gain * (x - self.mean(t))

    def flow(self, x, t, r) -> torch.Tensor:
        """Phi_{t->r}(x): the exact PF-ODE map from time t to time r."""
        return self.mean(r) + self.std(r) / self.std(t) * (x - self.mean(t))

    def average_velocity(self, x, t, r) -> torch.Tensor:
        """F*(x, t, r); (sigma_t - sigma_r)/(t - r) = [(t+r) - s^2 (2-t-r)] / (sigma_t + sigma_r) keeps r = t exact."""
        slope = ((t + r) - self.s**2 * (2 - t - r))[:, None] / (self.std(t) + self.std(r))
        return -self.mu + slope / self.std(t) * (x - self.mean(t))

    def sample(self, n: int, generator) -> torch.Tensor:
        """n data points."""
        return self.mu + self.s * torch.randn(n, self.mu.numel(), generator=generator, dtype=torch.float64)


class OracleModel(torch.nn.Module):
    """F*(x, t, r) as a model (times `scale`, to build a deliberately wrong one)."""

    def __init__(self, oracle: GaussianOracle, scale: float = 1.0):
        super().__init__()
        self.oracle = oracle
        self.scale = scale

    def forward(self, x, t, r, y=None):
        return self.scale * self.oracle.average_velocity(x, t.to(x.dtype), r.to(x.dtype))
