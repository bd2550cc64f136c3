"""Any-step sampling from t = 1 (noise) to t = 0 (data) with 1..k function evaluations (notes 1.8)."""

import torch

from trainables.rcgm import ranges
from trainables.rcgm.checks import check_real
from trainables.rcgm.errors import ConfigError

STYLES = ranges.SAMPLE_STYLE.choices


def default_times(nfe: int) -> list[float]:
    """Equally spaced t grid 1 -> 0 with nfe steps (for 2 NFE: 1, 0.5, 0)."""
    return [1.0 - j / nfe for j in range(nfe + 1)]


def check_times(times, nfe: int) -> list[float]:
    """Return times if it is a strictly decreasing grid of nfe+1 points from <= 1 down to 0."""
    expected = f"{nfe + 1} strictly decreasing times in [0, 1] ending at 0"
    if isinstance(times, torch.Tensor):
        times = times.tolist()
    times = [check_real("times", s, 0.0, 1.0) for s in times]
    if len(times) != nfe + 1 or times[-1] != 0.0 or any(a <= b for a, b in zip(times, times[1:])):
        raise ConfigError("times", times, expected)
    return times


def check_sampler(nfe, style: str) -> tuple[int, str]:
    """(nfe, style) if nfe is a count of function evaluations >= 1 and style a known sampler."""
    return ranges.NFE.check("nfe", nfe), ranges.SAMPLE_STYLE.check("sample_style", style)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Fresh N(0, I) noise shaped like x, drawn on the generator's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device).to(x.device, x.dtype)


@torch.no_grad()
def sample(model, z: torch.Tensor, nfe: int, style: str = "few", times=None, y=None, generator=None) -> torch.Tensor:
    """Map noise z to data with nfe model calls; returns x at t = 0.

    few: jump to r = 0, then re-noise with fresh noise to the next time (consistency-style);
    any: deterministic jump r = next time; mul: Euler with the instantaneous velocity (r = t).
    With 1 NFE, few and any are both x0 = z - F(z, 1, 0).
    """
    nfe, style = check_sampler(nfe, style)
    grid = check_times(default_times(nfe) if times is None else times, nfe)
    x = z
    batch = z.shape[0]
    for t_now, t_next in zip(grid, grid[1:]):
        t = torch.full((batch,), t_now, dtype=z.dtype, device=z.device)
        if style == "few":
            x0 = x - t_now * model(x, t, torch.zeros_like(t), y)
            # t_next = 0 ends the loop with the data estimate itself.
            x = x0 if t_next == 0.0 else (1.0 - t_next) * x0 + t_next * _randn_like(x, generator)
        elif style == "any":
            x = x - (t_now - t_next) * model(x, t, torch.full_like(t, t_next), y)
        else:
            x = x - (t_now - t_next) * model(x, t, t, y)
    return x
