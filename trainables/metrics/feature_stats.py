"""Gaussian sufficient statistics of features, the Frechet distance between them, and their cache files.

`FeatureStats` holds (count, sum, sum of outer products) in float64: merging two is addition,
so statistics computed in pieces (chunks, workers) combine into exactly what one pass gives,
and a score over many samples never needs all their features in memory at once.

The cache keys statistics by what they were computed from (the images' bytes, the extractor's
weights file, its input resolution), so a changed reference set or network can never be served
stale numbers. It lives here, below the scorers, so both `frechet.py` and the
`reference_stats` command can use it without importing each other.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.locations import cache_dir
from trainables.rcgm.errors import ConfigError

STATS_FOLDER = "fid_stats"  # <cache>/fid_stats/<key>.pt
STATS_VERSION = 1  # part of every key: bump when the file layout or the canonical image order changes


# --------------------------------------------------------------------------------------------
# The Frechet distance between two Gaussian fits
# --------------------------------------------------------------------------------------------

def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (eigenvalues clipped at 0)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), in float64.

    tr((S1 S2)^1/2) equals tr((A S2 A)^1/2) with A = S1^1/2; the latter is symmetric PSD, so a
    symmetric eigendecomposition gives it without the complex round-off scipy's sqrtm can leave.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    a = sqrt_psd(s1)
    vals = np.linalg.eigvalsh((a @ s2 @ a + (a @ s2 @ a).T) / 2)
    tr_cross = np.sqrt(np.clip(vals, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_cross)


# --------------------------------------------------------------------------------------------
# Sufficient statistics
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureStats:
    """count, sum (D,) and sum of outer products (D, D) of N feature vectors, all float64."""

    count: int
    total: torch.Tensor  # (D,) float64: sum of the features
    outer: torch.Tensor  # (D, D) float64: sum of f f^T

    @classmethod
    def from_features(cls, features: torch.Tensor) -> FeatureStats:
        """Statistics of an (N, D) feature tensor."""
        if features.ndim != 2:
            raise ConfigError("features", tuple(features.shape), "an (N, D) tensor: one feature vector per row")
        f = features.detach().cpu().double()
        return cls(len(f), f.sum(0), f.T @ f)

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.total.shape[0])

    def __add__(self, other: FeatureStats) -> FeatureStats:
        """The statistics of both sets together."""
        if not isinstance(other, FeatureStats):
            return NotImplemented
        if other.dim != self.dim:
            raise ConfigError("features", other.dim, f"{self.dim}-d like the statistics they are merged with")
        return FeatureStats(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def mean(self) -> np.ndarray:
        """Mean feature vector (D,), float64."""
        self._require(1)
        return (self.total / self.count).numpy()

    def covariance(self) -> np.ndarray:
        """Unbiased (n - 1) covariance (D, D), float64: what np.cov(features, rowvar=False) gives."""
        self._require(2)
        mu = self.total / self.count
        # sum (f - mu)(f - mu)^T = sum f f^T - n mu mu^T; float64 keeps the cancellation harmless for
        # features of order one (Inception, classifier and latent features all are).
        return ((self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)).numpy()

    def frechet(self, other: FeatureStats) -> float:
        """Frechet distance between the Gaussian fits of these statistics and other's."""
        return frechet_distance(self.mean(), self.covariance(), other.mean(), other.covariance())

    def _require(self, n: int) -> None:
        if self.count < n:
            raise ConfigError("samples", self.count, f"at least {n} feature vectors for this statistic")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors only: loadable with torch.load(weights_only=True)."""
        return {"count": torch.tensor(self.count, dtype=torch.int64), "total": self.total, "outer": self.outer}

    @classmethod
    def from_tensors(cls, blob: dict[str, torch.Tensor]) -> FeatureStats:
        """Inverse of to_tensors."""
        return cls(int(blob["count"]), blob["total"].double(), blob["outer"].double())

    def save(self, path: str | Path) -> None:
        """Write to path atomically (temporary file, then rename): readers never see half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save(self.to_tensors(), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read a file written by save()."""
        return cls.from_tensors(torch.load(path, map_location="cpu", weights_only=True))


# --------------------------------------------------------------------------------------------
# Digests and the statistics cache
# --------------------------------------------------------------------------------------------

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def canonical_order(images: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The images as float32 contiguous CPU tensors sorted by their per-image sha256, and a sha256 of the set.

    The sort makes the digest and the statistics depend on the set of images, not on the order a
    generator drew them in: the same reference set always finds the same cache file. Sorting
    32-byte digests, not the images, keeps memory at one copy of the images.
    """
    x = images.detach().to("cpu", torch.float32).contiguous()
    digests = [hashlib.sha256(img.numpy().tobytes()).digest() for img in x]
    order = sorted(range(len(digests)), key=digests.__getitem__)
    whole = hashlib.sha256(f"float32 NCHW {tuple(x.shape)}".encode())
    for i in order:
        whole.update(digests[i])
    return x[order], whole.hexdigest()


def images_sha256(images: torch.Tensor) -> str:
    """sha256 of a set of images: their shape and float32 bytes, independent of their order."""
    return canonical_order(images)[1]


def stats_key(images_digest: str, extractor_sha256: str, resolution: int) -> str:
    """The cache key: a sha256 over the images' digest, the extractor's weights digest and its input resolution."""
    text = f"rcgm-fid-stats v{STATS_VERSION}|images {images_digest}|extractor {extractor_sha256}|resolution {resolution}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """Where a set's statistics live and whether this call found them there."""

    key: str
    path: Path
    hit: bool


def stats_path(key: str, root: Path | None = None) -> Path:
    """<cache>/fid_stats/<key>.pt."""
    return (root or cache_dir()) / STATS_FOLDER / f"{key}.pt"


def cached_stats(images: torch.Tensor, extractor, root: Path | None = None) -> tuple[FeatureStats, CacheEntry]:
    """Statistics of extractor(images), read from the cache when present, else computed and written.

    extractor: a callable (N, C, H, W) in [-1, 1] -> (N, D) with `sha256` (its weights) and
    `resolution` (the size it resizes to) attributes.
    """
    ordered, digest = canonical_order(images)
    key = stats_key(digest, extractor.sha256, extractor.resolution)
    path = stats_path(key, root)
    if path.exists():
        return FeatureStats.load(path), CacheEntry(key, path, hit=True)
    stats = FeatureStats.from_features(extractor(ordered))
    stats.save(path)
    return stats, CacheEntry(key, path, hit=False)
