"""A task's training tensors, drawn from on the device of the generator that draws the batch."""

from __future__ import annotations

import torch


class DevicePool:
    """Training tensors (rows first) with a copy per device, made on first use.

    A GPU trial's generator lives on the GPU: its batch indices are drawn there, and the rows are
    gathered from a device copy of the pool, so no training batch crosses the PCIe bus. The
    copy costs the pool's size in GPU memory once per process; a CPU trial uses the pool itself.
    """

    def __init__(self, *tensors: torch.Tensor | None):
        self._copies = {torch.device("cpu"): tensors}

    def draw(self, batch: int, generator: torch.Generator | None) -> tuple:
        """batch rows drawn with replacement, on the generator's device."""
        device = generator.device if generator is not None else torch.device("cpu")
        tensors = self._on(device)
        idx = torch.randint(len(tensors[0]), (batch,), generator=generator, device=device)
        return tuple(None if t is None else t[idx] for t in tensors)

    def _on(self, device: torch.device) -> tuple:
        """The pool on device, copied there the first time."""
        if device not in self._copies:
            cpu = self._copies[torch.device("cpu")]
            self._copies[device] = tuple(None if t is None else t.to(device) for t in cpu)
        return self._copies[device]
