"""Generating and scoring N samples split over W workers, with a result that does not depend on W.

Samples are numbered globally 0..N-1 and grouped into fixed chunks of CHUNK_SIZE by that number.
Chunk c's noise and labels come from a torch.Generator seeded from (seed, c) alone, always drawn
for a full chunk and cut to length, so sample i's inputs depend only on (seed, i): never on N, W
or the rank. A rank generates and featurises its own chunks (`chunks_for_rank`), and `reduce`
adds the chunks' FeatureStats in ascending chunk id. Float64 addition in a fixed order gives the
same bits for any W; per chunk, the bits are those of the same images through the same network
(on one machine type and thread setting: matmul kernels may round differently across CPUs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from trainables.metrics.feature_stats import FeatureStats
from trainables.rcgm.errors import ConfigError

CHUNK_SIZE = 250  # samples per chunk: part of what fixes sample i's noise, so never change it silently
LABEL_SAMPLING = {
    "balanced": "class-balanced: sample i gets label i % num_classes (the published-FID convention)",
    "random": "random: labels drawn uniformly per chunk from the chunk's generator",
}

SampleFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (noise, labels) -> images in [-1, 1]
Extractor = Callable[[torch.Tensor], torch.Tensor]  # images -> (n, D) features


def num_chunks(n: int) -> int:
    """Chunks covering samples 0..n-1."""
    return -(-n // CHUNK_SIZE)


def chunks_for_rank(n: int, rank: int, world_size: int) -> list[int]:
    """The chunk ids rank owns: every world_size-th, starting at rank (disjoint; together all of them)."""
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ConfigError("world_size", world_size, "an integer >= 1")
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ConfigError("rank", rank, f"an integer in 0..{world_size - 1}")
    return list(range(rank, num_chunks(n), world_size))


def chunk_seed(seed: int, chunk_id: int) -> int:
    """A 63-bit generator seed from (seed, chunk id); hashed so nearby pairs give unrelated streams."""
    digest = hashlib.sha256(f"rcgm-sample-chunk|{seed}|{chunk_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class SamplePlan:
    """n samples of a given shape from seed, with labels class-balanced or random (or none: unconditional)."""

    n: int
    seed: int
    shape: tuple
    num_classes: int | None = None
    labels: str = "balanced"

    def __post_init__(self):
        if not (isinstance(self.n, int) and self.n >= 2):
            raise ConfigError("samples", self.n, "an integer >= 2 (a covariance needs two samples)")
        if self.labels not in LABEL_SAMPLING:
            raise ConfigError("labels", self.labels, " or ".join(repr(k) for k in LABEL_SAMPLING))
        if self.num_classes is not None and not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ConfigError("num_classes", self.num_classes, "None (unconditional) or an integer >= 1")
        object.__setattr__(self, "shape", tuple(self.shape))

    def chunk_range(self, chunk_id: int) -> range:
        """The global sample indices of a chunk."""
        if not 0 <= chunk_id < num_chunks(self.n):
            raise ConfigError("chunk_id", chunk_id, f"0..{num_chunks(self.n) - 1} for {self.n} samples")
        return range(chunk_id * CHUNK_SIZE, min((chunk_id + 1) * CHUNK_SIZE, self.n))

    def inputs(self, chunk_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(noise, labels) of a chunk's samples; sample i's depend only on (seed, i)."""
        indices = self.chunk_range(chunk_id)
        gen = torch.Generator().manual_seed(chunk_seed(self.seed, chunk_id))
        # A full chunk is always drawn and then cut: torch fills normals in blocks of 16 values, so a
        # shorter draw is not in general a prefix of the longer one, and a last chunk would change with n.
        noise = torch.randn((CHUNK_SIZE, *self.shape), generator=gen)[: len(indices)]
        if self.num_classes is None:
            return noise, None
        if self.labels == "balanced":
            labels = torch.arange(indices.start, indices.stop) % self.num_classes
        else:
            labels = torch.randint(self.num_classes, (CHUNK_SIZE,), generator=gen)[: len(indices)]
        return noise, labels

    @property
    def label_sampling(self) -> str:
        """How labels were drawn, for the score's provenance."""
        return "none (unconditional)" if self.num_classes is None else LABEL_SAMPLING[self.labels]

    def provenance(self) -> dict:
        """What a score over these samples was drawn from."""
        return {"sample_count": self.n, "sample_seed": self.seed, "chunk_size": CHUNK_SIZE,
                "label_sampling": self.label_sampling}


def chunk_features(plan: SamplePlan, chunk_ids: Iterable[int], sample_fn: SampleFn,
                   extractor: Extractor) -> dict[int, torch.Tensor]:
    """The (n_c, D) features of each listed chunk's samples, on the CPU."""
    out = {}
    for chunk_id in chunk_ids:
        noise, labels = plan.inputs(chunk_id)
        with torch.no_grad():
            out[chunk_id] = extractor(sample_fn(noise, labels)).detach().cpu()
    return out


def chunk_stats(plan: SamplePlan, chunk_ids: Iterable[int], sample_fn: SampleFn,
                extractor: Extractor) -> dict[int, FeatureStats]:
    """FeatureStats of each listed chunk's samples."""
    return {c: FeatureStats.from_features(f) for c, f in chunk_features(plan, chunk_ids, sample_fn, extractor).items()}


def rank_chunk_stats(plan: SamplePlan, rank: int, world_size: int, sample_fn: SampleFn,
                     extractor: Extractor) -> dict[int, FeatureStats]:
    """The per-chunk statistics one rank of world_size computes."""
    return chunk_stats(plan, chunks_for_rank(plan.n, rank, world_size), sample_fn, extractor)


def reduce(parts: Iterable[Mapping[int, FeatureStats | torch.Tensor]], n: int) -> FeatureStats:
    """Merge per-chunk statistics (from any number of ranks) in ascending chunk id; every chunk exactly once.

    A value may also be the chunk's (n_c, D) features: its statistics are then made here, one chunk
    at a time, so only one (D, D) matrix is alive besides the total.
    """
    merged: dict[int, FeatureStats | torch.Tensor] = {}
    for part in parts:
        for chunk_id, value in part.items():
            if chunk_id in merged:
                raise ConfigError("chunk_id", chunk_id, "each chunk from exactly one rank (this one came twice)")
            merged[chunk_id] = value
    missing = sorted(set(range(num_chunks(n))) - set(merged))
    extra = sorted(set(merged) - set(range(num_chunks(n))))
    if missing or extra:
        raise ConfigError("chunks", f"missing {missing[:5]}, unexpected {extra[:5]}",
                          f"chunks 0..{num_chunks(n) - 1}, each once, for {n} samples")

    def stats_of(chunk_id: int) -> FeatureStats:
        value = merged.pop(chunk_id)  # dropped once added: memory falls as the merge proceeds
        return value if isinstance(value, FeatureStats) else FeatureStats.from_features(value)

    total = stats_of(0)
    for chunk_id in range(1, num_chunks(n)):
        total = total + stats_of(chunk_id)
    return total


def distributed_stats(plan: SamplePlan, sample_fn: SampleFn, extractor: Extractor, dst: int | None = None,
                      group=None) -> FeatureStats | None:
    """FeatureStats of all plan.n samples generated across a torch.distributed process group.

    Every rank generates and featurises its chunks; the per-chunk features are gathered (to every
    rank, or only to rank dst) and reduced there in chunk order. Features, not statistics, travel:
    a chunk of 250 Inception features is 2 MB, its (2048, 2048) float64 outer products 32 MiB.
    Returns the statistics where they were gathered, None on the other ranks. Every rank of the
    group must call this.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    mine = chunk_features(plan, chunks_for_rank(plan.n, rank, world), sample_fn, extractor)
    if dst is None:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine, group=group)
        return reduce(gathered, plan.n)
    gathered = [None] * world if rank == dst else None
    dist.gather_object(mine, gathered, dst=dst, group=group)
    return reduce(gathered, plan.n) if rank == dst else None
