"""Time schedules for (t, r): shapes, r <= t, flow fraction, moments, refused names and params."""

import math

import pytest
import torch

from trainables.rcgm.errors import ConfigError
from trainables.rcgm.schedules import SCHEDULES, build_time_schedule

N = 40000


def draw(name, params=None, flow_fraction=0.0, n=N, seed=0):
    return build_time_schedule(name, params or {}, flow_fraction).sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_shapes_ranges_and_reproducibility(name):
    t, r = draw(name, n=1000)
    assert t.shape == r.shape == (1000,)
    assert t.dtype == torch.float32
    assert (0 <= r).all() and (r <= t).all() and (t <= 1).all()
    t2, r2 = draw(name, n=1000)
    assert torch.equal(t, t2) and torch.equal(r, r2)
    t3, _ = draw(name, n=1000, seed=1)
    assert not torch.equal(t, t3)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.75, 1.0])
def test_flow_fraction_is_exact(name, fraction):
    t, r = draw(name, flow_fraction=fraction, n=1000)
    assert (t == r).float().mean().item() == pytest.approx(fraction, abs=1e-3)


def test_uniform_moments():
    t, r = draw("uniform")
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    assert t.var().item() == pytest.approx(1 / 12, abs=0.003)
    assert (r / t).mean().item() == pytest.approx(0.5, abs=0.01)  # r ~ U(0, t)
    assert r.mean().item() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("a,b,scale", [(2.0, 5.0, 1.0), (0.8, 1.0, 1.0), (2.4, 2.4, 0.5)])
def test_beta_moments(a, b, scale):
    t, r = draw("beta", {"a": a, "b": b, "scale": scale})
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert t.mean().item() == pytest.approx(scale * mean, abs=0.01)
    assert t.var().item() == pytest.approx(scale**2 * var, rel=0.05)
    assert t.max().item() <= scale + 1e-6


def test_logit_normal_is_max_and_min_of_two_draws():
    mu, sigma = -0.4, 1.0
    t, r = draw("logit_normal", {"mu": mu, "sigma": sigma})
    logit = lambda p: torch.log(p) - torch.log1p(-p)  # noqa: E731
    # logits of max/min of two i.i.d. N(mu, sigma^2): mean mu +- sigma/sqrt(pi)
    assert logit(t).mean().item() == pytest.approx(mu + sigma / math.sqrt(math.pi), abs=0.02)
    assert logit(r).mean().item() == pytest.approx(mu - sigma / math.sqrt(math.pi), abs=0.02)
    pooled = torch.cat([logit(t), logit(r)])
    assert pooled.mean().item() == pytest.approx(mu, abs=0.02)
    assert pooled.std().item() == pytest.approx(sigma, abs=0.02)


def test_defaults_and_overrides():
    assert SCHEDULES["beta"] == {"a": 1.0, "b": 1.0, "scale": 1.0}
    s = build_time_schedule("beta", {"a": 0.8}, 0.0)
    assert s.params == {"a": 0.8, "b": 1.0, "scale": 1.0}
    assert "beta" in repr(s)


def test_unknown_name_lists_the_allowed_names_and_params():
    with pytest.raises(ConfigError) as err:
        build_time_schedule("cosine", {}, 0.0)
    assert err.value.field == "time_schedule"
    for word in ("uniform", "beta", "logit_normal", "scale", "sigma"):
        assert word in str(err.value)


def test_unknown_param_is_refused():
    with pytest.raises(ConfigError) as err:
        build_time_schedule("uniform", {"a": 1.0}, 0.0)
    assert err.value.field == "time_schedule"
    with pytest.raises(ConfigError) as err:
        build_time_schedule("logit_normal", {"std": 1.0}, 0.0)
    assert "mu, sigma" in str(err.value)


@pytest.mark.parametrize("name,params,field", [
    ("beta", {"a": 0.0}, "time_schedule.a"), ("beta", {"b": -1.0}, "time_schedule.b"),
    ("beta", {"scale": 0.0}, "time_schedule.scale"), ("beta", {"scale": 1.5}, "time_schedule.scale"),
    ("beta", {"a": math.nan}, "time_schedule.a"), ("logit_normal", {"sigma": 0.0}, "time_schedule.sigma"),
    ("logit_normal", {"mu": "x"}, "time_schedule.mu"),
])
def test_bad_param_values_are_refused(name, params, field):
    with pytest.raises(ConfigError) as err:
        build_time_schedule(name, params, 0.0)
    assert err.value.field == field


@pytest.mark.parametrize("fraction", [-0.1, 1.1, math.nan, True])
def test_bad_flow_fraction_is_refused(fraction):
    with pytest.raises(ConfigError) as err:
        build_time_schedule("uniform", {}, fraction)
    assert err.value.field == "flow_fraction"
