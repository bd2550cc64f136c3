"""Discrete-time consistency training in the style of Easy Consistency Tuning (Geng et al. 2024)."""

import torch

from trainables.rcgm import ranges
from trainables.rcgm.guidance import GuidedLabels
from trainables.rcgm.target import target_network
from trainables.rcgm.tensors import DeviceStats, evaluate, expand, per_sample_mse


class ConsistencyObjective:
    """L = mean || (f(x_t,t) - sg f-(x_t',t')) / (t-t') ||^2, f(x,s) = x - s F(x,s,0), t' = max(t - dt, 0)."""

    order = 1  # first order: one target jump from the adjacent time t' (method notes 2.2 (i))

    def __init__(self, delta_t: float = 0.01, guidance: float = 0.0, num_classes: int | None = None,
                 label_dropout: float | None = None):
        self.delta_t = ranges.DELTA_T.check("delta_t", delta_t)
        self.labels = GuidedLabels(guidance, num_classes, label_dropout)

    def residual(self, F: torch.Tensor, target, x_t, v, t, y=None) -> torch.Tensor:
        """e = (f_theta(x_t, t) - sg f-(x_t', t')) / (t - t'), with the gradient of F = F_theta(x_t, t, 0) kept.

        x_t' = x_t - (t - t') v: the same path's point t' z + (1-t') x when v = z - x (with guidance
        the guided velocity moves it, as it moves RCGM's Euler shift).
        """
        dt = self.delta_t
        t_prev = (t - dt).clamp_min(0.0)
        with torch.no_grad():
            x_prev = x_t - expand(t - t_prev, x_t) * v
            F_prev = evaluate(target_network(target), x_prev, t_prev, torch.zeros_like(t_prev), y)
        # f - f- = (x_t - x_t') - (t F - t' F-) = (t - t') v - (t F - t' F-): x_t cancels exactly, so
        # it is never subtracted from itself in floating point. Far from the data t - t' = dt.
        far = v - (expand(t, x_t) * F - expand(t_prev, x_t) * F_prev.detach()) / dt
        # t < dt: t' = 0 and f-(x_0', 0) = x_0' (the boundary condition f(x, 0) = x, no target call
        # needed); the step is t, and (f - f-)/t = v - F written out keeps t = 0 finite.
        near = expand((t < dt).to(x_t.dtype), x_t) > 0
        # This is RCGM N = 1 at r = 0 (notes 2.2 (i)): f - f- = -(t - t') xi, so e = -xi exactly; the
        # gradient differs only by the weight t / (t - t') and RCGM's clipping.
        return torch.where(near, v - F, far)

    def loss(self, model, target, x, z, t, r, y=None, generator=None) -> tuple[torch.Tensor, dict]:
        """Same signature as RCGMObjective.loss; r is ignored: the consistency function always jumps to r = 0.

        target: a TargetModel (or a bare module); None means the online model itself (kappa = 0).
        """
        target = model if target is None else target
        t = t.to(x.dtype)
        y = self.labels.drop(y, x, generator)
        x_t = expand(t, x) * z + (1 - expand(t, x)) * x
        v = self.labels.velocity(target_network(target), x_t, t, z - x, y)
        F = evaluate(model, x_t, t, torch.zeros_like(t), y)
        e = self.residual(F, target, x_t, v, t, y)
        # Plain squared distance, not ECT's pseudo-Huber: the loss stays a mean square of velocities like
        # RCGM's and the other peers', and e = -xi_RCGM holds for the loss itself. Pseudo-Huber's bound on
        # the gradient is the robustness RCGM gets from its clip, which no first-order peer uses, so the
        # peers and RCGM N = 1 differ in how the target is built, not in a robust metric.
        loss = per_sample_mse(e, torch.zeros_like(e))
        return loss, DeviceStats(loss=loss, xi_abs_mean=e.detach().abs().mean(),
                                 near_fraction=(t < self.delta_t).to(x.dtype).mean())
