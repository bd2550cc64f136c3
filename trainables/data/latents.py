"""Pre-extracted latent datasets in parquet shards: the writer and the reader.

Layout of a latent directory (written by LatentWriter, read by LatentShards):

- `shard-00000.parquet`, ...: columns `index` (int64, global row id), `label` (int64),
  `latent` (fixed_size_list<float16|float32>[C*H*W]); each shard's schema metadata carries
  `rcgm.latents` = JSON {version, shape, dtype, rows}.
- `_common_metadata`: the Parquet convention for a dataset-wide schema; its `rcgm.latents`
  JSON adds the per-channel `mean` / `std` over all rows, the encoder, source and row count,
  and `vae`: the AutoencoderKL that made the latents (trainables.data.vae: source, scaling
  factor, weights sha256, image shape), null for identity / tiny and absent in older folders.
  It is written last, so a directory without it is an interrupted build and is refused.

Rows are shuffled before sharding (by the builder), so one shard is a fair sample and the last
rows are a fair held-out split (trainables.data.latent_task reads a rank's rows shard by shard).
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainables.data.catalog import DatasetUnavailable
from trainables.rcgm.errors import ConfigError

FORMAT_VERSION = 1
META_KEY = b"rcgm.latents"
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


class LatentWriter:
    """Append (latents, labels) batches; shards are cut every shard_size rows; close() writes the stats."""

    def __init__(self, out: str | Path, shape: tuple, dtype: str = "float16", shard_size: int = 10000,
                 info: dict | None = None, overwrite: bool = False):
        if dtype not in DTYPES:
            raise ConfigError("dtype", dtype, "float16 or float32")
        if shard_size < 1:
            raise ConfigError("shard_size", shard_size, "a positive row count")
        self.out = Path(out)
        old = sorted(self.out.glob("shard-*.parquet")) + sorted(self.out.glob("_common_metadata"))
        if old and not overwrite:
            # Stale shards from an earlier build would silently mix into this one.
            raise ConfigError("out", str(self.out), "an empty or new directory (or pass overwrite)")
        for file in old:
            file.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        self.shape, self.dtype, self.shard_size = tuple(int(s) for s in shape), dtype, int(shard_size)
        self.info = dict(info or {})
        self.width = int(np.prod(self.shape))
        self.schema = pa.schema([("index", pa.int64()), ("label", pa.int64()),
                                 ("latent", pa.list_(DTYPES[dtype], self.width))])
        self.pending_x, self.pending_y = [], []
        self.pending_rows = self.rows = self.shards = 0
        # float64 running sums: per-channel stats over millions of float16 values stay exact enough.
        self.sum = np.zeros(self.shape[0])
        self.sumsq = np.zeros(self.shape[0])

    def add(self, latents: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Queue a batch of (B, *shape) latents with (B,) labels; full shards are written at once."""
        x = torch.as_tensor(latents).detach().cpu()
        if tuple(x.shape[1:]) != self.shape:
            raise ConfigError("latents", tuple(x.shape), f"(B, {', '.join(map(str, self.shape))})")
        x64 = x.double().transpose(0, 1).reshape(self.shape[0], -1)
        self.sum += x64.sum(1).numpy()
        self.sumsq += x64.pow(2).sum(1).numpy()
        self.pending_x.append(x.to(getattr(torch, self.dtype)).numpy())
        self.pending_y.append(np.asarray(labels, dtype=np.int64).reshape(-1))
        self.pending_rows += len(x)
        while self.pending_rows >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        """Write the first n queued rows as the next shard."""
        x, y = np.concatenate(self.pending_x), np.concatenate(self.pending_y)
        self.pending_x, self.pending_y, self.pending_rows = [x[n:]], [y[n:]], len(x) - n
        x, y = x[:n], y[:n]
        values = pa.array(x.reshape(-1), type=DTYPES[self.dtype])
        table = pa.table({
            "index": pa.array(np.arange(self.rows, self.rows + n, dtype=np.int64)),
            "label": pa.array(y),
            "latent": pa.FixedSizeListArray.from_arrays(values, self.width),
        }, schema=self.schema)
        meta = {"version": FORMAT_VERSION, "shape": list(self.shape), "dtype": self.dtype, "rows": n}
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        pq.write_table(table, self.out / f"shard-{self.shards:05d}.parquet")
        self.rows += n
        self.shards += 1

    def close(self) -> dict:
        """Write the last partial shard and _common_metadata (stats, provenance); return that metadata."""
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.rows < 2:
            raise ConfigError("latents", self.rows, "at least 2 rows to estimate per-channel statistics")
        count = self.rows * self.width / self.shape[0]
        mean = self.sum / count
        std = np.sqrt(np.maximum(self.sumsq / count - mean**2, 0.0))
        meta = dict(self.info, version=FORMAT_VERSION, shape=list(self.shape), dtype=self.dtype, rows=self.rows,
                    shards=self.shards, mean=mean.tolist(), std=std.tolist())
        pq.write_metadata(self.schema.with_metadata({META_KEY: json.dumps(meta).encode()}), self.out / "_common_metadata")
        return meta


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global order: a seeded permutation, the same on every rank."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def read_metadata(path: str | Path) -> dict:
    """A latent directory's dataset-wide metadata (`_common_metadata` only: no shard is opened)."""
    common = Path(path) / "_common_metadata"
    if not common.is_file():
        raise DatasetUnavailable(f"{path}: no _common_metadata (not a latent directory, or an interrupted "
                                 "build): run python -m trainables.data.build_latents again")
    return json.loads(pq.read_schema(common).metadata[META_KEY])


class LatentShards:
    """Reader for a latent directory: metadata, row offsets per shard, and whole-shard reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        if self.meta["version"] != FORMAT_VERSION:
            raise DatasetUnavailable(f"{self.path}: latent format v{self.meta['version']}, this code reads v{FORMAT_VERSION}")
        self.files = sorted(self.path.glob("shard-*.parquet"))
        # Row counts come from the parquet footers: no data is read to plan an epoch.
        counts = np.array([pq.ParquetFile(f).metadata.num_rows for f in self.files], dtype=np.int64)
        if counts.sum() != self.meta["rows"]:
            raise DatasetUnavailable(f"{self.path}: shards hold {counts.sum()} rows, metadata says {self.meta['rows']}")
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.shape = tuple(self.meta["shape"])
        self.dtype = self.meta["dtype"]
        self.mean = torch.tensor(self.meta["mean"], dtype=torch.float32)
        self.std = torch.tensor(self.meta["std"], dtype=torch.float32)
        self.num_classes = self.meta.get("num_classes")
        # Folders built before the VAE record existed have no key: they read as having no decoder.
        self.vae = self.meta.get("vae")

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def read_shard(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, latent float32 (n, *shape), label) of shard i."""
        table = pq.read_table(self.files[i])
        flat = table.column("latent").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        x = torch.from_numpy(flat.astype(np.float32).reshape(-1, *self.shape))
        # Copies: arrow buffers are read-only and torch wants writable memory.
        idx = torch.from_numpy(table.column("index").to_numpy().copy())
        return idx, x, torch.from_numpy(table.column("label").to_numpy().copy())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel (x - mean) / std with the dataset's stored statistics (UCGM's latent_norm)."""
        view = (1, -1) + (1,) * (len(self.shape) - 1)
        # The statistics live on the CPU; a GPU trial's batches are drawn on the GPU (data.pools).
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean.view(view)) / std.clamp_min(1e-8).view(view)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of normalize: back to the latents as stored."""
        view = (1, -1) + (1,) * (len(self.shape) - 1)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x * std.clamp_min(1e-8).view(view) + mean.view(view)

    def read_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (latent, label) in index order (small datasets and tests)."""
        parts = [self.read_shard(i) for i in range(len(self.files))]
        order = torch.argsort(torch.cat([p[0] for p in parts]))
        return torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order]
