"""Shortcut models (Frans et al. 2024, "One Step Diffusion via Shortcut Models") on our (t, r) pairs."""

import torch

from trainables.rcgm.guidance import GuidedLabels
from trainables.rcgm.target import target_network
from trainables.rcgm.tensors import DeviceStats, evaluate, expand, per_sample_mse


class ShortcutObjective:
    """L = ||F(x_t,t,t) - v||^2 + [r < t] ||F(x_t,t,r) - sg((F-_1 + F-_2)/2)||^2: one jump vs two target half jumps."""

    order = 1  # first order: one self-consistency step, the target's two half jumps (method notes 2.2 (ii))

    def __init__(self, guidance: float = 0.0, num_classes: int | None = None, label_dropout: float | None = None):
        self.labels = GuidedLabels(guidance, num_classes, label_dropout)

    @torch.no_grad()
    def target_velocity(self, target, x_t, t, r, y=None) -> torch.Tensor:
        """u = (F1 + F2)/2: the average velocity of two chained target jumps t -> t-d -> r, d = (t-r)/2."""
        net = target_network(target)
        d = (t - r) / 2
        mid = t - d
        F1 = evaluate(net, x_t, t, mid, y)
        x_mid = x_t - expand(d, x_t) * F1  # where the first half jump lands
        F2 = evaluate(net, x_mid, mid, r, y)
        return (F1 + F2) / 2

    def loss(self, model, target, x, z, t, r, y=None, generator=None) -> tuple[torch.Tensor, dict]:
        """Same signature as RCGMObjective.loss; the self-consistency target comes from the target model.

        target: a TargetModel (or a bare module); None means the online model itself (kappa = 0).
        """
        target = model if target is None else target
        t, r = t.to(x.dtype), r.to(x.dtype)
        y = self.labels.drop(y, x, generator)
        x_t = expand(t, x) * z + (1 - expand(t, x)) * x
        v = self.labels.velocity(target_network(target), x_t, t, z - x, y)
        # Flow matching on every sample (Frans et al.'s d = 0 part): it anchors the recursion even
        # when the time schedule never draws r = t.
        F_fm = evaluate(model, x_t, t, t, y)
        fm = per_sample_mse(F_fm, v)
        F = evaluate(model, x_t, t, r, y)
        u = self.target_velocity(target, x_t, t, r, y)
        # Rows with r = t have no jump to be consistent about: where() gives them a zero term (no
        # gradient), so they get only flow matching.
        jump = expand((r < t).to(x.dtype), x) > 0
        sc = per_sample_mse(torch.where(jump, F, u), u)
        # Equal weights, plain sum: both terms are mean squares of velocities (the units RCGM's loss
        # has), and every row carries both, where Frans et al. split one batch into FM rows and
        # self-consistency rows (7:1); giving each row both keeps the self-consistency part from
        # being starved at small batches and needs no extra knob.
        loss = fm + sc
        return loss, DeviceStats(loss=loss, fm_loss=fm, sc_loss=sc,
                                 xi_abs_mean=torch.where(jump, F.detach() - u, torch.zeros_like(u)).abs().mean(),
                                 near_fraction=(~jump).to(x.dtype).mean())
