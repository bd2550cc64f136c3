"""2-D point-cloud tasks: fixed training and held-out pools made once from a seed."""

import numpy as np
import torch

from trainables.data.pools import DevicePool
from trainables.rcgm.errors import ConfigError

POOL_SIZE = 100_000  # training pool, resampled with replacement (the notes' Moons recipe)
REFERENCE_SIZE = 50_000  # held-out pool for metrics, never seen in training batches


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """sklearn's two moons with noise 0.05, unscaled (method notes 3.4), bit for bit.

    Written with numpy because importing sklearn.datasets costs ~1.2 s in every trial
    process (docs/benchmarks.md); tests/test_points.py checks equality with make_moons.
    """
    legacy = np.random.RandomState(int(rng.integers(2**31 - 1)))
    n_upper = n // 2
    upper = np.linspace(0, np.pi, n_upper)
    lower = np.linspace(0, np.pi, n - n_upper)
    x = np.concatenate([np.cos(upper), 1 - np.cos(lower)])
    y = np.concatenate([np.sin(upper), 1 - np.sin(lower) - 0.5])
    points = np.stack([x, y], axis=1)
    # Same draws in the same order as make_moons: a shuffle of the indices, then the noise.
    order = np.arange(n)
    legacy.shuffle(order)
    points = points[order]
    return points + legacy.normal(scale=0.05, size=points.shape)


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight N(c_k, 0.2^2 I) blobs with centres on the circle of radius 2."""
    angles = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + 0.2 * rng.standard_normal((n, 2))


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 dark squares of a 4x4 board covering [-2, 2]^2."""
    cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    pick = cells[rng.integers(0, len(cells), n)]
    return pick - 2.0 + rng.random((n, 2))


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    """A 2-D spiral theta (cos, sin)(theta) / 5, theta in [1.5 pi, 4.5 pi], noise 0.1."""
    theta = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    return np.stack([theta * np.cos(theta), theta * np.sin(theta)], axis=1) / 5.0 + 0.1 * rng.standard_normal((n, 2))


_MAKERS = {"moons": _moons, "8gaussians": _eight_gaussians, "checkerboard": _checkerboard, "swissroll": _swissroll}


class PointTask:
    """An unconditional 2-D task: batches with replacement from a training pool, metrics on a held-out pool."""

    kind = "points"
    shape = (2,)
    num_classes = None

    def __init__(self, name: str, seed: int = 0):
        if name not in _MAKERS:
            raise ConfigError("task", name, "one of " + ", ".join(_MAKERS))
        self.name = name
        self.seed = seed
        # Two independent streams from one seed: the held-out pool never overlaps the training one.
        train_ss, ref_ss = np.random.SeedSequence(seed).spawn(2)
        make = _MAKERS[name]
        self._pool = torch.from_numpy(make(POOL_SIZE, np.random.default_rng(train_ss))).float()
        self._reference = torch.from_numpy(make(REFERENCE_SIZE, np.random.default_rng(ref_ss))).float()
        self._training = DevicePool(self._pool)

    def sample(self, batch: int, generator: torch.Generator | None = None):
        """A training batch (x, None): batch points drawn with replacement from the training pool."""
        (x,) = self._training.draw(batch, generator)
        return x, None

    def reference(self, n: int, generator: torch.Generator | None = None):
        """(x, None): n held-out points, without replacement while n fits in the pool."""
        if n <= REFERENCE_SIZE:
            idx = torch.randperm(REFERENCE_SIZE, generator=generator)[:n]
        else:
            idx = torch.randint(0, REFERENCE_SIZE, (n,), generator=generator)
        return self._reference[idx], None
