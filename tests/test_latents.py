"""Latent shards: round trip, disjoint complete ranks, seeded epochs, DataLoader, the build script."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from trainables.data import DatasetUnavailable
from trainables.data.build_latents import EncoderUnavailable, build, build_encoder
from trainables.data.latents import META_KEY, LatentShards, LatentWriter
from trainables.rcgm.errors import ConfigError


def write_random(out, n=103, shape=(2, 3, 3), dtype="float32", shard_size=20, seed=0):
    """Write n random latents (offset per channel) in batches of 17; return them and their labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + torch.tensor([0.5, -2.0]).view(1, 2, 1, 1)
    y = torch.randint(0, 10, (n,), generator=g)
    writer = LatentWriter(out, shape, dtype, shard_size, info={"encoder": "test", "num_classes": 10})
    for idx in torch.arange(n).split(17):
        writer.add(x[idx], y[idx])
    writer.close()
    return x, y


def test_round_trip_and_schema_metadata(tmp_path):
    x, y = write_random(tmp_path)
    shards = LatentShards(tmp_path)
    assert len(shards) == 103 and len(shards.files) == 6 and shards.shape == (2, 3, 3)
    rx, ry = shards.read_all()
    assert torch.equal(rx, x) and torch.equal(ry, y)
    # Stats in the schema metadata: per-channel, over every row.
    per_channel = x.transpose(0, 1).reshape(2, -1).double()
    torch.testing.assert_close(shards.mean.double(), per_channel.mean(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(shards.std.double(), per_channel.std(1, unbiased=False), rtol=0, atol=1e-5)
    shard_meta = json.loads(pq.read_schema(shards.files[0]).metadata[META_KEY])
    assert shard_meta == {"version": 1, "shape": [2, 3, 3], "dtype": "float32", "rows": 20}
    assert shards.meta["encoder"] == "test" and shards.num_classes == 10


def test_float16_storage(tmp_path):
    x, _ = write_random(tmp_path, dtype="float16")
    shards = LatentShards(tmp_path)
    assert str(pq.read_schema(shards.files[0]).field("latent").type.value_type) == "halffloat"
    rx, _ = shards.read_all()
    assert rx.dtype == torch.float32 and torch.equal(rx, x.half().float())


def test_two_ranks_disjoint_and_complete(tmp_path):
    write_random(tmp_path)
    shards = LatentShards(tmp_path)
    rank_rows = [[i for i, _, _ in shards.iter_rows(epoch=0, rank=k, world_size=2)] for k in range(2)]
    assert not set(rank_rows[0]) & set(rank_rows[1])
    assert sorted(rank_rows[0] + rank_rows[1]) == list(range(103))
    assert sorted(len(r) for r in rank_rows) == [51, 52]
    # drop_last evens the ranks out for DDP, dropping at most world_size - 1 rows.
    even = [shards.rank_indices(0, k, 2, drop_last=True) for k in range(2)]
    assert len(even[0]) == len(even[1]) == 51 and not set(even[0]) & set(even[1])
    # Rows carry their own data: the latent streamed for index i is row i.
    x, _ = shards.read_all()
    for i, latent, _ in shards.iter_rows(0, 1, 2):
        assert torch.equal(latent, x[i])
    with pytest.raises(ConfigError, match="rank"):
        shards.rank_indices(0, 2, 2)


def test_epochs_shuffle_deterministically(tmp_path):
    write_random(tmp_path)
    shards = LatentShards(tmp_path)

    def order(epoch, seed=0):
        return [i for i, _, _ in shards.iter_rows(epoch, 0, 1, seed=seed)]

    assert order(0) == order(0)
    assert order(0) == [i for i, _, _ in LatentShards(tmp_path).iter_rows(0, 0, 1)]  # a fresh reader agrees
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1)) == list(range(103))
    assert order(0, seed=1) != order(0)
    # The rows a rank gets change per epoch too (not only the visiting order of shards).
    rank0 = [set(shards.rank_indices(e, 0, 2).tolist()) for e in (0, 1)]
    assert rank0[0] != rank0[1]


def test_dataloader_with_workers_and_normalisation(tmp_path):
    write_random(tmp_path, n=200, shard_size=50)
    shards = LatentShards(tmp_path)
    data = shards.dataset(seed=0, normalize=True, rank=1, world_size=2)
    data.set_epoch(3)
    loader = torch.utils.data.DataLoader(data, batch_size=16, num_workers=2)
    batches = list(loader)
    latents = torch.cat([b[0] for b in batches])
    assert latents.shape == (100, 2, 3, 3) and latents.dtype == torch.float32
    # Two DataLoader workers split the rank's rows without overlap: exactly this rank's row set.
    x, _ = shards.read_all()
    expected = shards.normalize(x[torch.from_numpy(shards.rank_indices(3, 1, 2))])
    key = lambda t: sorted(map(tuple, t.flatten(1).round(decimals=4).tolist()))  # noqa: E731
    assert key(latents) == key(expected)
    # Normalised with the stored stats: roughly zero mean, unit std per channel over the rank's half.
    per_channel = latents.transpose(0, 1).reshape(2, -1)
    assert per_channel.mean(1).abs().max() < 0.3 and (per_channel.std(1) - 1).abs().max() < 0.3


def test_refusals(tmp_path):
    with pytest.raises(DatasetUnavailable, match="_common_metadata"):
        LatentShards(tmp_path)
    write_random(tmp_path)
    with pytest.raises(ConfigError, match="out"):
        LatentWriter(tmp_path, (2, 3, 3))  # stale shards must not mix into a new build
    with pytest.raises(ConfigError, match="dtype"):
        LatentWriter(tmp_path / "new", (2,), dtype="int8")
    with pytest.raises(EncoderUnavailable, match="diffusers|AutoencoderKL"):
        build_encoder("no-such-org/no-such-vae", 1)


def test_tiny_encoder_build(tmp_path):
    meta = build("digits", "tiny", str(tmp_path), shard_size=500, log=lambda *_: None)
    assert meta["shape"] == [4, 4, 4] and meta["rows"] == 1497 and meta["shards"] == 3
    again = build("digits", "tiny", str(tmp_path / "again"), shard_size=500, log=lambda *_: None)
    assert again["mean"] == meta["mean"]  # the random encoder is fixed by its seed


def test_build_script_on_mnist_identity(tmp_path, capsys):
    from trainables.data.build_latents import main

    out = tmp_path / "mnist"
    # main() is what `python -m trainables.data.build_latents` runs; in-process skips a second torch import.
    assert main(["--images", "mnist", "--encoder", "identity", "--out", str(out), "--shard-size", "1000"]) == 0
    assert "wrote 4500 latents of shape (1, 28, 28) (float16) in 5 shards" in capsys.readouterr().out
    shards = LatentShards(out)
    assert len(shards) == 4500 and len(shards.files) == 5 and shards.shape == (1, 28, 28)
    x, y = shards.read_all()
    assert x.min() >= -1 and x.max() <= 1 and torch.bincount(y).tolist() == [450] * 10
    # Shuffled before sharding: the first shard is not one class.
    first = pq.read_table(shards.files[0], columns=["label"]).column("label").to_numpy()
    assert len(np.unique(first)) == 10
    # The identity latents are the training pool's pixels (float16 of k/127.5 - 1).
    from trainables.data import load_task

    pool = (load_task("mnist").train_x.float() / 127.5 - 1).half().float()
    assert torch.allclose(x.mean(0), pool.mean(0), atol=1e-5)
    assert torch.equal(x.flatten().sort().values, pool.flatten().sort().values)


def test_build_script_refuses_missing_encoder_cleanly(tmp_path, capsys):
    from trainables.data.build_latents import main

    assert main(["--images", "mnist", "--encoder", "some/vae", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("build_latents:") and ("diffusers" in err or "AutoencoderKL" in err)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_rank_taken_from_torch_distributed(tmp_path, monkeypatch):
    # Under Ray Train (prepare_data_loader adds no sampler to an IterableDataset) the process group says the rank.
    write_random(tmp_path)
    shards = LatentShards(tmp_path)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    data = shards.dataset(seed=0, normalize=False, drop_last=False)
    data.set_epoch(2)
    got = torch.stack([latent for latent, _ in data])
    x, _ = shards.read_all()
    expected = x[torch.from_numpy(shards.rank_indices(2, 1, 3))]
    assert len(got) == 34 and sorted(map(tuple, got.flatten(1).tolist())) == sorted(map(tuple, expected.flatten(1).tolist()))
