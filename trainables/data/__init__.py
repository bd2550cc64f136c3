"""Task registry: point clouds for the paradox study, real digits for image sweeps, latent shards."""

from functools import lru_cache

from trainables.data.catalog import IMAGE_TASKS, LATENT_PREFIX, POINT_TASKS, TASK_NAMES, DatasetUnavailable, is_latent_task
from trainables.rcgm.errors import ConfigError

__all__ = ["IMAGE_TASKS", "LATENT_PREFIX", "POINT_TASKS", "TASK_NAMES", "DatasetUnavailable", "is_latent_task", "load_task"]


def load_task(name: str, seed: int = 0, rank: int = 0, world_size: int = 1):
    """Load the named task; its held-out reference set is fixed by seed.

    rank / world_size pick a latent task's disjoint training slice; other tasks ignore them.
    The loaders are imported here, not at the top: a point task must not pay for torchvision or pyarrow.
    """
    if name in POINT_TASKS:
        return _point_task(name, seed)
    if name in IMAGE_TASKS:
        return _image_task(name)
    if is_latent_task(name):
        from trainables.data.latent_task import LatentTask

        return LatentTask(name[len(LATENT_PREFIX):], seed=seed, rank=rank, world_size=world_size)
    raise ConfigError("task", name, "one of " + ", ".join(TASK_NAMES) + f" or {LATENT_PREFIX}<folder>")


# Why the caches: the preflight and the Trainer both load the task, and a reused Tune trial process
# runs many trials on the same pools (the bundled MNIST takes ~1.7 s to read); the pools are never
# written (batches are fresh tensors), so sharing them is safe.


@lru_cache(maxsize=8)
def _point_task(name: str, seed: int):
    """One PointTask per (name, seed) and process."""
    from trainables.data.points import PointTask

    return PointTask(name, seed=seed)


@lru_cache(maxsize=2)
def _image_task(name: str):
    """One ImageTask per name and process (its split is fixed, whatever the seed)."""
    from trainables.data.images import load_image_task

    return load_image_task(name)
