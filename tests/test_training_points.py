"""End to end on CPU: a short Moons training must beat the noise level by a wide margin at 1 NFE."""

import time

import pytest
import torch

from trainables.data import load_task
from trainables.metrics import mmd2
from trainables.models import build_model
from trainables.rcgm.registry import build_objective
from trainables.rcgm.sampling import sample
from trainables.rcgm.schedules import build_time_schedule
from trainables.rcgm.target import TargetModel

STEPS = 2000


def train(order, kappa, steps=STEPS, seed=0):
    """RCGM of the given order on moons."""
    return train_objective(build_objective("rcgm", order=order, delta_t=0.01, clip=1.0), kappa, steps, seed)


def train_objective(objective, kappa, steps, seed=0, flow_fraction=0.0):
    """A minimal copy of the training loop (the shared Trainer lives one layer up): mlp, moons, Adam 1e-3, batch 256."""
    torch.manual_seed(seed)
    task = load_task("moons", seed=0)
    model = build_model("mlp", task.shape)
    target = TargetModel(model, kappa)
    schedule = build_time_schedule("uniform", {}, flow_fraction)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, _ = task.sample(256, g)
        z = torch.randn(x.shape, generator=g)
        t, r = schedule.sample(x.shape[0], g)
        loss, _ = objective.loss(model, target, x, z, t, r, generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        target.update(model)  # once per step, after the optimizer step
    return model, task


def evaluate(model, task, n=2000):
    """(MMD^2 of 1-NFE samples, MMD^2 of the noise itself), both against held-out data."""
    g = torch.Generator().manual_seed(123)
    ref, _ = task.reference(n, g)
    z = torch.randn(n, 2, generator=g)
    return mmd2(sample(model, z, 1), ref), mmd2(z, ref)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI box is shared; one thread is also the fastest for a 128-wide MLP
    yield
    torch.set_num_threads(before)


def test_second_order_moons_one_step_beats_noise():
    start = time.perf_counter()
    model, task = train(order=2, kappa=0.99)
    trained, noise = evaluate(model, task)
    print(f"N=2 kappa=0.99 {STEPS} steps: mmd2_1nfe={trained:.5f} noise={noise:.5f} "
          f"({time.perf_counter() - start:.1f}s)")
    assert trained < 0.25 * noise


def test_flow_matching_alone_does_not_give_one_step_samples():
    """The control: N = 0 learns only r = t, so its 1-NFE jump stays near the noise level."""
    model, task = train(order=0, kappa=0.0, steps=1000)
    trained, noise = evaluate(model, task)
    print(f"N=0 1000 steps: mmd2_1nfe={trained:.5f} noise={noise:.5f}")
    assert trained > 0.5 * noise
