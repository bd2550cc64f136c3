"""DiT contract: shape, F == 0 at init, the (t - r) gate on the r embedder, labels, jvp."""

import pytest
import torch

from trainables.models import DIT_NAMES, build_model
from trainables.models.dit import build_dit, parse_dit_name
from trainables.rcgm.errors import ConfigError

SHAPE = (1, 28, 28)


def batch(n=4, seed=0):
    """Random (x, t, r, y) with r <= t."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g)
    t = torch.rand(n, generator=g) * 0.8 + 0.2
    r = t * torch.rand(n, generator=g) * 0.5
    y = torch.randint(0, 10, (n,), generator=g)
    return x, t, r, y


def randomize(model, seed=1):
    """Perturb every parameter so zero-initialised layers stop hiding the conditioning."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["DiT-XS/4", "DiT-T/4", "DiT-T/2"])
def test_output_shape_and_zero_at_init(name):
    model = build_model(name, SHAPE, num_classes=10)
    x, t, r, y = batch()
    out = model(x, t, r, y)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(model(x, t, r, None)) == 0


def test_every_name_parses_and_bad_shapes_refused():
    sizes = {name: parse_dit_name(name) for name in DIT_NAMES}
    assert sizes["DiT-XL/2"] == (28, 1152, 16, 2)  # the DiT paper's XL/2
    assert sizes["DiT-S/4"] == (12, 384, 6, 4)
    with pytest.raises(ConfigError, match="divisible"):
        build_dit("DiT-XS/4", (1, 30, 30), 10)
    with pytest.raises(ConfigError, match="DiT-"):
        build_dit("DiT-Q/2", SHAPE, 10)


def test_other_shapes():
    model = randomize(build_dit("DiT-XS/4", (3, 32, 32), 10))
    x = torch.randn(2, 3, 32, 32)
    assert model(x, torch.ones(2), torch.zeros(2), None).shape == x.shape
    digits = randomize(build_dit("DiT-XS/4", (1, 8, 8), None))
    assert digits(torch.randn(2, 1, 8, 8), torch.ones(2), torch.zeros(2)).shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError):
        digits(torch.randn(2, 1, 8, 8), torch.ones(2), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_r_embedder_gated_by_time_gap():
    model = randomize(build_dit("DiT-XS/4", SHAPE, 10)).eval()
    x, t, r, y = batch()
    with torch.no_grad():
        at_t_before = model(x, t, t, y)
        jump_before = model(x, t, r, y)
        for p in model.r_embed.parameters():
            p.add_(torch.randn_like(p))
        at_t_after = model(x, t, t, y)
        jump_after = model(x, t, r, y)
    # At r == t the gate (t - r) is exactly zero: the r embedder cannot matter.
    assert torch.equal(at_t_before, at_t_after)
    assert not torch.allclose(jump_before, jump_after, atol=1e-4)


def test_labels_matter_after_training_steps():
    torch.manual_seed(0)
    model = build_dit("DiT-XS/4", SHAPE, 10)
    x, t, r, y = batch(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # adaLN-Zero: step 1 only moves the output linear; the condition reaches F from step 2 on.
    for _ in range(3):
        opt.zero_grad()
        (model(x, t, r, y) - x).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        a = model(x, t, r, torch.zeros_like(y))
        b = model(x, t, r, torch.full_like(y, 3))
        null = model(x, t, r, None)
    assert torch.count_nonzero(a) > 0
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, null)


@pytest.mark.parametrize("fused", [False, True], ids=["math", "sdpa-math-kernel"])
def test_jvp_through_model_matches_finite_difference(fused):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = randomize(build_dit("DiT-XS/4", SHAPE, 10, fused_attn=fused)).double()
    x, t, r, y = batch(2)
    x, t, r = x.double(), t.double(), r.double()
    v = torch.randn_like(x)

    def f(x_, t_, r_):
        return model(x_, t_, r_, y)

    # MeanFlow's tangent: d/ds F(x + s v, t + s, r); SDPA's math kernel is the one with forward-mode AD.
    with sdpa_kernel([SDPBackend.MATH]):
        out, tangent = torch.func.jvp(f, (x, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    eps = 1e-6
    fd = (f(x + eps * v, t + eps, r) - f(x - eps * v, t - eps, r)) / (2 * eps)
    assert out.shape == x.shape
    torch.testing.assert_close(tangent, fd, rtol=1e-4, atol=1e-6)


def test_fused_attention_flag_gives_same_forward():
    slow = randomize(build_dit("DiT-XS/4", SHAPE, 10, fused_attn=False)).eval()
    fast = build_dit("DiT-XS/4", SHAPE, 10).eval()
    fast.load_state_dict(slow.state_dict())
    assert all(b.attn.fused_attn for b in fast.blocks) and not any(b.attn.fused_attn for b in slow.blocks)
    x, t, r, y = batch()
    with torch.no_grad():
        torch.testing.assert_close(fast(x, t, r, y), slow(x, t, r, y), rtol=1e-4, atol=1e-5)
