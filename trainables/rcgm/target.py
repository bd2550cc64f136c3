"""The target model theta^- that the recursive jumps use, with decay kappa (method notes 1.6)."""

import copy

import torch

from trainables.rcgm import ranges


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under a DistributedDataParallel wrapper (a wrapper must not be copied)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def check_kappa(kappa) -> float:
    """kappa as a float if it is a decay in [0, 1] (0 = online model, 1 = frozen copy)."""
    return ranges.KAPPA.check("kappa", kappa)


def next_decay(c: float, kappa: float) -> float:
    """One step of the reference warm-up c <- c + (1 - c)(kappa - c)/2, started from c = 0."""
    return c + 0.5 * (1.0 - c) * (kappa - c)


class TargetModel:
    """kappa = 0: the online model itself; kappa = 1: frozen initial copy; else EMA with warm-up."""

    def __init__(self, online: torch.nn.Module, kappa: float):
        self.kappa = check_kappa(kappa)
        self.decay = 0.0  # the decay c the next update uses; c = 0 makes the first update a copy
        self.num_updates = 0
        online = unwrap(online)
        if self.kappa == 0.0:
            # No copy at all: the target *is* the online weights (forwards run under no_grad).
            self._module = online
        else:
            self._module = copy.deepcopy(online).requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        """The target network; callers run it under torch.no_grad()."""
        return self._module

    @torch.no_grad()
    def update(self, online: torch.nn.Module) -> None:
        """Move the target toward the online weights; call once per step, after optimizer.step()."""
        online = unwrap(online)
        self.num_updates += 1
        if self.kappa == 0.0:
            self._module = online
            return
        if self.kappa == 1.0:
            return  # frozen teacher: the initial weights forever
        c = self.decay
        # One foreach call per update, not a Python loop over tensors: on CUDA a few fused kernels.
        targets, sources = list(self._module.parameters()), [p.detach() for p in online.parameters()]
        if c == 0.0:
            torch._foreach_copy_(targets, sources)  # exact copy, not 0*p + 1*p_on (which keeps a NaN of p)
        else:
            torch._foreach_lerp_(targets, sources, 1.0 - c)
        buffers = list(self._module.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(online.buffers()))
        self.decay = next_decay(c, self.kappa)

    def state_dict(self) -> dict:
        """Everything needed to resume: kappa, the warm-up state and (unless kappa = 0) the weights."""
        weights = None if self.kappa == 0.0 else self._module.state_dict()
        return {"kappa": self.kappa, "decay": self.decay, "num_updates": self.num_updates, "module": weights}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict(); the kappa stored must match this object's."""
        if float(state["kappa"]) != self.kappa:
            raise ValueError(f"checkpoint has kappa={state['kappa']}, this target model kappa={self.kappa}")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        if state["module"] is not None:
            self._module.load_state_dict(state["module"])


def target_network(target) -> torch.nn.Module:
    """The callable network behind a TargetModel (or a bare module used as its own target)."""
    return target.module if isinstance(target, TargetModel) else target
