"""Any-step sampling: 1 NFE is z - F(z,1,0); k NFE visits the stated (t, r) pairs per style."""

import pytest
import torch

from oracle import GaussianOracle, OracleModel
from trainables.models.mlp import VelocityMLP
from trainables.rcgm.errors import ConfigError
from trainables.rcgm.sampling import sample


class Recorder(torch.nn.Module):
    """Records every (t, r, x) it is called with; predicts F = x (an arbitrary, input-dependent field)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, r, y=None):
        assert (t == t[0]).all() and (r == r[0]).all()  # one time per step for the whole batch
        self.calls.append((round(t[0].item(), 6), round(r[0].item(), 6), x.clone()))
        return x


def pairs(model):
    return [(t, r) for t, r, _ in model.calls]


def noise(n=16, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("style", ["few", "any"])
def test_one_nfe_is_a_single_jump_to_zero(style):
    torch.manual_seed(0)
    model = VelocityMLP(dim=2)
    z = noise()
    with torch.no_grad():
        expected = z - model(z, torch.ones(16), torch.zeros(16))
    assert torch.equal(sample(model, z, 1, style=style), expected)


@pytest.mark.parametrize("style,expected", [
    ("few", [(1.0, 0.0), (0.75, 0.0), (0.5, 0.0), (0.25, 0.0)]),
    ("any", [(1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)]),
    ("mul", [(1.0, 1.0), (0.75, 0.75), (0.5, 0.5), (0.25, 0.25)]),
])
def test_k_nfe_visits_the_stated_pairs(style, expected):
    model = Recorder()
    sample(model, noise(), 4, style=style, generator=torch.Generator().manual_seed(1))
    assert pairs(model) == expected


def test_custom_times_for_two_step_few():
    model = Recorder()
    sample(model, noise(), 2, style="few", times=[1.0, 0.7, 0.0], generator=torch.Generator().manual_seed(1))
    assert pairs(model) == [(1.0, 0.0), (0.7, 0.0)]


def test_few_renoises_the_data_estimate_with_fresh_noise():
    model = Recorder()
    z = noise()
    out = sample(model, z, 2, style="few", generator=torch.Generator().manual_seed(5))
    x0 = z - 1.0 * z  # F = x, so the first data estimate is 0
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
    x_half = 0.5 * x0 + 0.5 * eps
    assert torch.allclose(model.calls[1][2], x_half)
    assert torch.allclose(out, x_half - 0.5 * x_half)


@pytest.mark.parametrize("nfe", [1, 2, 3, 5])
def test_any_style_with_the_exact_average_velocity_is_the_exact_flow(nfe):
    oracle = GaussianOracle(mu=[1.0, -0.5], s=0.7)
    z = noise(64).double()
    out = sample(OracleModel(oracle), z, nfe, style="any")
    exact = oracle.flow(z, torch.ones(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64))
    assert (out - exact).abs().max() < 1e-12


def test_mul_style_is_euler_and_converges_with_steps():
    oracle = GaussianOracle(mu=[1.0, -0.5], s=0.7)
    z = noise(64).double()
    exact = oracle.flow(z, torch.ones(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64))
    errors = [(sample(OracleModel(oracle), z, k, style="mul") - exact).abs().max().item() for k in (8, 16, 32)]
    assert errors[0] > errors[1] > errors[2]
    assert 1.6 < errors[1] / errors[2] < 2.4  # first order


def test_labels_are_passed_through():
    torch.manual_seed(0)
    model = VelocityMLP(dim=2, num_classes=3)
    z, y = noise(6), torch.tensor([0, 1, 2, 0, 1, 2])
    a = sample(model, z, 1, y=y)
    assert not torch.equal(a, sample(model, z, 1, y=torch.full_like(y, 3)))


@pytest.mark.parametrize("kw,field", [
    ({"nfe": 0}, "nfe"), ({"nfe": 1.5}, "nfe"), ({"nfe": 2, "style": "heun"}, "sample_style"),
    ({"nfe": 2, "times": [1.0, 0.0]}, "times"), ({"nfe": 2, "times": [1.0, 0.5, 0.1]}, "times"),
    ({"nfe": 2, "times": [0.5, 0.7, 0.0]}, "times"), ({"nfe": 1, "times": [1.5, 0.0]}, "times"),
])
def test_bad_sampling_values_are_refused(kw, field):
    with pytest.raises(ConfigError) as err:
        sample(Recorder(), noise(), **kw)
    assert err.value.field == field
