"""Task registry: point clouds for the paradox study, real digits for image sweeps."""

from functools import lru_cache

from trainables.rcgm.errors import ConfigError

POINT_TASKS = ("moons", "8gaussians", "checkerboard", "swissroll")
IMAGE_TASKS = ("mnist", "digits", "mnist-full", "cifar10")
TASK_NAMES = POINT_TASKS + IMAGE_TASKS
# `latents:<folder>` names a folder of latent shards written by trainables.data.build_latents.
LATENT_PREFIX = "latents:"


class DatasetUnavailable(RuntimeError):
    """A dataset cannot be loaded here; the message says what to do instead."""


def is_latent_task(name) -> bool:
    """True for a `latents:<folder>` task name."""
    return isinstance(name, str) and name.startswith(LATENT_PREFIX)


def load_task(name: str, seed: int = 0, rank: int = 0, world_size: int = 1):
    """Load the named task; its held-out reference set is fixed by seed.

    rank / world_size pick a latent task's disjoint training slice; other tasks ignore them.
    """
    if name in POINT_TASKS:
        return _point_task(name, seed)
    if name in IMAGE_TASKS:
        from trainables.data.images import load_image_task

        return load_image_task(name, seed=seed)
    if is_latent_task(name):
        from trainables.data.latent_task import LatentTask

        return LatentTask(name[len(LATENT_PREFIX):], seed=seed, rank=rank, world_size=world_size)
    raise ConfigError("task", name, "one of " + ", ".join(TASK_NAMES) + f" or {LATENT_PREFIX}<folder>")


@lru_cache(maxsize=8)
def _point_task(name: str, seed: int):
    """One PointTask per (name, seed) and process.

    Why: the preflight and the Trainer both load the task, and a reused Tune trial process
    runs many trials on the same pools; the pools are never written, so sharing them is safe.
    """
    from trainables.data.points import PointTask

    return PointTask(name, seed=seed)
