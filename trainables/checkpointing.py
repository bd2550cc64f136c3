"""Trial checkpoints: one state.pt per checkpoint, loaded with torch.load(weights_only=True)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

STATE_FILE = "state.pt"
PARTIAL_SUFFIX = ".partial"


def save_state(directory, trainer_state: dict, config: dict, best: dict[str, float]) -> Path:
    """Write the trainer state, the trial config and best-so-far metrics into directory.

    Written under a temporary name, then renamed: a write that fails half way (a full disk, a
    killed process) leaves no state.pt that looks whole. The folder is only handed to Ray after
    this returns, so the trial's latest checkpoint stays the previous one (tests/test_trial_ray.py).
    """
    path = Path(directory) / STATE_FILE
    partial = path.with_name(STATE_FILE + PARTIAL_SUFFIX)
    write({"trainer": trainer_state, "config": config, "best": dict(best)}, partial)
    os.replace(partial, path)
    return path


def write(state: dict, path: Path) -> None:
    """torch.save, behind a name of this module's (the fault test replaces it in a worker)."""
    torch.save(state, path)


def load_state(directory, map_location="cpu") -> dict:
    """Read a state written by save_state; weights_only refuses pickled code in a checkpoint."""
    return torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=True)


def checkpoint_index(path) -> int:
    """The number of a Tune checkpoint folder (checkpoint_000007 -> 7); -1 for any other name."""
    name = Path(str(path)).name
    digits = name.removeprefix("checkpoint_")
    return int(digits) if name.startswith("checkpoint_") and digits.isdigit() else -1


def newest_saved(trial_folder: Path) -> Path | None:
    """The newest checkpoint folder with a complete state file in a trial's folder on the storage, or None."""
    if not trial_folder.is_dir():
        return None
    found = [d for d in trial_folder.glob("checkpoint_*") if checkpoint_index(d) >= 0 and (d / STATE_FILE).is_file()]
    return max(found, key=checkpoint_index, default=None)


def restore_trainer(trainer, checkpoint, device) -> tuple[dict, int | None]:
    """Load a Ray/Tune checkpoint (or None) into trainer; returns (best metrics, step resumed from)."""
    if checkpoint is None:
        return {}, None
    with checkpoint.as_directory() as d:
        state = load_state(d, map_location=device)
    trainer.load_state_dict(state["trainer"])
    return state["best"], trainer.step
