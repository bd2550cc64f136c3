"""Task registry: point clouds for the paradox study, real digits for image sweeps."""

from trainables.rcgm.errors import ConfigError

POINT_TASKS = ("moons", "8gaussians", "checkerboard", "swissroll")
IMAGE_TASKS = ("mnist", "digits", "mnist-full", "cifar10")
TASK_NAMES = POINT_TASKS + IMAGE_TASKS


class DatasetUnavailable(RuntimeError):
    """A dataset cannot be loaded here; the message says what to do instead."""


def load_task(name: str, seed: int = 0):
    """Load the named task; its held-out reference set is fixed by seed."""
    if name in POINT_TASKS:
        from trainables.data.points import PointTask

        return PointTask(name, seed=seed)
    if name in IMAGE_TASKS:
        from trainables.data.images import load_image_task

        return load_image_task(name, seed=seed)
    raise ConfigError("task", name, "one of " + ", ".join(TASK_NAMES))
