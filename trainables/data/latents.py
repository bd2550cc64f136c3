"""Pre-extracted latent datasets in parquet shards, streamed disjointly across ranks.

Layout of a latent directory (written by LatentWriter, read by LatentShards):

- `shard-00000.parquet`, ...: columns `index` (int64, global row id), `label` (int64),
  `latent` (fixed_size_list<float16|float32>[C*H*W]); each shard's schema metadata carries
  `rcgm.latents` = JSON {version, shape, dtype, rows}.
- `_common_metadata`: the Parquet convention for a dataset-wide schema; its `rcgm.latents`
  JSON adds the per-channel `mean` / `std` over all rows, the encoder, source and row count.
  It is written last, so a directory without it is an interrupted build and is refused.

Rows are shuffled before sharding (by the builder), so one shard is a fair sample and readers
can stream shard by shard while still covering every row exactly once per epoch.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainables.data import DatasetUnavailable
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


class LatentShards:
    """Reader for a latent directory: metadata, per-rank disjoint epochs, and a DataLoader view."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        common = self.path / "_common_metadata"
        if not common.is_file():
            raise DatasetUnavailable(f"{self.path}: no _common_metadata (not a latent directory, or an interrupted "
                                     "build): run python -m trainables.data.build_latents again")
        self.meta = json.loads(pq.read_schema(common).metadata[META_KEY])
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
        return (x - self.mean.view(view)) / self.std.clamp_min(1e-8).view(view)

    def read_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (latent, label) in index order (small datasets and tests)."""
        parts = [self.read_shard(i) for i in range(len(self.files))]
        order = torch.argsort(torch.cat([p[0] for p in parts]))
        return torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order]

    def rank_indices(self, epoch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                     drop_last: bool = False) -> np.ndarray:
        """This rank's global row ids for the epoch: strided slices of one shared permutation.

        Across ranks the slices are disjoint and cover every row exactly once; sizes differ by at
        most one. drop_last trims the permutation to a multiple of world_size so every rank gets
        the same count (what DDP needs to keep collective calls in step).
        """
        if not 0 <= rank < world_size:
            raise ConfigError("rank", rank, f"0..{world_size - 1} for world_size {world_size}")
        perm = epoch_permutation(len(self), seed, epoch)
        if drop_last:
            perm = perm[: len(perm) - len(perm) % world_size]
        return perm[rank::world_size]

    def iter_rows(self, epoch: int, rank: int = 0, world_size: int = 1, seed: int = 0, drop_last: bool = False,
                  normalize: bool = False, worker: int = 0, num_workers: int = 1):
        """Yield (index, latent, label) for this rank (and DataLoader worker), one shard in memory at a time.

        Shards are visited in a seeded per-epoch order and rows inside a shard in the permutation's
        order, so streaming stays shard-local while the epoch is still reshuffled.
        """
        mine = self.rank_indices(epoch, rank, world_size, seed, drop_last)[worker::num_workers]
        shard_of = np.searchsorted(self.starts, mine, side="right") - 1
        rng = np.random.default_rng([seed, epoch, 1])
        for s in rng.permutation(len(self.files)):
            rows = mine[shard_of == s]
            if len(rows) == 0:
                continue
            idx, x, y = self.read_shard(int(s))
            pos = torch.from_numpy(rows - self.starts[s])
            # Shards are written in index order, but look rows up by their stored id to be safe.
            if not torch.equal(idx, torch.arange(self.starts[s], self.starts[s + 1])):
                pos = torch.searchsorted(idx, torch.from_numpy(rows))
            xs = x[pos]
            if normalize:
                xs = self.normalize(xs)
            for i, latent, label in zip(rows.tolist(), xs, y[pos]):
                yield i, latent, label

    def dataset(self, seed: int = 0, normalize: bool = True, drop_last: bool = True,
                rank: int | None = None, world_size: int | None = None) -> "LatentIterable":
        """A torch IterableDataset over these shards (call .set_epoch(e) before each epoch)."""
        return LatentIterable(self, seed, normalize, drop_last, rank, world_size)


class LatentIterable(torch.utils.data.IterableDataset):
    """IterableDataset of (latent, label): shards itself by distributed rank and DataLoader worker.

    rank/world_size default to torch.distributed's (so it works under Ray Train's
    prepare_data_loader, which adds no sampler to an IterableDataset).
    """

    def __init__(self, shards: LatentShards, seed: int, normalize: bool, drop_last: bool,
                 rank: int | None, world_size: int | None):
        super().__init__()
        self.shards, self.seed, self.normalize, self.drop_last = shards, seed, normalize, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose permutation the next iteration follows."""
        self.epoch = int(epoch)

    def _placement(self) -> tuple[int, int]:
        """(rank, world_size): explicit, else from torch.distributed, else a single process."""
        if self.rank is not None:
            return self.rank, self.world_size or 1
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self):
        rank, world = self._placement()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for _, latent, label in self.shards.iter_rows(self.epoch, rank, world, self.seed, self.drop_last,
                                                       self.normalize, worker, workers):
            yield latent, label
