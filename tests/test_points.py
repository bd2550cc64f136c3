"""Point tasks, the MMD^2 metric and the VelocityMLP."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from trainables.data import load_task
from trainables.data.points import POOL_SIZE, PointTask
from trainables.metrics import MMD_DESCRIPTION, mmd2
from trainables.models import build_model
from trainables.models.mlp import VelocityMLP
from trainables.rcgm.errors import ConfigError

TASKS = ("moons", "8gaussians", "checkerboard", "swissroll")


@pytest.fixture(scope="module")
def moons():
    return load_task("moons", seed=0)


# ---- tasks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TASKS)
def test_task_interface(name):
    task = PointTask(name, seed=0)
    assert (task.name, task.kind, task.shape, task.num_classes) == (name, "points", (2,), None)
    x, y = task.sample(512, torch.Generator().manual_seed(0))
    assert x.shape == (512, 2) and x.dtype == torch.float32 and y is None
    ref, y = task.reference(300, torch.Generator().manual_seed(0))
    assert ref.shape == (300, 2) and y is None
    assert torch.isfinite(x).all() and 0.2 < x.std().item() < 3.0


def test_pools_are_fixed_by_seed(moons):
    again = PointTask("moons", seed=0)
    assert torch.equal(moons._pool, again._pool) and torch.equal(moons._reference, again._reference)
    assert not torch.equal(moons._pool, PointTask("moons", seed=1)._pool)


def test_batches_come_from_the_training_pool_and_reference_is_held_out(moons):
    x, _ = moons.sample(256, torch.Generator().manual_seed(3))
    pool = {tuple(p) for p in moons._pool.tolist()}
    assert all(tuple(p) in pool for p in x.tolist())
    ref, _ = moons.reference(1000, torch.Generator().manual_seed(3))
    assert not any(tuple(p) in pool for p in ref.tolist())
    assert len({tuple(p) for p in ref.tolist()}) == 1000  # without replacement
    a, _ = moons.sample(256, torch.Generator().manual_seed(4))
    b, _ = moons.sample(256, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert moons._pool.shape[0] == POOL_SIZE


def test_moons_looks_like_moons(moons):
    x = moons._pool
    assert -1.3 < x[:, 0].min() < -0.9 and 1.9 < x[:, 0].max() < 2.3
    assert -0.7 < x[:, 1].min() < -0.4 and 0.9 < x[:, 1].max() < 1.2


def test_unknown_task_is_refused():
    with pytest.raises(ConfigError) as err:
        PointTask("spirals")
    assert err.value.field == "task"


# ---- MMD ------------------------------------------------------------------------------------

def test_mmd_of_identical_sets_is_zero(moons):
    x, _ = moons.reference(500, torch.Generator().manual_seed(0))
    assert mmd2(x, x.clone()) == 0.0


def test_mmd_separates_moons_from_noise_and_not_from_itself(moons):
    g = torch.Generator().manual_seed(0)
    real_a, _ = moons.reference(2000, g)
    real_b, _ = moons.sample(2000, g)
    noise = torch.randn(2000, 2, generator=g)
    same, different = mmd2(real_a, real_b), mmd2(noise, real_a)
    assert 0.0 < same < 2e-3
    assert different > 0.03 and different > 20 * same


def test_mmd_matches_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 2, generator=g), torch.randn(70, 2, generator=g) + 0.3
    x64, y64 = x.double(), y.double()

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * s * s)) for s in (0.1, 0.2, 0.5, 1.0, 2.0)) / 5

    direct = k(x64, x64).mean() + k(y64, y64).mean() - 2 * k(x64, y64).mean()
    assert mmd2(x, y) == pytest.approx(direct.item(), abs=1e-12)
    assert mmd2(x, y) == pytest.approx(mmd2(y.numpy(), x.numpy()), abs=1e-15)


def test_mmd_description_names_estimator_kernels_and_dtype():
    for word in ("biased", "RBF", "0.1, 0.2, 0.5, 1, 2", "float64"):
        assert word in MMD_DESCRIPTION


# ---- MLP ------------------------------------------------------------------------------------

def test_mlp_shape_and_registry():
    model = build_model("mlp", (2,))
    assert isinstance(model, VelocityMLP)
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 128), (128, 128), (128, 2)]
    out = model(torch.randn(5, 2), torch.rand(5), torch.rand(5))
    assert out.shape == (5, 2)


def test_mlp_depends_on_both_times():
    torch.manual_seed(0)
    model = VelocityMLP(dim=2)
    x, t = torch.randn(4, 2), torch.full((4,), 0.8)
    assert not torch.equal(model(x, t, t), model(x, t, torch.zeros(4)))
    assert not torch.equal(model(x, t, t), model(x, t * 0.5, t))


def test_conditional_mlp_uses_labels_and_a_null_class():
    torch.manual_seed(0)
    model = build_model("mlp", (2,), num_classes=3)
    assert model.label_embed.num_embeddings == 4
    x, t = torch.randn(3, 2), torch.rand(3)
    y = torch.tensor([0, 1, 2])
    assert not torch.equal(model(x, t, t, y), model(x, t, t, torch.zeros_like(y)))
    assert torch.equal(model(x, t, t, None), model(x, t, t, torch.full_like(y, 3)))  # None = null class
    with pytest.raises(ValueError):
        VelocityMLP(dim=2)(x, t, t, y)


@pytest.mark.parametrize("n", [7, 1000])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_numpy_moons_equal_sklearns_make_moons_bit_for_bit(n, seed):
    # The pools were made with sklearn before; results must not move when its import went away.
    from sklearn.datasets import make_moons

    from trainables.data.points import _moons

    ours = _moons(n, np.random.default_rng(seed))
    state = int(np.random.default_rng(seed).integers(2**31 - 1))
    theirs, _ = make_moons(n_samples=n, noise=0.05, random_state=state)
    assert np.array_equal(ours, theirs)


def test_point_tasks_do_not_import_sklearn():
    code = "import sys; from trainables.data import load_task; load_task('moons'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_point_tasks_are_built_once_per_name_and_seed_and_never_written():
    first = load_task("moons", seed=3)
    assert load_task("moons", seed=3) is first and load_task("moons", seed=4) is not first
    before = first._pool.clone()
    x, _ = first.sample(64, torch.Generator().manual_seed(0))
    x.add_(100.0)  # a caller editing its batch must not reach the shared pool
    assert torch.equal(first._pool, before)


def test_mmd_is_the_plain_formula_to_the_last_bit():
    # mmd.py reuses buffers in place to keep evaluations small in memory; the arithmetic must not move.
    from trainables.metrics import mmd as M

    def plain_kernel_mean(a, b):
        total = torch.zeros((), dtype=torch.float64)
        b_sq = (b * b).sum(dim=1)
        for start in range(0, a.shape[0], M._BLOCK):
            blk = a[start:start + M._BLOCK]
            d2 = ((blk * blk).sum(dim=1)[:, None] + b_sq[None, :] - 2.0 * blk @ b.T).clamp_min(0.0)
            total += sum(torch.exp(-d2 / (2.0 * s * s)).sum() for s in M.SIGMAS) / len(M.SIGMAS)
        return total / (a.shape[0] * b.shape[0])

    g = torch.Generator().manual_seed(0)
    for n, m in [(2000, 2000), (2500, 300), (5, 7)]:
        x = torch.randn(n, 2, generator=g, dtype=torch.float64)
        y = (torch.randn(m, 2, generator=g, dtype=torch.float64) * 1.3 + 0.1)
        plain = float(plain_kernel_mean(x, x) + plain_kernel_mean(y, y) - 2.0 * plain_kernel_mean(x, y))
        assert M.mmd2(x, y) == plain
