"""TargetModel: kappa = 0 / 1 / EMA semantics, the warm-up recursion, state round trip."""

import math

import pytest
import torch

from trainables.rcgm.errors import ConfigError
from trainables.rcgm.target import TargetModel, next_decay


def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def perturb(module, amount=0.1):
    """Stand-in for an optimizer step."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(amount)


def test_kappa_zero_is_the_online_model_itself():
    online = net()
    target = TargetModel(online, 0.0)
    assert target.module is online
    perturb(online)
    target.update(online)
    assert target.module is online
    assert target.state_dict()["module"] is None  # nothing to store: no copy exists


def test_kappa_one_is_a_frozen_copy_of_the_initial_weights():
    online = net()
    initial = flat(online)
    target = TargetModel(online, 1.0)
    assert target.module is not online
    for _ in range(3):
        perturb(online)
        target.update(online)
    assert torch.equal(flat(target.module), initial)
    assert not any(p.requires_grad for p in target.module.parameters())


def test_ema_first_update_copies_then_uses_the_warm_up_decay():
    kappa = 0.9
    online = net()
    target = TargetModel(online, kappa)
    perturb(online, 0.5)
    target.update(online)
    assert torch.equal(flat(target.module), flat(online))  # c_0 = 0: an exact copy
    assert target.decay == pytest.approx(kappa / 2, abs=1e-15)
    before = flat(target.module)
    perturb(online, 0.3)
    target.update(online)
    c = kappa / 2
    assert torch.allclose(flat(target.module), c * before + (1 - c) * flat(online), atol=1e-7)
    assert target.decay == pytest.approx(next_decay(c, kappa), abs=1e-15)
    assert target.num_updates == 2


def test_warm_up_schedule_values():
    """c_k from the recursion: ~0.98 at update 100, ~0.9975 at 1000, approaching kappa = 0.999."""
    online = torch.nn.Linear(1, 1)
    target = TargetModel(online, 0.999)
    seen = {}
    for k in range(1, 5001):
        seen[k] = target.decay  # the decay that update k uses
        target.update(online)
    assert seen[1] == 0.0
    assert seen[2] == pytest.approx(0.4995, abs=1e-12)
    assert seen[100] == pytest.approx(0.9805, abs=5e-4)
    assert seen[1000] == pytest.approx(0.99747, abs=5e-5)
    assert 0.9988 < target.decay < 0.999
    assert all(seen[k] < seen[k + 1] < 0.999 for k in range(1, 5000))


def test_state_round_trip_resumes_identically():
    online = net()
    target = TargetModel(online, 0.99)
    for _ in range(5):
        perturb(online, 0.01)
        target.update(online)
    state = target.state_dict()

    resumed = TargetModel(net(seed=7), 0.99)  # different weights until loaded
    resumed.load_state_dict(state)
    assert resumed.decay == target.decay and resumed.num_updates == 5
    assert torch.equal(flat(resumed.module), flat(target.module))
    perturb(online, 0.01)
    target.update(online)
    resumed.update(online)
    assert torch.equal(flat(resumed.module), flat(target.module))
    assert resumed.decay == target.decay

    with pytest.raises(ValueError):
        TargetModel(net(), 0.9).load_state_dict(state)


def test_buffers_follow_the_online_model():
    online = net()
    target = TargetModel(online, 0.5)
    online.train()(torch.randn(8, 3))  # moves the BatchNorm running stats
    target.update(online)
    assert torch.equal(target.module[1].running_mean, online[1].running_mean)


@pytest.mark.parametrize("kappa", [1.5, -0.01, math.nan, math.inf, True, "0.9", None])
def test_bad_kappa_is_refused(kappa):
    with pytest.raises(ConfigError) as err:
        TargetModel(net(), kappa)
    assert err.value.field == "kappa"
