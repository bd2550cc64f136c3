"""The task names and the data package's shared names, importable without torch or any dataset."""

POINT_TASKS = ("moons", "8gaussians", "checkerboard", "swissroll")
IMAGE_TASKS = ("mnist", "digits", "mnist-full", "cifar10")
TASK_NAMES = POINT_TASKS + IMAGE_TASKS
# `latents:<folder>` names a folder of latent shards written by trainables.data.build_latents.
LATENT_PREFIX = "latents:"
# Held-out images per image task (images.py draws them; the split is fixed): how many an evaluation can score.
IMAGE_HELD_OUT = {"mnist": 500, "digits": 300, "mnist-full": 10_000, "cifar10": 10_000}


class DatasetUnavailable(RuntimeError):
    """A dataset cannot be loaded here; the message says what to do instead."""


def is_latent_task(name) -> bool:
    """True for a `latents:<folder>` task name."""
    return isinstance(name, str) and name.startswith(LATENT_PREFIX)


def task_kind(name: str) -> str:
    """'points', 'images' or 'latents' for a task name (not checked: TrialConfig refuses unknown names)."""
    if is_latent_task(name):
        return "latents"
    return "points" if name in POINT_TASKS else "images"
