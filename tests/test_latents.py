"""Latent shards: round trip, float16 storage, refusals, the build script."""

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
