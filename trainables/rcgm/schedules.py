"""Training-time samplers for the pair (t, r), r <= t, with a flow-matching fraction r = t."""

import torch

from trainables.rcgm import ranges
from trainables.rcgm.checks import check_real
from trainables.rcgm.errors import ConfigError


def _uniform(batch: int, generator, device) -> torch.Tensor:
    """U(0,1) of shape (batch,) drawn on the generator's device, then moved to device."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(batch, generator=generator, device=gen_device).to(device)


def _normal(shape, generator, device) -> torch.Tensor:
    """N(0,1) drawn on the generator's device, then moved to device."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


class TimeSchedule:
    """Base class: subclasses draw (t, r); this class applies the flow-matching fraction."""

    name = "base"

    def __init__(self, params: dict, flow_fraction: float):
        self.params = dict(params)
        self.flow_fraction = ranges.FLOW_FRACTION.check("flow_fraction", flow_fraction)

    def _draw(self, batch: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sample(self, batch: int, generator=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Draw t and r, each (batch,) float32 with 0 <= r <= t <= 1."""
        t, r = self._draw(batch, generator, torch.device(device))
        # A fixed count (not a Bernoulli mask) so the fraction is exact in every batch; the
        # pairs are i.i.d., so which rows get r = t does not matter.
        n_flow = int(round(self.flow_fraction * batch))
        r = torch.cat([t[:n_flow], r[n_flow:]])
        return t, torch.minimum(r, t)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args}; flow_fraction={self.flow_fraction})"


class UniformSchedule(TimeSchedule):
    """t ~ U(0,1), r ~ U(0,t): the reference code's default."""

    name = "uniform"

    def _draw(self, batch, generator, device):
        t = _uniform(batch, generator, device)
        return t, t * (1.0 - _uniform(batch, generator, device))


class BetaSchedule(TimeSchedule):
    """t = clamp(scale * Beta(a, b), 0, 1), r ~ U(0,t): UCGM/TwinFlow's time_dist_ctrl [a, b, scale]."""

    name = "beta"

    def _draw(self, batch, generator, device):
        # torch's Beta/Gamma samplers take no generator, so seed a forked global RNG from the
        # generator: the draw stays reproducible and the caller's global RNG is untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            beta = torch.distributions.Beta(torch.tensor(self.params["a"]), torch.tensor(self.params["b"]))
            t = (beta.sample((batch,)) * self.params["scale"]).clamp(0.0, 1.0)
        t = t.to(device)
        return t, t * (1.0 - _uniform(batch, generator, device))


class LogitNormalSchedule(TimeSchedule):
    """MeanFlow's sampler: two logit-normal draws, t = max and r = min."""

    name = "logit_normal"

    def _draw(self, batch, generator, device):
        u = torch.sigmoid(self.params["mu"] + self.params["sigma"] * _normal((2, batch), generator, device))
        return u.max(dim=0).values, u.min(dim=0).values


# name -> (class, default params, per-param (low, high, low_open)); MeanFlow's defaults for logit_normal.
_REGISTRY = {
    "uniform": (UniformSchedule, {}, {}),
    "beta": (BetaSchedule, {"a": 1.0, "b": 1.0, "scale": 1.0},
             {"a": (0.0, float("inf"), True), "b": (0.0, float("inf"), True), "scale": (0.0, 1.0, True)}),
    "logit_normal": (LogitNormalSchedule, {"mu": -0.4, "sigma": 1.0},
                     {"mu": (-10.0, 10.0, False), "sigma": (0.0, 10.0, True)}),
}
SCHEDULES = {name: dict(defaults) for name, (_, defaults, _) in _REGISTRY.items()}


def build_time_schedule(name: str, params: dict | None = None, flow_fraction: float = 0.0) -> TimeSchedule:
    """Build a named schedule; params override its defaults, unknown names or keys are refused."""
    if name not in _REGISTRY:
        allowed = "; ".join(f"{n} (params: {', '.join(d) or 'none'})" for n, d in SCHEDULES.items())
        raise ConfigError("time_schedule", name, f"one of {allowed}")
    cls, defaults, ranges = _REGISTRY[name]
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError("time_schedule", f"{name} with {', '.join(unknown)}",
                          f"params of {name}: {', '.join(defaults) or 'none'}")
    merged = {**defaults, **params}
    for key, (low, high, low_open) in ranges.items():
        merged[key] = check_real(f"time_schedule.{key}", merged[key], low, high, low_open=low_open)
    return cls(merged, flow_fraction)
