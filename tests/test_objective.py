"""The RCGM objective: flow-matching reduction, the Gaussian oracle, edge times, guidance, bad values."""

import math

import pytest
import torch

from oracle import GaussianOracle, OracleModel
from trainables.models.mlp import VelocityMLP
from trainables.rcgm.errors import ConfigError
from trainables.rcgm.objective import RCGMObjective
from trainables.rcgm.registry import build_objective
from trainables.rcgm.target import TargetModel
from trainables.rcgm.tensors import expand


def batch(n=64, dim=2, seed=0, dtype=torch.float64):
    """(x, z, t, r) with r ~ U(0, t)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=dtype) * 0.5 + 1.0
    z = torch.randn(n, dim, generator=g, dtype=dtype)
    t = torch.rand(n, generator=g, dtype=dtype)
    return x, z, t, t * torch.rand(n, generator=g, dtype=dtype)


def mlp64(seed=0, **kw):
    torch.manual_seed(seed)
    return VelocityMLP(dim=2, **kw).double()


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


# ---- 1. N = 0 is exactly flow matching ------------------------------------------------------

@pytest.mark.parametrize("clip", [1.0, 0.05])
def test_order_zero_is_flow_matching(clip):
    x, z, t, r = batch()
    model = mlp64()
    loss, _ = RCGMObjective(0, clip=clip).loss(model, TargetModel(model, 0.0), x, z, t, r)
    loss.backward()
    g_rcgm = grads(model)

    model.zero_grad()
    x_t = t[:, None] * z + (1 - t[:, None]) * x
    fm = ((model(x_t, t, t) - (z - x)) ** 2).mean()  # hand-written FM loss, r = t
    fm.backward()
    assert abs(loss.item() - fm.item()) < 1e-12
    assert (g_rcgm - grads(model)).abs().max() < 1e-12


# ---- the loss has the stated sg-form: value mean(clip(xi)^2), gradient 2 clip(xi) dF ---------

@pytest.mark.parametrize("order", [1, 2, 3])
def test_loss_value_and_gradient_follow_the_clipped_residual(order):
    x, z, t, r = batch(seed=1)
    model = mlp64()
    obj = RCGMObjective(order, clip=0.5)
    loss, stats = obj.loss(model, TargetModel(model, 0.0), x, z, t, r)
    loss.backward()
    g_loss = grads(model)

    x_t = expand(t, x) * z + (1 - expand(t, x)) * x
    model.zero_grad()
    F = model(x_t, t, r)
    xi = obj.residual(F, model, x_t, z - x, t, r).clamp(-0.5, 0.5)
    (2 * (F * xi).sum() / F.numel()).backward()
    assert abs(loss.item() - (xi**2).mean().item()) < 1e-12
    assert (g_loss - grads(model)).abs().max() < 1e-12
    assert 0.0 < stats["clip_fraction"] < 1.0


# ---- 2. the Gaussian oracle: an exact F* makes xi vanish like O(delta_t) ----------------------

ORACLE = GaussianOracle(mu=[1.0, -0.5], s=0.7)


def oracle_xi(order, placement, delta_t, scale=1.0, n=1024):
    """max |xi| for the oracle (scaled by `scale`) with the exact marginal velocity in place of v."""
    g = torch.Generator().manual_seed(3)
    x = ORACLE.sample(n, g)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    if order == 0:
        r = t  # what the objective itself does for N = 0
    x_t = t[:, None] * z + (1 - t[:, None]) * x
    model = OracleModel(ORACLE, scale)
    obj = RCGMObjective(order, delta_t=delta_t, placement=placement)
    xi = obj.residual(model(x_t, t, r), model, x_t, ORACLE.velocity(x_t, t), t, r, generator=g)
    return xi.abs().max().item()


def test_oracle_is_exact():
    """The oracle itself: flow maps compose, F*(x,t,t) = u, and F* is the finite displacement."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g, dtype=torch.float64)
    t = torch.rand(256, generator=g, dtype=torch.float64)
    r, m = t * 0.3, t * 0.6
    o = ORACLE
    assert (o.flow(o.flow(x, t, m), m, r) - o.flow(x, t, r)).abs().max() < 1e-12
    assert (o.average_velocity(x, t, t) - o.velocity(x, t)).abs().max() < 1e-12
    assert ((x - o.flow(x, t, r)) / (t - r)[:, None] - o.average_velocity(x, t, r)).abs().max() < 1e-9
    h = 1e-6  # the velocity is the time derivative of the flow map
    assert ((x - o.flow(x, t, t - h)) / h - o.velocity(x, t)).abs().max() < 1e-4


@pytest.mark.parametrize("placement", ["equal", "random"])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_oracle_residual_is_small_and_first_order_in_delta_t(order, placement):
    xi_coarse, xi_fine = oracle_xi(order, placement, 0.01), oracle_xi(order, placement, 0.005)
    assert xi_coarse < 0.05
    if order == 0:
        assert xi_coarse < 1e-12  # F*(x, t, t) is the marginal velocity itself
    else:
        assert 1.8 < xi_coarse / xi_fine < 2.2  # the Euler first segment is the only error


@pytest.mark.parametrize("placement", ["equal", "random"])
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_oracle_residual_detects_a_five_percent_wrong_model(order, placement):
    exact, wrong = oracle_xi(order, placement, 0.01), oracle_xi(order, placement, 0.01, scale=1.05)
    assert wrong > 0.08 and wrong > 3 * exact


# ---- placements of the intermediate points -----------------------------------------------------

def placement_points(order, placement, n=20000):
    g = torch.Generator().manual_seed(5)
    t1 = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t1 * torch.rand(n, generator=g, dtype=torch.float64)
    return t1, r, RCGMObjective(order, placement=placement).points(t1, r, g)


@pytest.mark.parametrize("order", [1, 2, 4])
def test_equal_placement_is_evenly_spaced_from_t1_to_r(order):
    t1, r, s = placement_points(order, "equal")
    assert len(s) == order + 1 and torch.equal(s[0], t1)
    for i in range(order + 1):
        assert torch.allclose(s[i], t1 + (r - t1) * i / order, atol=1e-15)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_random_placement_is_sorted_uniform_inside_the_segment(order):
    t1, r, s = placement_points(order, "random")
    assert len(s) == order + 1 and torch.equal(s[0], t1) and torch.equal(s[-1], r)
    for a, b in zip(s, s[1:]):
        assert (a > b).all()  # strictly decreasing: every jump goes forward toward data
    # position of the k-th of N-1 sorted uniforms in the segment: mean k/N (order statistics)
    for k in range(1, order):
        frac = (t1 - s[k]) / (t1 - r)
        assert frac.mean().item() == pytest.approx(k / order, abs=0.01)
        assert frac.std().item() > 0.1  # random, not the equal grid


# ---- 6. edge times never give NaN -----------------------------------------------------------

@pytest.mark.parametrize("placement", ["equal", "random"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_edge_times_give_finite_loss_and_gradient(order, placement):
    torch.manual_seed(0)
    model = VelocityMLP(dim=2)
    x, z, _, _ = batch(n=6, dtype=torch.float32)
    t = torch.tensor([0.5, 0.5, 0.5, 0.0, 1.0, 1.0])
    r = torch.tensor([0.5, 0.5 - 1e-7, 0.0, 0.0, 1.0, 0.0])
    for kappa in (0.0, 0.99):
        model.zero_grad()
        loss, stats = RCGMObjective(order, placement=placement).loss(model, TargetModel(model, kappa), x, z, t, r)
        loss.backward()
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in stats.values())
        assert torch.isfinite(grads(model)).all()


def test_near_pairs_use_the_flow_matching_residual():
    """t - r < delta_t: xi = F - v, whatever the target model says."""
    x, z, t, _ = batch(n=8, seed=2)
    r = t - 0.004
    model = mlp64()
    x_t = expand(t, x) * z + (1 - expand(t, x)) * x
    F = model(x_t, t, r)
    junk = lambda *a: torch.full_like(a[0], 1e6)  # noqa: E731  a target that must not be consulted
    xi = RCGMObjective(2, delta_t=0.01).residual(F, junk, x_t, z - x, t, r)
    assert torch.equal(xi, (F - (z - x)).detach())


# ---- 1.7 training-time guidance and label dropout -------------------------------------------

def test_guidance_replaces_v_by_the_guided_velocity():
    x, z, t, r = batch(n=32, seed=4)
    y = torch.arange(32) % 3
    model = mlp64(num_classes=3)
    target = mlp64(seed=1, num_classes=3)
    loss, _ = RCGMObjective(0, guidance=0.7, num_classes=3, label_dropout=0.0).loss(model, target, x, z, t, r, y)
    x_t = expand(t, x) * z + (1 - expand(t, x)) * x
    with torch.no_grad():
        v_g = (z - x) + 0.7 * (target(x_t, t, t, y) - target(x_t, t, t, torch.full_like(y, 3)))
        expected = ((model(x_t, t, t, y) - v_g) ** 2).mean()
    assert abs(loss.item() - expected.item()) < 1e-12


def test_label_dropout_defaults_on_with_guidance_and_hits_the_null_class():
    obj = RCGMObjective(1, guidance=1.0, num_classes=10)
    assert obj.labels.label_dropout == 0.1
    assert RCGMObjective(1, num_classes=10).labels.label_dropout == 0.0
    y = torch.zeros(20000, dtype=torch.long)
    dropped = obj.labels.drop(y, torch.zeros(1), torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.01


def test_guidance_needs_labels():
    with pytest.raises(ConfigError) as err:
        RCGMObjective(1, guidance=1.0)
    assert err.value.field == "guidance"


# ---- bad values are refused, naming the field ----------------------------------------------

@pytest.mark.parametrize("kw,field", [
    ({"order": -1}, "order"), ({"order": 2.5}, "order"), ({"order": True}, "order"), ({"order": "2"}, "order"),
    ({"order": 1, "delta_t": 0.0}, "delta_t"), ({"order": 1, "delta_t": -0.1}, "delta_t"),
    ({"order": 1, "delta_t": 1.0}, "delta_t"), ({"order": 1, "delta_t": float("nan")}, "delta_t"),
    ({"order": 1, "clip": 0.0}, "clip"), ({"order": 1, "clip": -1.0}, "clip"),
    ({"order": 1, "placement": "geometric"}, "placement"), ({"order": 1, "guidance": -1.0}, "guidance"),
    ({"order": 1, "num_classes": 10, "label_dropout": 1.0}, "label_dropout"),
])
def test_bad_objective_values_are_refused(kw, field):
    with pytest.raises(ConfigError) as err:
        RCGMObjective(**kw)
    assert err.value.field == field
    # The method layer knows no command line: the flag is named one layer up (trainables.config).
    assert "(change --" not in str(err.value)


def test_build_objective_names():
    assert isinstance(build_objective("rcgm", order=2), RCGMObjective)
    assert build_objective("rcgm", order=3, placement="random").placement == "random"
    with pytest.raises(ConfigError) as err:
        build_objective("diffusion", order=1)
    assert err.value.field == "objective"
