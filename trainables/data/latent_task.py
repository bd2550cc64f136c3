"""Pre-extracted latent shards as a trial task: `latents:<folder>` (a folder written by build_latents).

Split (fixed, the same on every rank and every seed): rows are shuffled before sharding by the
builder, so the last `reference_size` global rows (1/8 of the rows, at most 10000) are a fair
held-out sample; they are read only by reference(). The other rows are the training rows,
partitioned over Ray Train ranks like LatentShards.rank_indices: one seeded permutation of the
training rows shared by every rank, rank k of W taking perm[k::W] (disjoint, together every
training row exactly once). The partition is fixed for the trial (epoch 0's permutation), so a
rank reads its slice once and never touches the other ranks' rows.

Memory: nothing is read when the task is made (only the metadata and parquet footers), so
preflight checks cost no data reads. The first sample() reads this rank's training rows, kept in
the stored dtype (float16 or float32): about train_rows / world_size * C*H*W * 2 bytes for
float16, plus the labels; while reading, one more shard's columns are held. The first
reference() reads the held-out rows. Batches are cast to float32 and normalised per channel with
the stored mean / std on the way out.

Decoding: a folder built with a diffusers AutoencoderKL records it (trainables.data.vae);
decoder() loads that VAE on first use, checks its weights against the record, and turns the
task's normalised latents (samples, held-out rows) back into images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainables.data.catalog import LATENT_PREFIX, DatasetUnavailable
from trainables.data.latents import LatentShards, epoch_permutation
from trainables.data.pools import DevicePool
from trainables.data.vae import LatentDecoder, load_decoder
from trainables.rcgm.errors import ConfigError

HELD_OUT_DIVISOR = 8  # 1/8 held out: the bundled MNIST pool (4500 rows) then holds out 562 >= 500 eval samples
HELD_OUT_MAX = 10_000  # enough for a Frechet estimate; more would only cost reads


def build_command(path) -> str:
    """The command that writes a latent folder at path (offline, from the bundled digits)."""
    return f"python -m trainables.data.build_latents --images mnist --encoder identity --out {path}"


def _unavailable(path, what: str) -> DatasetUnavailable:
    """A DatasetUnavailable naming the folder, the problem and the command that makes a good one."""
    return DatasetUnavailable(
        f"latent task {LATENT_PREFIX}{path}: {what}. Make a latent folder with `{build_command(path)}` "
        "(or --images <folder of class sub-folders> --encoder <AutoencoderKL id/path>), then pass "
        f"--task {LATENT_PREFIX}<that folder>")


def open_shards(path) -> LatentShards:
    """Open a latent folder's metadata; every way it can be missing or malformed is a DatasetUnavailable."""
    folder = Path(path)
    if not folder.is_dir():
        raise _unavailable(path, "no such folder")
    try:
        shards = LatentShards(folder)
    except DatasetUnavailable as err:
        raise _unavailable(path, str(err)) from None
    # Corrupt footers or metadata surface as arrow, JSON or key errors: all mean "rebuild it".
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as err:
        raise _unavailable(path, f"malformed ({type(err).__name__}: {err}); rebuild it with --overwrite") from None
    if len(shards.shape) != 3:
        raise _unavailable(path, f"latents of shape {shards.shape}; a DiT needs (C, H, W)")
    if not shards.files or len(shards) < 2 * HELD_OUT_DIVISOR:
        raise _unavailable(path, f"{len(shards)} rows; at least {2 * HELD_OUT_DIVISOR} are needed for a held-out split")
    return shards


def held_out_rows(rows: int) -> int:
    """How many of the last global rows are held out for reference()."""
    return min(HELD_OUT_MAX, rows // HELD_OUT_DIVISOR)


def read_rows(shards: LatentShards, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents in the stored dtype (n, *shape), labels) of the sorted global row ids, one shard at a time."""
    width = int(np.prod(shards.shape))
    xs, ys = [], []
    shard_of = np.searchsorted(shards.starts, ids, side="right") - 1
    for s in np.unique(shard_of):
        rows = ids[shard_of == s]
        table = pq.read_table(shards.files[s], columns=["index", "label", "latent"])
        stored = table.column("index").to_numpy()
        pos = rows - shards.starts[s]
        # The writer stores rows in index order; look them up by id if a tool rewrote a shard.
        if not np.array_equal(stored, np.arange(shards.starts[s], shards.starts[s + 1])):
            pos = np.searchsorted(stored, rows)
        flat = table.column("latent").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        xs.append(np.ascontiguousarray(flat.reshape(-1, width)[pos]))
        ys.append(table.column("label").to_numpy()[pos].copy())
        del table, flat  # only this rank's rows stay alive, not the whole shard
    x = torch.from_numpy(np.concatenate(xs)).reshape(-1, *shards.shape)
    return x, torch.from_numpy(np.concatenate(ys).astype(np.int64))


class LatentTask:
    """A latent folder as a Task: this rank's disjoint training slice and a fixed held-out tail."""

    kind = "latents"

    def __init__(self, path, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.shards = open_shards(path)
        self.name = f"{LATENT_PREFIX}{path}"
        self.shape = tuple(self.shards.shape)
        self.num_classes = self.shards.num_classes
        rows = len(self.shards)
        self.reference_size = held_out_rows(rows)
        self.train_rows = rows - self.reference_size
        if not 0 <= rank < world_size <= self.train_rows:
            raise ConfigError("workers", world_size, f"1..{self.train_rows} (training rows of {self.name}), rank {rank} below it")
        self.rank, self.world_size = rank, world_size
        # Sorted: rows are then read shard by shard in one pass.
        self.indices = np.sort(epoch_permutation(self.train_rows, seed, 0)[rank::world_size])
        self.reference_indices = np.arange(self.train_rows, rows)
        self._train = self._held = None
        self._decoder: LatentDecoder | None = None
        meta = self.shards.meta
        self.description = (
            f"latents {self.shards.path} ({meta.get('encoder', '?')} on {meta.get('source', '?')}; {self.shape} "
            f"{self.shards.dtype}); {self.train_rows} training / {self.reference_size} held-out rows, rank {rank} "
            f"of {world_size} holds {len(self.indices)}; normalised per channel with the stored mean/std")

    def _check_labels(self, y: torch.Tensor) -> None:
        """Refuse labels the model's label table cannot hold (a malformed folder)."""
        if self.num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise _unavailable(self.shards.path, f"labels outside 0..{self.num_classes - 1}")

    def _load_train(self) -> DevicePool:
        """This rank's training rows, read on first use."""
        if self._train is None:
            x, y = read_rows(self.shards, self.indices)
            self._check_labels(y)
            self._train = DevicePool(x, y)
        return self._train

    def _labels(self, y: torch.Tensor) -> torch.Tensor | None:
        """Labels for a conditional folder, None for an unconditional one."""
        return y if self.num_classes is not None else None

    def sample(self, batch: int, generator: torch.Generator | None = None):
        """A training batch from this rank's rows (with replacement, like ImageTask): (x float32, y long or None).

        Drawing with replacement keeps a batch a pure function of the generator, so a trial
        resumed from a checkpoint (which restores the generator) continues bit-for-bit.
        """
        x, y = self._load_train().draw(batch, generator)
        return self.shards.normalize(x.float()), self._labels(y)

    def reference(self, n: int, generator: torch.Generator | None = None):
        """n distinct held-out latents (no replacement), normalised like training batches."""
        if not 0 < n <= self.reference_size:
            # Named after the trial knob that sets n, so the message says what to change.
            raise ConfigError("eval_samples", n, f"1..{self.reference_size}: task {self.name!r} holds out {self.reference_size} rows")
        if self._held is None:
            self._held = read_rows(self.shards, self.reference_indices)
            self._check_labels(self._held[1])
        x, y = self._held
        idx = torch.randperm(len(x), generator=generator)[:n]
        return self.shards.normalize(x[idx].float()), self._labels(y[idx])

    def decoder(self, device="cpu") -> LatentDecoder | None:
        """The folder's VAE decoder on device, loaded and its weights checked once; None when no VAE made the folder.

        Raises VAEUnavailable (diffusers or the weights missing here: score in latent space) or
        VAEChanged (the weights differ from the ones that encoded the folder: refuse the task).
        """
        if self.shards.vae is None:
            return None
        if self._decoder is None:
            self._decoder = load_decoder(self.shards)
        return self._decoder.to(device)
