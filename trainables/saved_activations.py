"""Bytes that autograd keeps for backward: the CPU stand-in for a peak-memory counter (trials and bench)."""

from __future__ import annotations

import torch


class SavedActivations:
    """Context manager summing the distinct storages that autograd saves for backward inside it.

    Storages are counted once each (an input saved by two ops, or a view of it, is one storage),
    and the storages of `exclude` (the model's parameters) are left out: those are resident
    whatever the objective, so only activations are counted.
    """

    def __init__(self, exclude=()):
        self.excluded = {self._key(p) for p in exclude}
        self.storages: dict[int, int] = {}
        self._hooks = None

    @staticmethod
    def _key(tensor: torch.Tensor) -> int:
        """A storage's identity while it is alive: its base address."""
        return tensor.untyped_storage().data_ptr()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Record the saved tensor's storage; keep the tensor itself (no offloading)."""
        # Forward-mode AD (MeanFlow's JVP) saves ZeroTensor tangents of the weights: no memory behind them.
        if tensor._is_zerotensor():
            return tensor
        key = self._key(tensor)
        if key not in self.excluded:
            self.storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    def __enter__(self) -> "SavedActivations":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct saved storages seen so far."""
        return sum(self.storages.values())
