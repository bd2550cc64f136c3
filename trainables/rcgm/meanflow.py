"""MeanFlow's JVP objective (method notes 2.4), the baseline RCGM replaces with finite differences."""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainables.rcgm.guidance import GuidedLabels
from trainables.rcgm.target import target_network
from trainables.rcgm.tensors import DeviceStats, evaluate, expand, per_sample_mse


class MeanFlowObjective:
    """L = mean || F(x_t,t,r) - sg(v - (t-r) dF-/dt) ||^2, dF-/dt by torch.func.jvp of the target along (v, 1, 0)."""

    order = 1  # first order: a single (infinitesimal) recursion step, like RCGM N = 1 (method notes 2.2)

    def __init__(self, guidance: float = 0.0, num_classes: int | None = None, label_dropout: float | None = None):
        self.labels = GuidedLabels(guidance, num_classes, label_dropout)

    def loss(self, model, target, x, z, t, r, y=None, generator=None) -> tuple[torch.Tensor, dict]:
        """Same signature as RCGMObjective.loss; the tangent dF/dt comes from the target network.

        target: a TargetModel (or a bare module); None means the online model itself (kappa = 0).
        """
        target = model if target is None else target
        net = target_network(target)
        t, r = t.to(x.dtype), r.to(x.dtype)
        y = self.labels.drop(y, x, generator)
        x_t = expand(t, x) * z + (1 - expand(t, x)) * x
        v = self.labels.velocity(net, x_t, t, z - x, y)
        # Tangent (dx/dt, dt/dt, dr/dt) = (v, 1, 0): the total derivative along the path at fixed r.
        tangents = (v, torch.ones_like(t), torch.zeros_like(r))
        if net is model:
            # kappa = 0: one forward-mode pass of the online model gives F (with grad) and dF/dt.
            def average_velocity(x_in, t_in, r_in):
                return model(x_in, t_in, r_in, y)

            # SDPA's math kernel: the flash / memory-efficient ones have no forward-mode AD rule.
            with sdpa_kernel([SDPBackend.MATH]):
                F, dF_dt = torch.func.jvp(average_velocity, (x_t, t, r), tangents)
            F, dF_dt = F.to(x.dtype), dF_dt.to(x.dtype)  # fp32 target arithmetic under bf16 autocast
        else:
            # kappa > 0: F from the online model, the tangent from the target network (no graph kept).
            F = evaluate(model, x_t, t, r, y)

            def target_velocity(x_in, t_in, r_in):
                return net(x_in, t_in, r_in, y)

            with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
                _, dF_dt = torch.func.jvp(target_velocity, (x_t, t, r), tangents)
            dF_dt = dF_dt.to(x.dtype)
        target_u = (v - expand(t - r, x) * dF_dt).detach()
        loss = per_sample_mse(F, target_u)
        return loss, DeviceStats(loss=loss, xi_abs_mean=(F.detach() - target_u).abs().mean())
