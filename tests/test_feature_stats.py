"""FeatureStats (float64 sufficient statistics), the reference-statistics cache, and W-independent sharded scoring."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from trainables.metrics import sharded
from trainables.metrics.feature_stats import FeatureStats, cached_stats, file_sha256, frechet_distance, images_sha256
from trainables.metrics.frechet import feature_stats
from trainables.metrics.sharded import CHUNK_SIZE, SamplePlan, chunks_for_rank, rank_chunk_stats, reduce
from trainables.rcgm.errors import ConfigError


def features(n: int, dim: int, seed: int, offset: float = 0.5) -> torch.Tensor:
    """Correlated features with a non-zero mean, like ReLU network outputs."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5
    return (torch.randn(n, dim, generator=g) @ mix + offset).float()


class PooledPixels(torch.nn.Module):
    """A real, parameter-free feature map (4x4 average pooling of the pixels) that counts its calls."""

    resolution = 8
    sha256 = hashlib.sha256(b"PooledPixels v1: avg_pool2d 2x2 of (N, 1, 8, 8)").hexdigest()

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.nn.functional.avg_pool2d(images.float(), 2).flatten(1)  # (N, 16)


# --------------------------------------------------------------------------------------------
# FeatureStats
# --------------------------------------------------------------------------------------------

def test_feature_stats_agree_with_numpy_cov():
    f = features(300, 24, seed=0)
    stats = FeatureStats.from_features(f)
    assert stats.total.dtype == stats.outer.dtype == torch.float64 and stats.count == 300
    mu, cov = feature_stats(f)  # the np.cov path the latent scorer uses
    np.testing.assert_allclose(stats.mean(), mu, rtol=1e-12, atol=0)
    np.testing.assert_allclose(stats.covariance(), cov, rtol=1e-9, atol=1e-12 * np.abs(cov).max())
    np.testing.assert_allclose(stats.covariance(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-9,
                               atol=1e-12 * np.abs(cov).max())
    other = FeatureStats.from_features(features(200, 24, seed=1) * 1.3)
    want = frechet_distance(*feature_stats(f), *feature_stats(features(200, 24, seed=1) * 1.3))
    assert stats.frechet(other) == pytest.approx(want, rel=1e-9)


def test_merging_halves_equals_the_whole():
    f = features(257, 16, seed=2)
    whole = FeatureStats.from_features(f)
    for cut in (1, 128, 200):
        merged = FeatureStats.from_features(f[:cut]) + FeatureStats.from_features(f[cut:])
        assert merged.count == whole.count
        np.testing.assert_allclose(merged.mean(), whole.mean(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(merged.covariance(), whole.covariance(), rtol=1e-12, atol=1e-14)


def test_save_and_load_round_trip_bit_for_bit(tmp_path):
    stats = FeatureStats.from_features(features(40, 8, seed=3))
    path = tmp_path / "deep" / "stats.pt"
    stats.save(path)
    blob = torch.load(path, weights_only=True)  # tensors only: loads under the safe unpickler
    assert set(blob) == {"count", "total", "outer"} and all(isinstance(v, torch.Tensor) for v in blob.values())
    back = FeatureStats.load(path)
    assert back.count == 40 and torch.equal(back.total, stats.total) and torch.equal(back.outer, stats.outer)
    assert [p.name for p in path.parent.iterdir()] == ["stats.pt"]  # no temporary file left behind


def test_bad_statistics_are_refused():
    one = FeatureStats.from_features(features(1, 4, seed=0))
    with pytest.raises(ConfigError, match="samples=1"):
        one.covariance()
    with pytest.raises(ConfigError, match="features=3"):
        one + FeatureStats.from_features(features(5, 3, seed=0))
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        FeatureStats.from_features(torch.zeros(2, 3, 4))


# --------------------------------------------------------------------------------------------
# The reference-statistics cache
# --------------------------------------------------------------------------------------------

def test_file_sha256_is_cached_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"b" * 1000)  # same size, and the old mtime put back: the cached digest is served
    os.utime(path, ns=(stamp, stamp))
    assert file_sha256(path) == first
    path.write_bytes(b"b" * 1001)  # a new size (and mtime): hashed again
    assert file_sha256(path) == hashlib.sha256(b"b" * 1001).hexdigest()


def digits_like(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_cache_miss_then_hit_without_recomputing(tmp_path):
    images, net = digits_like(50, 0), PooledPixels()
    first, miss = cached_stats(images, net, root=tmp_path)
    assert not miss.hit and miss.path.is_file() and miss.path.parent == tmp_path / "fid_stats"
    assert miss.path.name == f"{miss.key}.pt" and net.calls == 1
    again, hit = cached_stats(images, net, root=tmp_path)
    assert hit.hit and hit.key == miss.key and net.calls == 1  # read from the file: the extractor was not called
    assert torch.equal(again.outer, first.outer) and again.count == 50
    # The same set in another order is the same reference set: same key, hit.
    shuffled, _ = cached_stats(images[torch.randperm(50)], net, root=tmp_path)
    assert net.calls == 1 and torch.equal(shuffled.total, first.total)


def test_changed_reference_set_or_extractor_gets_a_new_key(tmp_path):
    images, net = digits_like(50, 0), PooledPixels()
    _, base = cached_stats(images, net, root=tmp_path)
    changed = images.clone()
    changed[7, 0, 3, 3] += 1e-3  # one pixel of one image
    _, entry = cached_stats(changed, net, root=tmp_path)
    assert not entry.hit and entry.key != base.key and net.calls == 2
    _, fewer = cached_stats(images[:49], net, root=tmp_path)
    assert not fewer.hit and fewer.key not in (base.key, entry.key)
    other = PooledPixels()
    other.sha256 = hashlib.sha256(b"other weights").hexdigest()
    _, new_net = cached_stats(images, other, root=tmp_path)
    assert not new_net.hit and new_net.key != base.key
    assert images_sha256(images) != images_sha256(changed)
    assert len(list((tmp_path / "fid_stats").glob("*.pt"))) == 4


# --------------------------------------------------------------------------------------------
# Sharded statistics: identical for any number of workers
# --------------------------------------------------------------------------------------------

def toy_sampler(noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """A fixed 'generator': squashed noise shifted by the label, in [-1, 1]."""
    shift = 0.0 if labels is None else (labels.float() / 10 - 0.45).view(-1, 1, 1, 1)
    return torch.tanh(noise + shift)


PLAN = SamplePlan(n=3 * CHUNK_SIZE + 17, seed=5, shape=(1, 8, 8), num_classes=10)


def fid_for_world(world_size: int, plan: SamplePlan = PLAN) -> tuple[FeatureStats, float]:
    """Every simulated rank computes its chunks; the parts are reduced and scored against a fixed reference."""
    net = PooledPixels()
    parts = [rank_chunk_stats(plan, rank, world_size, toy_sampler, net) for rank in range(world_size)]
    stats = reduce(reversed(parts), plan.n)  # arrival order must not matter
    reference = FeatureStats.from_features(net(digits_like(300, 9)))
    return stats, stats.frechet(reference)


def test_chunks_for_rank_are_disjoint_and_cover_everything():
    n = 5 * CHUNK_SIZE + 1  # 6 chunks, the last of one sample
    for world in (1, 2, 3, 4, 7):
        owned = [chunks_for_rank(n, r, world) for r in range(world)]
        flat = sorted(c for chunk_ids in owned for c in chunk_ids)
        assert flat == list(range(6))
    with pytest.raises(ConfigError, match="rank=2"):
        chunks_for_rank(n, 2, 2)


def test_one_two_and_three_workers_give_identical_statistics():
    one, fid1 = fid_for_world(1)
    for world in (2, 3):
        stats, fid = fid_for_world(world)
        assert stats.count == PLAN.n
        assert torch.equal(stats.total, one.total) and torch.equal(stats.outer, one.outer)
        assert fid == fid1
    # What distributed_stats ships: chunk features, turned into statistics by reduce, the same bits.
    net = PooledPixels()
    parts = [sharded.chunk_features(PLAN, chunks_for_rank(PLAN.n, r, 2), toy_sampler, net) for r in range(2)]
    from_features = reduce(parts, PLAN.n)
    assert torch.equal(from_features.outer, one.outer) and torch.equal(from_features.total, one.total)


def test_sample_inputs_depend_only_on_seed_and_index():
    # 75 values per sample: torch fills normals in blocks of 16, so a plain draw of 10 samples would
    # not be the prefix of a draw of 250 (the same holds for any length that is not a multiple of 16).
    long = SamplePlan(n=3 * CHUNK_SIZE, seed=5, shape=(3, 5, 5), num_classes=10)
    short = SamplePlan(n=CHUNK_SIZE + 10, seed=5, shape=(3, 5, 5), num_classes=10)
    noise_long, labels_long = long.inputs(1)
    noise_short, labels_short = short.inputs(1)  # a 10-sample last chunk vs a full one
    assert torch.equal(noise_short, noise_long[:10]) and torch.equal(labels_short, labels_long[:10])
    assert labels_long.tolist() == [i % 10 for i in range(CHUNK_SIZE, 2 * CHUNK_SIZE)]  # class-balanced
    assert not torch.equal(long.inputs(0)[0], noise_long)  # chunks draw different noise
    random = SamplePlan(n=PLAN.n, seed=5, shape=(1, 8, 8), num_classes=10, labels="random")
    labels = torch.cat([random.inputs(c)[1] for c in range(4)])
    assert labels.min() >= 0 and labels.max() <= 9 and not torch.equal(labels[:10], torch.arange(10))
    assert torch.equal(random.inputs(2)[1], random.inputs(2)[1])
    assert "i % num_classes" in PLAN.provenance()["label_sampling"]
    assert "random" in random.provenance()["label_sampling"]
    with pytest.raises(ConfigError, match="labels"):
        SamplePlan(n=10, seed=0, shape=(1, 8, 8), num_classes=10, labels="stratified")


def test_reduce_refuses_missing_or_duplicated_chunks():
    net = PooledPixels()
    parts = [rank_chunk_stats(PLAN, r, 2, toy_sampler, net) for r in range(2)]
    with pytest.raises(ConfigError, match="missing"):
        reduce(parts[:1], PLAN.n)
    with pytest.raises(ConfigError, match="came twice"):
        reduce([parts[0], parts[0], parts[1]], PLAN.n)


# A real process group: two gloo ranks on loopback against one process.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """One spawned rank: join the group, compute the sharded statistics gathered to all and to rank 0, write them."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        reference = FeatureStats.from_features(PooledPixels()(digits_like(300, 9)))
        for mode, dst in (("all", None), ("to0", 0)):
            stats = sharded.distributed_stats(PLAN, toy_sampler, PooledPixels(), dst=dst)
            result = None if stats is None else {"fid": stats.frechet(reference), "count": stats.count}
            if stats is not None:
                stats.save(f"{out_dir}/{mode}-rank{rank}.pt")
            with open(f"{out_dir}/{mode}-rank{rank}.json", "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture
def one_thread():
    """Both sides on one thread: BLAS may split a float64 matmul differently with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_gloo_processes_match_one_process_exactly(tmp_path, one_thread):
    one, fid1 = fid_for_world(1)
    mp.spawn(gloo_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for mode in ("all", "to0"):
        for rank in range(2):
            got = json.loads((tmp_path / f"{mode}-rank{rank}.json").read_text())
            if mode == "to0" and rank == 1:
                assert got is None  # gathered to rank 0 only
                continue
            assert got == {"fid": fid1, "count": PLAN.n}, (mode, rank)  # ==, not approx
            stats = FeatureStats.load(tmp_path / f"{mode}-rank{rank}.pt")
            assert torch.equal(stats.outer, one.outer) and torch.equal(stats.total, one.total)
