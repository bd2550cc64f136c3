"""The first-order peers (shortcut, consistency, MeanFlow) under the trial's target model: fixed points
on the Gaussian oracle, their reductions, the target model's part, and a short Moons training each."""

import math

import pytest
import torch

from oracle import GaussianOracle, OracleModel
from test_training_points import evaluate as one_step_mmd, train_objective
from trainables.models.mlp import VelocityMLP
from trainables.rcgm.consistency import ConsistencyObjective
from trainables.rcgm.meanflow import MeanFlowObjective
from trainables.rcgm.objective import RCGMObjective
from trainables.rcgm.registry import READS, build_objective
from trainables.rcgm.shortcut import ShortcutObjective
from trainables.rcgm.target import TargetModel
from trainables.rcgm.tensors import expand

PEERS = ("meanflow", "shortcut", "consistency")
ORACLE = GaussianOracle(mu=[1.0, -0.5], s=0.7)
# What a trial passes to every objective (trainables.loop.Trainer).
TRIAL_KW = dict(order=1, delta_t=0.01, clip=1.0, placement="equal", guidance=0.0, num_classes=None,
                label_dropout=None)


def peer(name, **kw):
    return build_objective(name, **{**TRIAL_KW, **kw})


def batch(n=64, seed=0, t_min=0.0):
    """(x, z, t, r) in float64 with r ~ U(0, t)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.5 + 1.0
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = t_min + (1 - t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    return x, z, t, t * torch.rand(n, generator=g, dtype=torch.float64)


def mlp64(seed=0):
    torch.manual_seed(seed)
    return VelocityMLP(dim=2, width=32, activation="tanh").double()


def perturb(module, amount=0.05):
    """Stand-in for optimizer steps the target model has not followed."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(amount * torch.randn_like(p))


def loss_and_grads(objective, model, target, x, z, t, r):
    model.zero_grad(set_to_none=True)
    loss, _ = objective.loss(model, target, x, z, t, r)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def x_t_of(x, z, t):
    return expand(t, x) * z + (1 - expand(t, x)) * x


# ---- (a) fixed points on the Gaussian oracle --------------------------------------------------

def marginal_pair(n=512, seed=3, t_min=0.0):
    """(x, z, t, r) whose conditional velocity z - x is the marginal velocity u(x_t, t) at x_t.

    The objectives regress on z - x; with x = x_t - t u and z = x_t + (1-t) u the path still passes
    through x_t, and the exact F* is then a fixed point, not only the minimiser in expectation.
    """
    g = torch.Generator().manual_seed(seed)
    t = t_min + (1 - t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    x_t = x_t_of(ORACLE.sample(n, g), torch.randn(n, 2, generator=g, dtype=torch.float64), t)
    u = ORACLE.velocity(x_t, t)
    return x_t - t[:, None] * u, x_t + (1 - t)[:, None] * u, t, r


@pytest.mark.parametrize("name", ["meanflow", "shortcut"])
@pytest.mark.parametrize("same_object", [True, False], ids=["kappa0", "separate-target"])
def test_exact_average_velocity_is_a_fixed_point(name, same_object):
    """MeanFlow: F* = u - (t-r) dF*/dt; shortcut: two exact half jumps are the whole jump. Loss ~ rounding."""
    x, z, t, r = marginal_pair()
    model = OracleModel(ORACLE)
    target = model if same_object else OracleModel(ORACLE)
    exact, _ = peer(name).loss(model, target, x, z, t, r)
    wrong, _ = peer(name).loss(OracleModel(ORACLE, 1.1), OracleModel(ORACLE, 1.1), x, z, t, r)
    assert exact.item() < 1e-20
    assert wrong.item() > 1e-3


def consistency_max_residual(delta_t, scale=1.0):
    """max |e| of the consistency residual for the oracle (scaled), with the marginal velocity as v."""
    x, z, t, _ = marginal_pair(n=1024)
    model = OracleModel(ORACLE, scale)
    x_t, v = x_t_of(x, z, t), z - x
    obj = ConsistencyObjective(delta_t=delta_t)
    e = obj.residual(model(x_t, t, torch.zeros_like(t)), model, x_t, v, t)
    return e.abs().max().item()


def test_consistency_residual_of_the_exact_model_is_only_the_euler_steps_error():
    """f*(x, s) = Phi_{s->0}(x) is exactly self-consistent; x_t' = x_t - dt u is one Euler step, so e = O(dt)."""
    coarse, fine = consistency_max_residual(0.01), consistency_max_residual(0.005)
    assert coarse < 0.06  # measured 0.049 at dt = 0.01: RCGM N = 1 has the same Euler error (e = -xi)
    assert 1.8 < coarse / fine < 2.2
    wrong = consistency_max_residual(0.01, scale=1.1)
    assert wrong > 0.1 and wrong > 5 * coarse


def test_consistency_function_is_the_jump_to_data():
    """With the exact F*, the far residual is (Phi_{t->0}(x_t) - Phi_{t'->0}(x_t')) / dt, flow maps of the oracle."""
    dt = 0.01
    x, z, t, _ = marginal_pair(n=256, t_min=0.05)
    model = OracleModel(ORACLE)
    x_t, v = x_t_of(x, z, t), z - x
    e = ConsistencyObjective(delta_t=dt).residual(model(x_t, t, torch.zeros_like(t)), model, x_t, v, t)
    zero, t_prev = torch.zeros_like(t), t - dt
    expected = (ORACLE.flow(x_t, t, zero) - ORACLE.flow(x_t - dt * v, t_prev, zero)) / dt
    assert (e - expected).abs().max() < 1e-9


# ---- (b) reductions -------------------------------------------------------------------------

def test_shortcut_at_r_equal_t_is_flow_matching_whatever_the_target():
    x, z, t, _ = batch(seed=1)
    model = mlp64()
    junk = lambda x_in, *a: torch.full_like(x_in, 1e6)  # noqa: E731  a target the loss must not feel
    loss, grads = loss_and_grads(ShortcutObjective(), model, junk, x, z, t, t)

    model.zero_grad()
    fm = ((model(x_t_of(x, z, t), t, t) - (z - x)) ** 2).mean()  # hand-written flow matching
    fm.backward()
    assert abs(loss.item() - fm.item()) < 1e-12
    assert (grads - torch.cat([p.grad.flatten() for p in model.parameters()])).abs().max() < 1e-12


def test_shortcut_loss_is_flow_matching_plus_two_half_jumps():
    """The stated formula by hand, on a batch where a quarter of the rows have r = t (only flow matching)."""
    x, z, t, r = batch(n=32, seed=2)
    r[:8] = t[:8]
    model, target = mlp64(), mlp64(seed=1)
    loss, grads = loss_and_grads(ShortcutObjective(), model, target, x, z, t, r)

    model.zero_grad()
    x_t, v, d = x_t_of(x, z, t), z - x, (t - r)[:, None] / 2
    with torch.no_grad():
        F1 = target(x_t, t, t - d[:, 0])
        F2 = target(x_t - d * F1, t - d[:, 0], r)
        u = (F1 + F2) / 2
    jump = (r < t).double()
    sc = (((model(x_t, t, r) - u) ** 2).mean(dim=1) * jump).mean()
    expected = ((model(x_t, t, t) - v) ** 2).mean() + sc
    expected.backward()
    assert jump.sum() == 24
    assert abs(loss.item() - expected.item()) < 1e-12
    assert (grads - torch.cat([p.grad.flatten() for p in model.parameters()])).abs().max() < 1e-12


@pytest.mark.parametrize("kappa", [0.0, 0.9])
def test_consistency_is_rcgm_first_order_at_r_zero(kappa):
    """e = (f - f-)/(t - t') = -xi_RCGM(N=1, r=0) per sample, also for t < dt and t = 0; the gradient is
    RCGM's times t / (t - t') (t/dt far from the data, 1 near it)."""
    dt = 0.01
    x, z, t, _ = batch(n=64, seed=4)
    t[:6] = torch.tensor([0.0, 0.003, 0.0099, dt, 0.0101, 1.0], dtype=torch.float64)
    model = mlp64()
    target = TargetModel(model, kappa)
    perturb(model)  # for kappa > 0 the target now differs from the online model
    obj = ConsistencyObjective(delta_t=dt)
    loss, grads = loss_and_grads(obj, model, target, x, z, t, torch.rand_like(t) * t)  # r is ignored

    x_t, v, zero = x_t_of(x, z, t), z - x, torch.zeros_like(t)
    model.zero_grad()
    F = model(x_t, t, zero)
    xi = RCGMObjective(1, delta_t=dt, clip=float("inf")).residual(F, target, x_t, v, t, zero)
    e = obj.residual(F, target, x_t, v, t)
    assert (e.detach() + xi).abs().max() < 1e-10
    weight = (t / torch.where(t < dt, t, torch.full_like(t, dt))).nan_to_num(1.0)[:, None]  # t / (t - t')
    (2 * (weight * xi * F).sum() / F.numel()).backward()  # d/dtheta mean(e^2), e = -xi, de = -weight dF
    assert abs(loss.item() - (xi**2).mean().item()) < 1e-10
    assert (grads - torch.cat([p.grad.flatten() for p in model.parameters()])).abs().max() < 1e-9


# ---- (c) the target model is the one the trial passes ----------------------------------------

@pytest.mark.parametrize("name", PEERS)
def test_target_model_kappa_semantics(name):
    """kappa = 0 is the online computation bit for bit; a copy that has not followed the online model changes
    the loss; a copy with the same weights gives the same loss (up to rounding)."""
    x, z, t, r = batch(seed=5, t_min=0.05)
    model, obj = mlp64(), peer(name)
    online, _ = obj.loss(model, None, x, z, t, r)
    same, _ = obj.loss(model, TargetModel(model, 0.0), x, z, t, r)
    assert torch.equal(online, same)

    ema = TargetModel(model, 0.9)  # a copy with the same weights until the online model moves
    copy, _ = obj.loss(model, ema, x, z, t, r)
    assert abs(copy.item() - online.item()) < 1e-12 * online.item()
    perturb(model)
    moved_online, _ = obj.loss(model, None, x, z, t, r)
    moved_target, _ = obj.loss(model, ema, x, z, t, r)
    assert abs(moved_target.item() - moved_online.item()) > 1e-3 * moved_online.item()


@pytest.mark.parametrize("name", PEERS)
def test_no_gradient_reaches_the_target(name):
    x, z, t, r = batch(seed=6, t_min=0.05)
    model, target = mlp64(), mlp64(seed=1)  # a bare module whose parameters require grad
    loss, _ = peer(name).loss(model, target, x, z, t, r)
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", PEERS)
def test_guidance_velocity_comes_from_the_target_network(name):
    """Where each peer is flow matching (r = t; consistency: t < dt, r = 0) its loss is ||F - v_g||^2 with
    v_g = v + w (F-(x_t,t,t|y) - F-(x_t,t,t|null)) from the target network, not the online model."""
    torch.manual_seed(0)
    model = VelocityMLP(dim=2, num_classes=3, width=32, activation="tanh").double()
    target = VelocityMLP(dim=2, num_classes=3, width=32, activation="tanh").double()
    x, z, t, _ = batch(n=32, seed=7)
    if name == "consistency":
        t = 0.009 * t  # t < dt: the jump to data from below the first step is flow matching to r = 0
    r = torch.zeros_like(t) if name == "consistency" else t
    y = torch.arange(32) % 3
    loss, _ = peer(name, guidance=0.5, num_classes=3, label_dropout=0.0).loss(model, target, x, z, t, t, y=y)
    x_t = x_t_of(x, z, t)
    with torch.no_grad():
        v_g = (z - x) + 0.5 * (target(x_t, t, t, y) - target(x_t, t, t, torch.full_like(y, 3)))
        expected = ((model(x_t, t, r, y) - v_g) ** 2).mean()
    assert abs(loss.item() - expected.item()) < 1e-12


@pytest.mark.parametrize("name", PEERS)
def test_edge_times_give_finite_loss_and_gradient(name):
    torch.manual_seed(0)
    model = VelocityMLP(dim=2)
    x, z = torch.randn(6, 2), torch.randn(6, 2)
    t = torch.tensor([0.5, 0.5, 0.5, 0.0, 1.0, 1.0])
    r = torch.tensor([0.5, 0.5 - 1e-7, 0.0, 0.0, 1.0, 0.0])
    for kappa in (0.0, 0.99):
        model.zero_grad()
        loss, stats = peer(name).loss(model, TargetModel(model, kappa), x, z, t, r)
        loss.backward()
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in stats.values())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_registry_builds_every_objective_from_the_trial_keys():
    built = {name: peer(name) for name in ("rcgm", *PEERS)}
    assert isinstance(built["meanflow"], MeanFlowObjective) and isinstance(built["shortcut"], ShortcutObjective)
    assert isinstance(built["consistency"], ConsistencyObjective) and isinstance(built["rcgm"], RCGMObjective)
    assert all(built[name].order == 1 for name in built)  # callers log it; the peers are first order
    assert peer("consistency", delta_t=0.02).delta_t == 0.02
    assert READS["shortcut"] == ("guidance", "num_classes", "label_dropout")
    with pytest.raises(TypeError, match="delta"):
        build_objective("shortcut", deltat=0.01)  # a misspelt setting is not silently dropped


# ---- (d) a short Moons training learns one-step samples ----------------------------------------

# Consistency training moves what it knows up from the data end by dt per update of the target, so it
# needs more steps than the peers whose targets span the whole jump (measured 1-NFE MMD^2 at kappa 0.9,
# seeds 0 / 1: meanflow 0.011 / 0.011, shortcut 0.011 / 0.014, consistency 0.011 / 0.011; untrained 0.054).
STEPS = {"meanflow": 400, "shortcut": 600, "consistency": 1500}


def train_moons(name, steps, kappa=0.9, seed=0):
    """The loop of tests/test_training_points.py with a peer objective (MeanFlow gets r = t samples)."""
    return train_objective(peer(name), kappa, steps, seed, flow_fraction=0.25 if name == "meanflow" else 0.0)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", PEERS)
def test_short_moons_training_learns_one_step_samples(name, one_thread):
    untrained, task = train_moons(name, steps=0)
    before, noise = one_step_mmd(untrained, task)
    model, _ = train_moons(name, steps=STEPS[name])
    after, _ = one_step_mmd(model, task)
    print(f"{name} kappa=0.9 {STEPS[name]} steps: mmd2_1nfe {before:.5f} -> {after:.5f} (noise {noise:.5f})")
    assert after < 0.3 * before



@pytest.mark.parametrize("name", ["shortcut", "consistency"])
def test_forward_equivalents_match_the_counted_step(name):
    """trainables.cost's analytic count (shortcut 3 + 3 + 2, consistency 3 + 1) against the FLOP counter."""
    from trainables.config import TrialConfig
    from trainables.cost import forward_equivalents
    from trainables.loop import Trainer

    cfg = TrialConfig(task="moons", objective=name, batch_size=16, steps=1)
    expected = forward_equivalents(name, cfg.order, 0.0)
    assert expected == {"shortcut": 8.0, "consistency": 4.0}[name]
    # Slightly under: the first layer's input gradient is never computed (as for RCGM in tests/test_cost.py).
    assert expected * 0.97 < Trainer(cfg, measure_cost=True).cost.equivalents <= expected
