"""What each objective costs per training step, as a ratio to flow matching in the same process.

  python -m bench.objective                 # CPU: MLP (moons, batch 256), DiT-XS/4 and DiT-T/4 (1x28x28, batch 32)
  python -m bench.objective --quick         # MLP and DiT-XS/4, few rounds (seconds)
  python -m bench.objective --device cuda   # adds DiT-S/2 and DiT-B/2 on 4x32x32 latents
  python -m bench.objective --out /tmp/objective.json

Configurations are interleaved in rounds (the order rotates each round) and each ratio is the
median over rounds of (config time / flow-matching time in the same round), so load from other
processes on a shared machine hits both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from bench.machine import describe, machine_info, markdown_table
from trainables.saved_activations import SavedActivations

# name -> (per-sample shape, num_classes, batch): the method notes' Moons net and MNIST-sized / latent DiTs.
MODELS = {
    "mlp": ((2,), None, 256),
    "DiT-XS/4": ((1, 28, 28), 10, 32),
    "DiT-T/4": ((1, 28, 28), 10, 32),
    "DiT-S/2": ((4, 32, 32), 1000, 64),
    "DiT-B/2": ((4, 32, 32), 1000, 64),
}
DEFAULT_MODELS = {"cpu": ("mlp", "DiT-XS/4", "DiT-T/4"), "cuda": ("mlp", "DiT-T/4", "DiT-S/2", "DiT-B/2")}
QUICK_MODELS = ("mlp", "DiT-XS/4")
KAPPA = 0.999  # the sweeps' default: the target is an EMA copy, so every objective pays its update alike


@dataclass
class Objective:
    """One objective to measure and its FLOP-based expected cost relative to flow matching."""

    label: str
    name: str
    order: int | None
    expected: float


def objectives(max_order: int) -> list[Objective]:
    """Flow matching, RCGM N=1..max_order and the JVP MeanFlow baseline."""
    # Forward = 1 unit, backward = 2: FM is 3 units; RCGM adds N no-grad target forwards.
    out = [Objective("flow matching", "rcgm", 0, 1.0)]
    out += [Objective(f"RCGM N={n}", "rcgm", n, (3 + n) / 3) for n in range(1, max_order + 1)]
    # The JVP's tangent pass costs about one more forward (same matmuls on the tangents).
    out.append(Objective("MeanFlow (JVP)", "meanflow", None, 4 / 3))
    return out


@dataclass
class Setup:
    """A model, its EMA target, Adam and one fixed batch: everything a timed step touches."""

    model_name: str
    objective: Objective
    device: torch.device
    seed: int = 0
    kappa: float = KAPPA
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def __post_init__(self):
        from trainables.models import build_model
        from trainables.rcgm.registry import build_objective
        from trainables.rcgm.schedules import build_time_schedule
        from trainables.rcgm.target import TargetModel

        shape, num_classes, batch = MODELS[self.model_name]
        self.batch = batch
        torch.manual_seed(self.seed)  # same initial weights for every objective of a model
        self.model = build_model(self.model_name, shape, num_classes).to(self.device)
        self.target = TargetModel(self.model, self.kappa)
        self.loss_fn = build_objective(self.objective.name, order=self.objective.order or 0, num_classes=num_classes)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(self.seed + 1)
        self.x = torch.randn((batch, *shape), generator=gen).to(self.device)
        self.z = torch.randn((batch, *shape), generator=gen).to(self.device)
        t, r = build_time_schedule("uniform", {}, 0.0).sample(batch, gen, torch.device("cpu"))
        self.t, self.r = t.to(self.device), r.to(self.device)
        self.y = None if num_classes is None else torch.randint(num_classes, (batch,), generator=gen).to(self.device)

    def loss(self) -> torch.Tensor:
        """The objective's loss on the fixed batch (graph attached)."""
        loss, _ = self.loss_fn.loss(self.model, self.target, self.x, self.z, self.t, self.r, y=self.y)
        return loss

    def step(self) -> None:
        """One training step as the Trainer takes it: loss, backward, Adam, EMA target update."""
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.target.update(self.model)

    def saved_bytes(self) -> int:
        """Bytes of activations autograd saves for this objective's backward (parameters excluded)."""
        with SavedActivations(exclude=list(self.model.parameters())) as counter:
            loss = self.loss()
        del loss
        return counter.bytes

    def peak_bytes(self) -> tuple[int, int]:
        """(peak allocated during one step, of which above what was resident before it), CUDA only."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.step()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        return peak, peak - before


def seconds_per_step(setup: Setup, steps: int) -> float:
    """Mean wall time of `steps` consecutive steps (CUDA events on a GPU, so queued work is counted)."""
    if setup.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(setup.device)
        start.record()
        for _ in range(steps):
            setup.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / steps
    started = time.perf_counter()
    for _ in range(steps):
        setup.step()
    return (time.perf_counter() - started) / steps


def measure_model(model_name: str, device: torch.device, rounds: int, steps: int, warmup: int, max_order: int) -> list[dict]:
    """Interleaved timing rounds and memory for every objective on one model; rows for the table."""
    setups = [Setup(model_name, obj, device) for obj in objectives(max_order)]
    for setup in setups:
        for _ in range(warmup):
            setup.step()
    for i in range(rounds):
        # Rotate the order each round so no objective always runs right after a slow neighbour.
        order = setups[i % len(setups):] + setups[:i % len(setups)]
        for setup in order:
            setup.times.append(seconds_per_step(setup, steps))
        base = setups[0].times[-1]
        for setup in setups:
            setup.ratios.append(setup.times[-1] / base)
    rows = []
    fm = setups[0]
    fm_saved = fm.saved_bytes()
    fm_peak = fm.peak_bytes() if device.type == "cuda" else None
    for setup in setups:
        saved = setup.saved_bytes()
        row = {
            "model": model_name, "shape": list(MODELS[model_name][0]), "batch": setup.batch,
            "objective": setup.objective.label, "order": setup.objective.order,
            "ms_per_step": 1000 * statistics.median(setup.times),
            "ratio": statistics.median(setup.ratios), "expected": setup.objective.expected,
            # Other processes only ever add time, so the fastest round is the least disturbed one.
            "ms_per_step_min": 1000 * min(setup.times), "ratio_of_min": min(setup.times) / min(fm.times),
            "saved_bytes": saved, "saved_ratio": saved / fm_saved,
            "rounds": rounds, "steps_per_round": steps,
        }
        row["vs_expected"] = row["ratio"] / row["expected"]
        row["vs_expected_min"] = row["ratio_of_min"] / row["expected"]
        if fm_peak is not None:
            peak, transient = setup.peak_bytes()
            row.update(peak_bytes=peak, peak_ratio=peak / fm_peak[0], step_bytes=transient, step_ratio=transient / fm_peak[1])
        rows.append(row)
    return rows


def table(rows: list[dict], device: str) -> str:
    """The Markdown table of a run."""
    headers = ["model (batch)", "objective", "ms/step (median)", "x FM", "x FM (fastest rounds)", "FLOP exp.", "x exp. (median / fastest)", "saved act. MiB", "x FM"]
    if device.startswith("cuda"):
        headers += ["peak MiB", "x FM"]
    out = []
    for r in rows:
        cells = [f"{r['model']} ({r['batch']})", r["objective"], f"{r['ms_per_step']:.2f}", f"{r['ratio']:.2f}",
                 f"{r['ratio_of_min']:.2f}", f"{r['expected']:.2f}", f"{r['vs_expected']:.2f} / {r['vs_expected_min']:.2f}", f"{r['saved_bytes'] / 2**20:.2f}", f"{r['saved_ratio']:.2f}"]
        if "peak_bytes" in r:
            cells += [f"{r['peak_bytes'] / 2**20:.1f}", f"{r['peak_ratio']:.2f}"]
        out.append(cells)
    return markdown_table(headers, out)


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.objective", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="MLP and DiT-XS/4, 3 short rounds")
    parser.add_argument("--models", default=None, help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 15; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration per round (default: 20 MLP / 2 DiT on CPU, 10 on GPU)")
    parser.add_argument("--max-order", type=int, default=4, help="highest RCGM order N (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default %(default)s: steadier on a shared machine)")
    parser.add_argument("--out", default=None, help="also write the rows and the machine as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Measure, print the Markdown table, optionally write JSON."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    kind = "cuda" if device.type == "cuda" else "cpu"
    names = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else DEFAULT_MODELS[kind])
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"error: unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 15)
    info = machine_info(args.device)
    rows = []
    for name in names:
        # Short rounds on the CPU: more of them land in quiet moments of a shared machine.
        steps = args.steps or (2 if args.quick else (10 if kind == "cuda" else (20 if name == "mlp" else 2)))
        print(f"measuring {name}: {rounds} rounds x {steps} steps per objective ...", file=sys.stderr, flush=True)
        rows += measure_model(name, device, rounds, steps, warmup=2 if args.quick else 3, max_order=args.max_order)
    info["threads"] = torch.get_num_threads()
    memory_note = ("peak = torch.cuda.max_memory_allocated over one step (weights, Adam, EMA target included); "
                   if kind == "cuda" else "")
    print(f"\nObjective cost on {args.device} ({describe(info)}; torch threads {info['threads']})\n")
    print(table(rows, args.device))
    print(f"\nx FM: median over rounds of the per-round ratio to flow matching; fastest rounds: the ratio of each "
          f"configuration's fastest round to flow matching's (load only adds time). x exp.: x FM / FLOP exp. FLOP exp.: (3+N)/3 "
          f"(one forward+backward = 3 forwards, plus N no-grad target forwards; MeanFlow 4/3: the JVP tangent ~ one forward). "
          f"{memory_note}saved act.: bytes of the distinct storages autograd saves for backward during the loss "
          f"(saved_tensors_hooks; parameters excluded) - the CPU allocator has no peak counter.")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"benchmark": "objective", "device": args.device, "machine": info, "rows": rows}, fh, indent=2)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
