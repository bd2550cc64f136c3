"""The N-th order RCGM objective (method notes 1.4, 1.5, 1.7)."""

import torch

from trainables.rcgm import ranges
from trainables.rcgm.guidance import GuidedLabels
from trainables.rcgm.target import target_network
from trainables.rcgm.tensors import DeviceStats, evaluate, expand, per_sample_mse, uniform_like

PLACEMENTS = ranges.PLACEMENT.choices


class RCGMObjective:
    """L = mean || F - sg(F) + clip(xi) ||^2 with xi the N-th order recursive consistency residual."""

    def __init__(self, order: int, delta_t: float = 0.01, clip: float = 1.0, placement: str = "equal",
                 guidance: float = 0.0, num_classes: int | None = None, label_dropout: float | None = None):
        self.order = ranges.ORDER.check("order", order)
        self.delta_t = ranges.DELTA_T.check("delta_t", delta_t)
        self.clip = ranges.CLIP.check("clip", clip)  # inf: no clipping
        self.placement = ranges.PLACEMENT.check("placement", placement)
        self.labels = GuidedLabels(guidance, num_classes, label_dropout)

    def points(self, t1: torch.Tensor, r: torch.Tensor, generator) -> list[torch.Tensor]:
        """The N+1 times s_0 = t1 > s_1 > ... > s_N = r that the N target jumps connect."""
        n = self.order
        if self.placement == "equal":
            # The reference code: equally spaced between t1 and r.
            return [t1 + (r - t1) * (i / n) for i in range(n + 1)]
        # Hierarchical variant of the paper text: N-1 sorted uniform points inside (r, t1).
        u = torch.sort(uniform_like((t1.shape[0], n - 1), t1, generator), dim=1).values
        inner = [t1 - (t1 - r) * u[:, i] for i in range(n - 1)]
        return [t1, *inner, r]

    @torch.no_grad()
    def residual(self, F: torch.Tensor, target, x_t, v, t, r, y=None, generator=None) -> torch.Tensor:
        """xi = [(t-r) F - sum of N target jumps from x_t - dt v down to r] / dt - v (unclipped)."""
        net = target_network(target)
        F = F.detach()
        if self.order == 0:
            return F - v
        dt = self.delta_t
        t1 = torch.maximum(t - dt, r)
        # Samples with t - r < dt have no room for a jump: their residual is flow matching's.
        near = (t - r) < dt
        s = self.points(t1, r, generator)
        x_s = x_t - dt * v  # the exact point of the conditional path at t - dt (Euler on x_t)
        D = torch.zeros_like(x_t)
        for i in range(self.order):
            step = expand(s[i] - s[i + 1], x_t)
            F_i = evaluate(net, x_s, s[i], s[i + 1], y)
            x_s = x_s - step * F_i  # chain: the next jump starts where this one landed
            D = D + step * F_i
        far_xi = (expand(t - r, x_t) * F - D) / dt - v
        # where() rather than a division by (t - r): r = t must never produce 0 * inf.
        return torch.where(near.reshape(-1, *([1] * (x_t.dim() - 1))), F - v, far_xi)

    def loss(self, model, target, x, z, t, r, y=None, generator=None) -> tuple[torch.Tensor, dict]:
        """The loss for data x, noise z and times (t, r); gradient flows only through model(x_t, t, r).

        target: a TargetModel (or a bare module); None means the online model itself (kappa = 0).
        """
        target = model if target is None else target
        t, r = t.to(x.dtype), r.to(x.dtype)
        if self.order == 0:
            r = t  # N = 0 is flow matching: F(x_t, t, t) regressed on v
        y = self.labels.drop(y, x, generator)
        x_t = expand(t, x) * z + (1 - expand(t, x)) * x
        v = self.labels.velocity(target_network(target), x_t, t, z - x, y)
        F = evaluate(model, x_t, t, r, y)
        if self.order == 0:
            # Exactly flow matching (no clipping), as the reference's estimate_order = 0 path.
            loss = per_sample_mse(F, v)
            return loss, _stats(loss, (F - v).detach(), torch.zeros(()), torch.ones(()))
        xi = self.residual(F, target, x_t, v, t, r, y, generator)
        clipped = xi.clamp(-self.clip, self.clip)
        loss = per_sample_mse(F, F.detach() - clipped)
        clip_fraction = (clipped != xi).to(xi.dtype).mean()
        return loss, _stats(loss, xi, clip_fraction, ((t - r) < self.delta_t).to(xi.dtype).mean())


def _stats(loss, xi, clip_fraction, near_fraction) -> DeviceStats:
    """Scalar diagnostics, left on the device until read."""
    return DeviceStats(loss=loss, xi_abs_mean=xi.abs().mean(), clip_fraction=clip_fraction.to(xi),
                       near_fraction=near_fraction.to(xi))

