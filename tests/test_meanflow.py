"""MeanFlow's JVP objective, and RCGM N=1 as its finite-difference twin (method notes 2.2)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainables.models.mlp import VelocityMLP
from trainables.rcgm.meanflow import MeanFlowObjective
from trainables.rcgm.objective import RCGMObjective
from trainables.rcgm.registry import build_objective
from trainables.rcgm.target import TargetModel, target_network
from trainables.rcgm.tensors import DeviceStats, expand, per_sample_mse


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
    assert obj.order == 1  # first order, logged by callers like RCGM's N


# ---- the target model: kappa = 0 keeps the online JVP bit for bit, else the tangent is the target's --------

def meanflow_before_targets(objective, model, target, x, z, t, r, y=None, generator=None):
    """MeanFlowObjective.loss as it was before the target model took the JVP (a frozen copy, for comparison)."""
    t, r = t.to(x.dtype), r.to(x.dtype)
    y = objective.labels.drop(y, x, generator)
    x_t = expand(t, x) * z + (1 - expand(t, x)) * x
    v = objective.labels.velocity(target_network(target), x_t, t, z - x, y)

    def average_velocity(x_in, t_in, r_in):
        return model(x_in, t_in, r_in, y)

    with sdpa_kernel([SDPBackend.MATH]):
        F, dF_dt = torch.func.jvp(average_velocity, (x_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    F, dF_dt = F.to(x.dtype), dF_dt.to(x.dtype)
    target_u = (v - expand(t - r, x) * dF_dt).detach()
    loss = per_sample_mse(F, target_u)
    return loss, DeviceStats(loss=loss, xi_abs_mean=(F.detach() - target_u).abs().mean())


def loss_and_grads(fn, model, *args, **kw):
    model.zero_grad(set_to_none=True)
    loss, stats = fn(model, *args, **kw)
    loss.backward()
    return loss.detach(), dict(stats), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target_kind", ["none", "kappa0", "model"])
def test_meanflow_at_kappa_zero_is_bit_identical_to_the_online_jvp(target_kind, dtype):
    """Unconditional and guided with label dropout: loss, stats and every gradient equal to the last bit."""
    for guided in (False, True):
        torch.manual_seed(0)
        model = VelocityMLP(dim=2, width=32, num_classes=3 if guided else None).to(dtype)
        _, x, z, t, r = setup(seed=3, n=64)
        x, z, t, r = x.to(dtype), z.to(dtype), t.to(dtype), r.to(dtype)
        y = torch.arange(64) % 3 if guided else None
        objective = MeanFlowObjective(guidance=0.5 if guided else 0.0, num_classes=3 if guided else None,
                                      label_dropout=0.2 if guided else None)
        target = {"none": None, "kappa0": TargetModel(model, 0.0), "model": model}[target_kind]
        # The old code used no target for an unconditional loss; guidance needs one: the online model.
        old_target = model if (target is None and guided) else target
        now = loss_and_grads(objective.loss, model, target, x, z, t, r, y=y,
                             generator=torch.Generator().manual_seed(1))
        before = loss_and_grads(lambda *a, **k: meanflow_before_targets(objective, *a, **k), model, old_target,
                                x, z, t, r, y=y, generator=torch.Generator().manual_seed(1))
        assert torch.equal(now[0], before[0]) and now[1] == before[1]
        assert all(torch.equal(a, b) for a, b in zip(now[2], before[2]))


def test_meanflow_takes_the_tangent_from_the_target_model():
    """target != online: F from the online model, dF/dt from the target (a central difference of the target)."""
    model, x, z, t, r = setup(seed=4, n=32)
    torch.manual_seed(1)
    target = VelocityMLP(dim=2, width=32, activation="tanh").double()
    loss, _, grads = loss_and_grads(MeanFlowObjective().loss, model, target, x, z, t, r)
    v, h = z - x, 1e-6
    x_at = lambda s: s[:, None] * z + (1 - s[:, None]) * x  # noqa: E731
    with torch.no_grad():
        dF = (target(x_at(t + h), t + h, r) - target(x_at(t - h), t - h, r)) / (2 * h)
        target_u = v - (t - r)[:, None] * dF
    model.zero_grad()
    expected = ((model(x_at(t), t, r) - target_u) ** 2).mean()
    expected.backward()
    assert abs(loss.item() - expected.item()) < 1e-8 * max(1.0, expected.item())
    assert max((a - p.grad).abs().max().item() for a, p in zip(grads, model.parameters())) < 1e-7
    assert all(p.grad is None for p in target.parameters())  # no_grad: nothing reaches the target
    online, _ = MeanFlowObjective().loss(model, None, x, z, t, r)
    assert abs(online.item() - loss.item()) > 1e-3 * loss.item()


def test_meanflow_ema_copy_with_the_online_weights_matches_the_online_jvp():
    """A fresh TargetModel(kappa=0.9) holds the online weights: the two code paths agree to rounding."""
    model, x, z, t, r = setup(seed=5, n=64)
    online = loss_and_grads(MeanFlowObjective().loss, model, None, x, z, t, r)
    ema = loss_and_grads(MeanFlowObjective().loss, model, TargetModel(model, 0.9), x, z, t, r)
    assert abs(online[0].item() - ema[0].item()) < 1e-14
    assert all((a - b).abs().max() < 1e-13 for a, b in zip(online[2], ema[2]))


def test_meanflow_at_r_equal_t_is_flow_matching_with_any_target():
    model, x, z, t, _ = setup(seed=2, n=32)
    torch.manual_seed(1)
    target = VelocityMLP(dim=2, width=32, activation="tanh").double()
    loss, _ = MeanFlowObjective().loss(model, TargetModel(target, 1.0), x, z, t, t)
    with torch.no_grad():
        x_t = t[:, None] * z + (1 - t[:, None]) * x
        fm = ((model(x_t, t, t) - (z - x)) ** 2).mean()
    assert abs(loss.item() - fm.item()) < 1e-12
