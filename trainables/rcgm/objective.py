"""The N-th order RCGM objective (method notes 1.4, 1.5, 1.7) and the objective registry."""

import torch

from trainables.rcgm.checks import check_choice, check_int, check_real
from trainables.rcgm.errors import ConfigError
from trainables.rcgm.target import TargetModel

PLACEMENTS = ("equal", "random")
OBJECTIVES = ("rcgm", "meanflow")


def expand(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) time as (B, 1, ..., 1) so it broadcasts against a batch like `like`."""
    return s.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims, then over the batch (the reference's l2_loss)."""
    return (a - b).pow(2).flatten(1).mean(dim=1).mean()


def target_network(target) -> torch.nn.Module:
    """The callable network behind a TargetModel (or a bare module used as its own target)."""
    return target.module if isinstance(target, TargetModel) else target


def _rand(shape, like: torch.Tensor, generator) -> torch.Tensor:
    """U(0,1) drawn on the generator's device, returned on like's device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device, like.dtype)


class GuidedLabels:
    """Label dropout to the null class and the training-time guided velocity (method notes 1.7)."""

    def __init__(self, guidance: float, num_classes, label_dropout):
        self.guidance = check_real("guidance", guidance, 0.0, 1e3)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1)
        if self.guidance > 0.0 and num_classes is None:
            raise ConfigError("guidance", guidance, "0.0 for an unconditional task (num_classes is None)")
        self.num_classes = num_classes
        # Guidance needs a learned null class, so it switches label dropout on by default.
        default = 0.1 if self.guidance > 0.0 else 0.0
        self.label_dropout = check_real("label_dropout", default if label_dropout is None else label_dropout,
                                        0.0, 1.0, high_open=True)

    def drop(self, y, like: torch.Tensor, generator):
        """y with a label_dropout share of its entries replaced by the null class num_classes."""
        if y is None or self.label_dropout == 0.0:
            return y
        keep = _rand(y.shape, like, generator) >= self.label_dropout
        return torch.where(keep, y, torch.full_like(y, self.num_classes))

    @torch.no_grad()
    def velocity(self, net, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, y) -> torch.Tensor:
        """v_g = v + w (F-(x_t,t,t|y) - F-(x_t,t,t|null)); plain v when guidance is off."""
        if self.guidance == 0.0:
            return v
        if y is None:
            raise ConfigError("guidance", self.guidance, "0.0 when batches carry no labels (y is None)")
        null = torch.full_like(y, self.num_classes)
        return v + self.guidance * (net(x_t, t, t, y) - net(x_t, t, t, null))


class RCGMObjective:
    """L = mean || F - sg(F) + clip(xi) ||^2 with xi the N-th order recursive consistency residual."""

    def __init__(self, order: int, delta_t: float = 0.01, clip: float = 1.0, placement: str = "equal",
                 guidance: float = 0.0, num_classes: int | None = None, label_dropout: float | None = None):
        self.order = check_int("order", order, 0)
        self.delta_t = check_real("delta_t", delta_t, 0.0, 1.0, low_open=True, high_open=True)
        # clip = inf switches clipping off (the JVP-equivalence test needs the raw residual).
        self.clip = check_real("clip", clip, 0.0, float("inf"), low_open=True, allow_inf=True)
        self.placement = check_choice("placement", placement, PLACEMENTS)
        self.labels = GuidedLabels(guidance, num_classes, label_dropout)

    def points(self, t1: torch.Tensor, r: torch.Tensor, generator) -> list[torch.Tensor]:
        """The N+1 times s_0 = t1 > s_1 > ... > s_N = r that the N target jumps connect."""
        n = self.order
        if self.placement == "equal":
            # The reference code: equally spaced between t1 and r.
            return [t1 + (r - t1) * (i / n) for i in range(n + 1)]
        # Hierarchical variant of the paper text: N-1 sorted uniform points inside (r, t1).
        u = torch.sort(_rand((t1.shape[0], n - 1), t1, generator), dim=1).values
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
            F_i = net(x_s, s[i], s[i + 1], y)
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
        F = model(x_t, t, r, y)
        if self.order == 0:
            # Exactly flow matching (no clipping), as the reference's estimate_order = 0 path.
            loss = per_sample_mse(F, v)
            return loss, _stats(loss, (F - v).detach(), torch.zeros(()), torch.ones(()))
        xi = self.residual(F, target, x_t, v, t, r, y, generator)
        clipped = xi.clamp(-self.clip, self.clip)
        loss = per_sample_mse(F, F.detach() - clipped)
        clip_fraction = (clipped != xi).to(xi.dtype).mean()
        return loss, _stats(loss, xi, clip_fraction, ((t - r) < self.delta_t).to(xi.dtype).mean())


def _stats(loss, xi, clip_fraction, near_fraction) -> dict:
    """Scalar diagnostics, moved to the host in one transfer."""
    values = torch.stack([loss.detach(), xi.abs().mean(), clip_fraction.to(xi), near_fraction.to(xi)]).tolist()
    return dict(zip(("loss", "xi_abs_mean", "clip_fraction", "near_fraction"), values))


def build_objective(name: str, **kw):
    """Build the named objective; RCGM-only keys are accepted and ignored for meanflow."""
    check_choice("objective", name, OBJECTIVES)
    if name == "rcgm":
        return RCGMObjective(**kw)
    from trainables.rcgm.meanflow import MeanFlowObjective

    # One config names both objectives, so order/delta_t/clip/placement are dropped here.
    for key in ("order", "delta_t", "clip", "placement"):
        kw.pop(key, None)
    return MeanFlowObjective(**kw)
