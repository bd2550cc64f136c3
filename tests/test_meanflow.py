"""MeanFlow's JVP objective, and RCGM N=1 as its finite-difference twin (method notes 2.2)."""

import torch

from trainables.models.mlp import VelocityMLP
from trainables.rcgm.meanflow import MeanFlowObjective
from trainables.rcgm.objective import RCGMObjective
from trainables.rcgm.registry import build_objective
from trainables.rcgm.target import TargetModel


def setup(seed=0, n=128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.5 + 1.0
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = VelocityMLP(dim=2, width=32, activation="tanh").double()  # smooth, so finite differences converge
    return model, x, z, t, r


def gradient(objective, model, x, z, t, r):
    model.zero_grad()
    loss, _ = objective.loss(model, TargetModel(model, 0.0), x, z, t, r)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def relative_gap(delta_t):
    model, x, z, t, r = setup()
    g_mf = gradient(MeanFlowObjective(), model, x, z, t, r)
    g_rcgm = gradient(RCGMObjective(1, delta_t=delta_t, clip=float("inf")), model, x, z, t, r)
    return ((g_rcgm - g_mf).norm() / g_mf.norm()).item()


def test_rcgm_first_order_matches_meanflow_gradient_as_delta_t_shrinks():
    tiny, small, coarse = relative_gap(1e-5), relative_gap(1e-4), relative_gap(0.2)
    assert tiny < 1e-3
    assert 8 < small / tiny < 12  # the gap is the O(delta_t) finite-difference error, nothing else
    assert coarse > 1e-2 and coarse > 1000 * tiny


def test_meanflow_derivative_is_the_total_time_derivative():
    """F - target = F - v + (t-r) dF/dt, checked against a central finite difference along the path."""
    model, x, z, t, r = setup(seed=1, n=16)
    loss, stats = MeanFlowObjective().loss(model, None, x, z, t, r)
    v, h = z - x, 1e-6
    with torch.no_grad():
        x_at = lambda s: s[:, None] * z + (1 - s[:, None]) * x  # noqa: E731
        dF = (model(x_at(t + h), t + h, r) - model(x_at(t - h), t - h, r)) / (2 * h)
        F = model(x_at(t), t, r)
        expected = ((F - (v - (t - r)[:, None] * dF)) ** 2).mean()
    assert abs(loss.item() - expected.item()) < 1e-8 * max(1.0, expected.item())


def test_meanflow_at_r_equal_t_is_flow_matching():
    model, x, z, t, _ = setup(seed=2, n=32)
    loss, _ = MeanFlowObjective().loss(model, None, x, z, t, t)
    with torch.no_grad():
        x_t = t[:, None] * z + (1 - t[:, None]) * x
        fm = ((model(x_t, t, t) - (z - x)) ** 2).mean()
    assert abs(loss.item() - fm.item()) < 1e-12


def test_build_objective_meanflow_ignores_rcgm_only_keys():
    obj = build_objective("meanflow", order=2, delta_t=0.01, clip=1.0, placement="equal", guidance=0.0)
    assert isinstance(obj, MeanFlowObjective)
