"""Named sweep sizes and search spaces, in one place: a new sweep is a short new entry here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GridSize:
    """A kappa x order x seed grid and the trial settings that go with it."""

    orders: tuple[int, ...]
    kappas: tuple[float, ...]
    seeds: tuple[int, ...]
    trial: dict = field(default_factory=dict)
    about: str = ""


# The paper's Moons study (method notes 3.4): MLP width 128, Adam 1e-3, batch 256.
# `default` is sized to finish in about 5 minutes on a 2-core machine (5.2 min measured) and still show the paradox.
GRIDS = {
    "default": GridSize(
        orders=(0, 1, 2, 3, 4), kappas=(0.0, 0.9, 0.99, 0.999), seeds=(0, 1),
        trial=dict(steps=10_000, eval_every=2000, nfe=(1, 2), lr=1e-3, batch_size=256),
        about="the paper's Moons kappa x N study, 2 seeds, 10k steps (~5 min on 2 cores)",
    ),
    "paper": GridSize(
        orders=(0, 1, 2, 3, 4), kappas=(0.0, 0.9, 0.99, 0.999), seeds=(0, 1, 2, 3, 4),
        trial=dict(steps=20_000, eval_every=2000, nfe=(1, 2, 4), lr=1e-3, batch_size=256),
        about="the method notes' recipe: 5 seeds, 20k steps, 1/2/4 NFE (~25-30 min on 2 cores, estimated)",
    ),
    "smoke": GridSize(
        orders=(1, 2), kappas=(0.9, 0.999), seeds=(0,),
        trial=dict(steps=300, eval_every=150, eval_samples=300, nfe=(1, 2), lr=1e-3, batch_size=128),
        about="2 orders x 2 kappas, 300 steps: an end-to-end check in about a minute",
    ),
    # 10k steps of batch 64 is where DiT-XS/4 starts drawing recognisable 1-NFE digits on CPU;
    # 1.5k steps of batch 32 gave strokes (docs/results.md).
    "mnist": GridSize(
        orders=(1, 2), kappas=(0.9, 0.999), seeds=(0,),
        # eval_samples is left to auto: 500 for mnist, the 300 held-out digits for `--task digits`.
        trial=dict(task="mnist", model="DiT-XS/4", steps=10_000, eval_every=2500, checkpoint_every=2500,
                   nfe=(1, 2), lr=2e-3, batch_size=64, guidance=0.5, flow_fraction=0.25),
        about="class-conditional MNIST (bundled 5000 digits), DiT-XS/4, 10k steps, fd at 1 and 2 NFE: "
              "recognisable 1-NFE digits (~40 min on 2 cores)",
    ),
}


@dataclass(frozen=True)
class SearchSpace:
    """An Optuna search space: name -> (low, high, log scale) plus fixed trial settings."""

    params: dict
    trial: dict = field(default_factory=dict)
    about: str = ""


SEARCHES = {
    # Beta(a, b) time schedule and learning rate for fixed order and kappa (UCGM's Beta sampler).
    "beta_schedule": SearchSpace(
        params={"time_params.a": (0.3, 3.0, True), "time_params.b": (0.3, 3.0, True), "lr": (2e-4, 5e-3, True)},
        trial=dict(time_schedule="beta", steps=4000, eval_every=500, eval_samples=1000, nfe=(1, 2)),
        about="Beta(a, b) time schedule and lr",
    ),
    "logit_normal_schedule": SearchSpace(
        params={"time_params.mu": (-1.5, 1.0, False), "time_params.sigma": (0.4, 2.0, False), "flow_fraction": (0.0, 0.75, False)},
        trial=dict(time_schedule="logit_normal", steps=4000, eval_every=500, eval_samples=1000, nfe=(1, 2)),
        about="MeanFlow's logit-normal (t, r) schedule and the share of r = t samples",
    ),
    "image_guidance": SearchSpace(
        params={"guidance": (0.0, 2.0, False), "lr": (2e-4, 3e-3, True)},
        trial=dict(task="mnist", steps=1500, eval_every=500, eval_samples=300, nfe=(1, 2), batch_size=32),
        about="training-time guidance strength and lr on MNIST",
    ),
}


def grid_cells(orders, kappas, seeds) -> list[dict]:
    """Every (order, kappa, seed) cell; flow matching (N=0) ignores kappa, so it runs once per seed."""
    cells = []
    for order in orders:
        for kappa in ([min(kappas)] if order == 0 else kappas):
            for seed in seeds:
                cells.append({"order": int(order), "kappa": float(kappa), "seed": int(seed)})
    return cells


def cell_key(cell: dict) -> str:
    """A stable, filesystem-safe name for a cell: the trial's identity across resumes."""
    parts = [f"N{cell['order']}", f"k{cell['kappa']:g}", f"s{cell['seed']}"]
    parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cell.items()) if k not in ("order", "kappa", "seed")]
    return "-".join(parts)
