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
    # RCGM runs every order; each first-order peer named here adds one row (order 1) per kappa.
    objectives: tuple[str, ...] = ("rcgm",)


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
    # Is the paradox about first order? Each first-order peer under the same target-model kappa,
    # beside RCGM's N=1 and N=2 (issue 16; docs/results.md).
    "first_order": GridSize(
        orders=(1, 2), kappas=(0.0, 0.9, 0.99, 0.999), seeds=(0, 1, 2),
        objectives=("rcgm", "meanflow", "shortcut", "consistency"),
        trial=dict(steps=10_000, eval_every=2000, nfe=(1, 2), lr=1e-3, batch_size=256),
        about="RCGM N=1,2 and the first-order peers meanflow, shortcut, consistency x 4 kappas x 3 seeds on Moons, 10k steps",
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
class Param:
    """One searched dimension: floats or integers from low to high (both included), on a log scale or not."""

    low: float
    high: float
    log: bool = False
    kind: type = float  # int: Optuna proposes integers (an IntDistribution), the trial gets a Python int

    def __post_init__(self):
        """Refuse a range Optuna could not sample (a mistake in this file, caught at import)."""
        if self.kind not in (float, int):
            raise ValueError(f"Param kind {self.kind!r}: float or int")
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"Param range {self.low}..{self.high}: low < high, and low > 0 on a log scale")
        if self.kind is int and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int Param range {self.low}..{self.high}: integer ends")


@dataclass(frozen=True)
class SearchSpace:
    """An Optuna search space: name -> Param, plus the fixed trial settings every trial shares.

    A name is a TrialConfig field ('lr', 'order'), 'time_params.<k>' (one time-schedule
    parameter), or 'one_minus_kappa' (sets kappa = 1 - value: kappa's useful values crowd
    towards 1, so a search spreads 1 - kappa on a log scale). trainables.tune_trial.apply_cell
    turns a sampled point into trial settings.
    """

    params: dict[str, Param]
    trial: dict = field(default_factory=dict)
    about: str = ""


SEARCHES = {
    # Beta(a, b) time schedule and learning rate for fixed order and kappa (UCGM's Beta sampler).
    "beta_schedule": SearchSpace(
        params={"time_params.a": Param(0.3, 3.0, log=True), "time_params.b": Param(0.3, 3.0, log=True),
                "lr": Param(2e-4, 5e-3, log=True)},
        trial=dict(time_schedule="beta", steps=4000, eval_every=500, eval_samples=1000, nfe=(1, 2)),
        about="Beta(a, b) time schedule and lr",
    ),
    "logit_normal_schedule": SearchSpace(
        params={"time_params.mu": Param(-1.5, 1.0), "time_params.sigma": Param(0.4, 2.0), "flow_fraction": Param(0.0, 0.75)},
        trial=dict(time_schedule="logit_normal", steps=4000, eval_every=500, eval_samples=1000, nfe=(1, 2)),
        about="MeanFlow's logit-normal (t, r) schedule and the share of r = t samples",
    ),
    "image_guidance": SearchSpace(
        params={"guidance": Param(0.0, 2.0), "lr": Param(2e-4, 3e-3, log=True)},
        trial=dict(task="mnist", steps=1500, eval_every=500, eval_samples=300, nfe=(1, 2), batch_size=32),
        about="training-time guidance strength and lr on MNIST",
    ),
    # The grid's two axes searched together with the Beta schedule, at the default Moons grid's trial
    # budget (GRIDS["default"].trial), so the best point compares with the grid's cells.
    "order_kappa": SearchSpace(
        params={"order": Param(1, 6, kind=int), "one_minus_kappa": Param(1e-4, 0.5, log=True),
                "time_params.a": Param(0.3, 3.0, log=True), "time_params.b": Param(0.3, 3.0, log=True)},
        trial={**GRIDS["default"].trial, "time_schedule": "beta"},
        about="order N in 1..6, 1 - kappa in 1e-4..0.5 (log) and Beta(a, b), at the default grid's budget",
    ),
}


def grid_cells(orders, kappas, seeds, objectives=("rcgm",)) -> list[dict]:
    """Every (objective, order, kappa, seed) cell.

    RCGM runs each order (flow matching, N=0, ignores kappa, so it runs once per seed); a
    first-order peer runs once per kappa and seed at order 1, whatever the orders. RCGM cells
    carry no objective key, so sweeps from before the peers keep their cells and names.
    """
    cells = []
    if "rcgm" in objectives:
        for order in orders:
            for kappa in ([min(kappas)] if order == 0 else kappas):
                for seed in seeds:
                    cells.append(_cell(order, kappa, seed))
    for objective in objectives:
        if objective == "rcgm":
            continue
        for kappa in kappas:
            for seed in seeds:
                cells.append({"objective": objective, **_cell(1, kappa, seed)})
    return cells


def _cell(order, kappa, seed) -> dict:
    """One RCGM cell, its values in the types TrialConfig expects."""
    return {"order": int(order), "kappa": float(kappa), "seed": int(seed)}


def cell_key(cell: dict) -> str:
    """A stable, filesystem-safe name for a cell: the trial's identity across resumes.

    N2-k0.999-s1 for RCGM; a peer's name leads instead of its order: meanflow-k0.999-s1.
    """
    peer = cell.get("objective", "rcgm") != "rcgm"
    parts = [cell["objective"] if peer else f"N{cell['order']}", f"k{cell['kappa']:g}", f"s{cell['seed']}"]
    skip = ("order", "kappa", "seed", "objective") if peer else ("order", "kappa", "seed")
    parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cell.items()) if k not in skip]
    return "-".join(parts)
