"""What each objective costs per training step, as a ratio to flow matching in the same process.

  python -m bench.objective                 # CPU: MLP (moons, batch 256), DiT-XS/4 and DiT-T/4 (1x28x28, batch 32)
  python -m bench.objective --quick         # MLP and DiT-XS/4, few rounds (seconds)
  python -m bench.objective --device cuda   # DiT-B/2 and DiT-XL/2 on 4x32x32 latents (batch 64), bf16 + SDPA
  python -m bench.objective --compare       # bf16 + SDPA (+ --compile) against fp32 + math eager, side by side
  python -m bench.objective --device cuda --max-batch   # the largest batch of FM, RCGM N=2 and MeanFlow per model
  python -m bench.objective --out /tmp/objective.json

Configurations are interleaved in rounds (the order rotates each round) and each ratio is the
median over rounds of (config time / flow-matching time in the same round), so load from other
processes on a shared machine hits both sides of a ratio alike. --compare adds the two variants
to the same rounds, so their speed-up is also a ratio from one run.

Every row carries the step's FLOPs, counted once per objective and variant with
trainables.cost.count_flops over one loss + backward, as trainables.cost.measure_step_cost counts
a trial's step (the N target forwards are work too), and from them TFLOP/s and, on a GPU of
known peak, MFU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from bench.machine import describe, machine_info, markdown_table
from trainables import acceleration
from trainables.config import ATTENTIONS, PRECISIONS
from trainables.cost import count_training_step, device_name, peak_tflops
from trainables.saved_activations import SavedActivations

# name -> (per-sample shape, num_classes, batch): the method notes' Moons net and MNIST-sized / latent DiTs.
MODELS = {
    "mlp": ((2,), None, 256),
    "DiT-XS/4": ((1, 28, 28), 10, 32),
    "DiT-T/4": ((1, 28, 28), 10, 32),
    "DiT-S/2": ((4, 32, 32), 1000, 64),
    "DiT-B/2": ((4, 32, 32), 1000, 64),
    "DiT-XL/2": ((4, 32, 32), 1000, 64),
}
DEFAULT_MODELS = {"cpu": ("mlp", "DiT-XS/4", "DiT-T/4"), "cuda": ("DiT-B/2", "DiT-XL/2")}
QUICK_MODELS = ("mlp", "DiT-XS/4")
KAPPA = 0.999  # the sweeps' default: the target is an EMA copy, so every objective pays its update alike
MAX_BATCH_OBJECTIVES = ("flow matching", "RCGM N=2", "MeanFlow (JVP)")
MAX_BATCH_LIMIT = 1 << 16  # --max-batch stops doubling here (reported as capped)


@dataclass
class Objective:
    """One objective to measure and its FLOP-based expected cost relative to flow matching."""

    label: str
    name: str
    order: int | None
    expected: float


def objectives(max_order: int) -> list[Objective]:
    """Flow matching, RCGM N=1..max_order and the first-order peers (MeanFlow, shortcut, consistency)."""
    # Forward = 1 unit, backward = 2: FM is 3 units; RCGM adds N no-grad target forwards.
    out = [Objective("flow matching", "rcgm", 0, 1.0)]
    out += [Objective(f"RCGM N={n}", "rcgm", n, (3 + n) / 3) for n in range(1, max_order + 1)]
    # At the EMA target (KAPPA > 0): the online forward + backward (3) plus the target's JVP, which
    # the FLOP counter puts at about three forwards (primal, tangent and the products between them).
    out.append(Objective("MeanFlow (JVP)", "meanflow", None, 6 / 3))
    # Flow matching and the jump, each with its backward (6), plus two target half-jumps.
    out.append(Objective("shortcut", "shortcut", None, 8 / 3))
    # One online forward + backward and one target forward at the adjacent time: RCGM N=1's work.
    out.append(Objective("consistency (ECT)", "consistency", None, 4 / 3))
    return out


@dataclass(frozen=True)
class Variant:
    """How a step runs: forward precision, the DiTs' attention kernel, torch.compile or eager."""

    precision: str
    attention: str
    compile: bool = False

    @property
    def label(self) -> str:
        """E.g. 'bf16 + sdpa + compile' or 'fp32 + math eager'."""
        return f"{self.precision} + {self.attention}" + (" + compile" if self.compile else " eager")


def compared_variants(compile: bool) -> tuple[Variant, Variant]:
    """--compare: the GPU-grade path, then the plain one it is measured against (the reference, last)."""
    return Variant("bf16", "sdpa", compile), Variant("fp32", "math")


class Replica:
    """One model in one variant: network, EMA target and Adam, shared by every objective measured on it.

    Sharing keeps one copy of the weights and optimizer state per variant on the device (a
    DiT-XL/2 with Adam and its EMA copy is ~11 GB) and compiles each network once.
    """

    def __init__(self, model_name: str, variant: Variant, device: torch.device, seed: int = 0, kappa: float = KAPPA):
        from trainables.models import build_model
        from trainables.rcgm.target import TargetModel

        self.model_name, self.variant, self.device = model_name, variant, device
        self.shape, self.num_classes, self.batch = MODELS[model_name]
        acceleration.configure_device(device)
        # What was allocated before this replica: its steps' peaks are counted above it.
        self.base_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        torch.manual_seed(seed)  # same initial weights for every variant of a model
        # Initialised on the device: a DiT-XL/2 takes ~20 s to initialise on one CPU thread.
        with device:
            self.model = build_model(model_name, self.shape, self.num_classes, attention=variant.attention)
        self.target = TargetModel(self.model, kappa)
        self.optimizer = acceleration.build_optimizer(self.model.parameters(), 1e-4, device)

    def compile(self) -> None:
        """torch.compile the network and its EMA copy when the variant asks (after counting: the counter cannot see compiled graphs)."""
        if self.variant.compile:
            acceleration.compile_model(self.model)
            if self.target.module is not self.model:
                acceleration.compile_model(self.target.module)

    def release(self) -> None:
        """Free what a failed step left: its gradients and the allocator's cached blocks."""
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()  # the failed step's frames hold its activations until collected
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class Setup:
    """One objective on a replica with one fixed batch: everything a timed step touches."""

    replica: Replica
    objective: Objective
    batch: int | None = None  # None: the model's batch in MODELS
    seed: int = 0
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    speedups: list[float] = field(default_factory=list)
    flops: int | None = None
    saved: int | None = None
    peak: tuple[int, int] | None = None
    out_of_memory: bool = False

    def __post_init__(self):
        from trainables.rcgm.registry import build_objective

        self.loss_fn = build_objective(self.objective.name, order=self.objective.order or 0, num_classes=self.replica.num_classes)
        self.draw(self.batch or self.replica.batch)

    def draw(self, batch: int) -> None:
        """Fix the batch of `batch` samples, drawn on the CPU so every device and variant sees the same one."""
        from trainables.rcgm.schedules import build_time_schedule

        shape, device = self.replica.shape, self.replica.device
        self.batch = batch
        gen = torch.Generator().manual_seed(self.seed + 1)
        self.x = torch.randn((batch, *shape), generator=gen).to(device)
        self.z = torch.randn((batch, *shape), generator=gen).to(device)
        t, r = build_time_schedule("uniform", {}, 0.0).sample(batch, gen, torch.device("cpu"))
        self.t, self.r = t.to(device), r.to(device)
        num_classes = self.replica.num_classes
        self.y = None if num_classes is None else torch.randint(num_classes, (batch,), generator=gen).to(device)

    def loss(self) -> torch.Tensor:
        """The objective's loss on the fixed batch under the variant's autocast (graph attached)."""
        rep = self.replica
        with acceleration.autocast(rep.device, rep.variant.precision):
            loss, _ = self.loss_fn.loss(rep.model, rep.target, self.x, self.z, self.t, self.r, y=self.y)
        return loss

    def step(self) -> None:
        """One training step as the Trainer takes it: loss, backward, Adam, EMA target update."""
        rep = self.replica
        loss = self.loss()
        rep.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rep.optimizer.step()
        rep.target.update(rep.model)

    def count(self) -> None:
        """Counted FLOPs of one loss + backward and the activations it saves (eager model, before any compile)."""
        self.flops = count_training_step(self.loss, self.replica.model, self.replica.device)  # as a trial counts
        self.saved = self.saved_bytes()

    def warm_up(self, steps: int) -> None:
        """Untimed steps first: the first ones pay for compiling, cuDNN / cuBLAS heuristics and Adam's state."""
        for _ in range(steps):
            self.step()

    def saved_bytes(self) -> int:
        """Bytes of activations autograd saves for this objective's backward (parameters excluded)."""
        with SavedActivations(exclude=list(self.replica.model.parameters())) as counter:
            loss = self.loss()
        del loss
        return counter.bytes

    def peak_bytes(self) -> tuple[int, int]:
        """(peak allocated during one step above what was there before the replica, of which above what was resident before the step), CUDA only."""
        device = self.replica.device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        self.step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - self.replica.base_bytes, peak - before

    def measure_peak(self) -> None:
        """Keep peak_bytes() of one step (CUDA only)."""
        self.peak = self.peak_bytes()


def unless_out_of_memory(setup: Setup, work) -> None:
    """Run work() for a setup still in the race; on torch.cuda.OutOfMemoryError mark it and free the try."""
    if setup.out_of_memory:
        return
    try:
        work()
    except torch.cuda.OutOfMemoryError:
        setup.out_of_memory = True
    if setup.out_of_memory:
        setup.replica.release()  # out here: inside the except clause the error still holds the failed step's frames


def seconds_per_step(setup: Setup, steps: int) -> float:
    """Mean wall time of `steps` consecutive steps (CUDA events on a GPU, so queued work is counted)."""
    if setup.replica.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(setup.replica.device)
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


def prepare(replica: Replica, objs: list[Objective], warmup: int) -> list[Setup]:
    """Every objective on one replica: FLOPs and saved bytes (eager), compile, warm-up, CUDA peak memory.

    Runs before the next variant's replica is built, so a peak holds this replica's state alone.
    A setup whose step runs out of GPU memory is kept as such and left out of the timing.
    """
    setups = [Setup(replica, obj) for obj in objs]
    for setup in setups:
        unless_out_of_memory(setup, setup.count)
    replica.compile()
    for setup in setups:
        unless_out_of_memory(setup, lambda: setup.warm_up(warmup))
    if replica.device.type == "cuda":
        for setup in setups:
            unless_out_of_memory(setup, setup.measure_peak)
    return setups


def time_rounds(groups: list[list[Setup]], rounds: int, steps: int) -> None:
    """Interleaved timing rounds; per round, each setup's ratio to its variant's FM and speed-up over the reference."""
    live = [s for group in groups for s in group if not s.out_of_memory]
    reference = groups[-1]
    for i in range(rounds if live else 0):
        # Rotate the order each round so no configuration always runs right after a slow neighbour.
        order = live[i % len(live):] + live[:i % len(live)]
        for setup in order:
            setup.times.append(seconds_per_step(setup, steps))
        for group in groups:
            for j, setup in enumerate(group):
                if setup.times and group[0].times:
                    setup.ratios.append(setup.times[-1] / group[0].times[-1])
                if len(groups) > 1 and setup.times and reference[j].times:
                    setup.speedups.append(reference[j].times[-1] / setup.times[-1])


def median_or_none(values: list[float]) -> float | None:
    """The median, or None for a configuration that never ran."""
    return statistics.median(values) if values else None


def row(setup: Setup, fm: Setup, reference: Setup | None, rounds: int, steps: int) -> dict:
    """One table row: times and ratios, counted FLOPs and their rates, memory, speed-up over the reference."""
    rep, obj = setup.replica, setup.objective
    variant = rep.variant
    out = {
        "model": rep.model_name, "shape": list(rep.shape), "batch": setup.batch,
        "objective": obj.label, "order": obj.order, "expected": obj.expected,
        "variant": variant.label, **dataclasses.asdict(variant),  # precision, attention, compile
        "attention_ran": acceleration.attention_label(variant.attention, rep.model_name, obj.name),
        "rounds": rounds, "steps_per_round": steps, "out_of_memory": setup.out_of_memory,
    }
    if setup.out_of_memory:
        return out
    seconds = statistics.median(setup.times)
    peak = peak_tflops(device_name(rep.device), variant.precision)
    out.update({
        "ms_per_step": 1000 * seconds, "ms_per_step_min": 1000 * min(setup.times),
        "images_per_s": setup.batch / seconds,
        "ratio": median_or_none(setup.ratios),
        # Other processes only ever add time, so the fastest round is the least disturbed one.
        "ratio_of_min": min(setup.times) / min(fm.times) if fm.times else None,
        "flops_per_step": setup.flops, "flops_ratio": setup.flops / fm.flops if fm.flops else None,
        "tflops_per_s": setup.flops / seconds / 1e12, "peak_tflops": peak,
        "saved_bytes": setup.saved, "saved_ratio": setup.saved / fm.saved if fm.saved else None,
    })
    out["mfu"] = out["tflops_per_s"] / peak if peak else None
    out["vs_expected"] = out["ratio"] / obj.expected if out["ratio"] is not None else None
    out["vs_expected_min"] = out["ratio_of_min"] / obj.expected if out["ratio_of_min"] is not None else None
    if reference is not None:
        out["speedup"] = median_or_none(setup.speedups)
        out["speedup_of_min"] = min(reference.times) / min(setup.times) if reference.times else None
    if setup.peak is not None:
        peak_bytes, step_bytes = setup.peak
        fm_peak = fm.peak or (None, None)
        out.update(peak_bytes=peak_bytes, step_bytes=step_bytes,
                   peak_ratio=peak_bytes / fm_peak[0] if fm_peak[0] else None,
                   step_ratio=step_bytes / fm_peak[1] if fm_peak[1] else None)
    return out


def measure_model(model_name: str, device: torch.device, variants: list[Variant], rounds: int, steps: int, warmup: int,
                  max_order: int) -> list[dict]:
    """Every objective in every variant on one model, timed in the same rounds; rows, objectives side by side."""
    gc.collect()  # the previous model's replicas must be gone before this one's base is read
    if device.type == "cuda":
        torch.cuda.empty_cache()
    objs = objectives(max_order)
    groups = [prepare(Replica(model_name, v, device), objs, warmup) for v in variants]
    time_rounds(groups, rounds, steps)
    compare = len(groups) > 1
    return [row(group[j], group[0], groups[-1][j] if compare else None, rounds, steps)
            for j in range(len(objs)) for group in groups]


def largest_batch(fits, start: int, limit: int = MAX_BATCH_LIMIT) -> int:
    """The largest batch b <= limit with fits(b), by doubling (or halving) from start then bisecting to 1 %; 0 if none."""
    lo, hi = 0, limit + 1  # lo fits (0 trivially), hi does not (past the limit)
    b = min(start, limit)
    while lo < b < hi:
        if fits(b):
            lo, b = b, min(2 * b, limit)
        else:
            hi, b = b, b // 2
    # 1 %: fine enough to compare N = 2 with flow matching against the 1.05x memory target.
    while hi - lo > max(1, lo // 100):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fits_one_step(setup: Setup, batch: int) -> bool:
    """Whether one training step at this batch runs without torch.cuda.OutOfMemoryError."""
    # Each try starts as a training loop's step does: the last step's gradients resident.
    for p in setup.replica.model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    try:
        setup.draw(batch)
        setup.step()
        torch.cuda.synchronize(setup.replica.device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        setup.replica.release()  # gradients, the failed try's frames and the allocator's cache


def max_batch_rows(model_name: str, device: torch.device, variant: Variant) -> list[dict]:
    """The largest one-step batch of FM, RCGM N=2 and MeanFlow on one model (one replica, so Adam state is resident)."""
    gc.collect()
    torch.cuda.empty_cache()
    replica = Replica(model_name, variant, device)
    rows = []
    for obj in (o for o in objectives(2) if o.label in MAX_BATCH_OBJECTIVES):
        setup = Setup(replica, obj)
        tries = []

        def fits(batch: int) -> bool:
            """One try, recorded."""
            tries.append(batch)
            return fits_one_step(setup, batch)

        best = largest_batch(fits, replica.batch)
        rows.append({"model": model_name, "objective": obj.label, "variant": variant.label, "largest_batch": best,
                     "capped": best == MAX_BATCH_LIMIT, "tries": tries})
        print(f"  {model_name} {obj.label}: largest batch {best} ({len(tries)} tries)", file=sys.stderr, flush=True)
    for r in rows:
        r["ratio"] = r["largest_batch"] / rows[0]["largest_batch"] if rows[0]["largest_batch"] else None
    return rows


def cell(value, spec: str) -> str:
    """A formatted table cell, '-' for a value that could not be measured."""
    return "-" if value is None else format(value, spec)


def table(rows: list[dict], device: str) -> str:
    """The Markdown table of a timing run."""
    compare = any("speedup" in r for r in rows)
    headers = ["model (batch)", "objective", "variant", "ms/step (median)", "images/s", "x FM", "x FM (fastest rounds)",
               "FLOP exp.", "x exp. (median / fastest)", "GFLOP/step", "FLOP x FM (counted)", "TFLOP/s", "MFU",
               "saved act. MiB", "x FM"]
    if compare:
        headers += ["speed-up (median / fastest)"]
    if device.startswith("cuda"):
        headers += ["peak MiB", "x FM"]
    out = []
    for r in rows:
        cells = [f"{r['model']} ({r['batch']})", r["objective"], r["variant"]]
        if r["out_of_memory"]:
            out.append(cells + ["out of memory"] + [""] * (len(headers) - 4))
            continue
        saved = r["saved_bytes"] / 2**20 if r["saved_bytes"] is not None else None
        cells += [f"{r['ms_per_step']:.2f}", f"{r['images_per_s']:.1f}", cell(r["ratio"], ".2f"), cell(r["ratio_of_min"], ".2f"),
                  f"{r['expected']:.2f}", f"{cell(r['vs_expected'], '.2f')} / {cell(r['vs_expected_min'], '.2f')}",
                  f"{r['flops_per_step'] / 1e9:.2f}", cell(r["flops_ratio"], ".2f"), f"{r['tflops_per_s']:.3g}",
                  "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}", cell(saved, ".2f"), cell(r["saved_ratio"], ".2f")]
        if compare:
            cells += [f"{cell(r['speedup'], '.2f')} / {cell(r['speedup_of_min'], '.2f')}"]
        if device.startswith("cuda"):
            peak = r["peak_bytes"] / 2**20 if "peak_bytes" in r else None
            cells += [cell(peak, ".1f"), cell(r.get("peak_ratio"), ".2f")]
        out.append(cells)
    return markdown_table(headers, out)


def max_batch_table(rows: list[dict]) -> str:
    """The Markdown table of a --max-batch run."""
    headers = ["model", "objective", "variant", "largest batch", "x FM", "tries"]
    return markdown_table(headers, [[r["model"], r["objective"], r["variant"],
                                     f"{r['largest_batch']}" + (" (capped)" if r["capped"] else ""),
                                     cell(r["ratio"], ".2f"), len(r["tries"])] for r in rows])


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.objective", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="MLP and DiT-XS/4 (unless --models), 3 short rounds")
    parser.add_argument("--models", default=None, help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 15; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration per round (default: 20 MLP / 2 DiT on CPU, 10 on GPU)")
    parser.add_argument("--max-order", type=int, default=4, help="highest RCGM order N (default %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="forward precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--attention", choices=ATTENTIONS, default="sdpa", help="DiT attention kernel (default %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model; the warm-up steps pay for compiling")
    parser.add_argument("--compare", action="store_true", help="time bf16 + sdpa (+ --compile) against fp32 + math eager in the same rounds")
    parser.add_argument("--max-batch", action="store_true", help="CUDA only: the largest batch of FM, RCGM N=2 and MeanFlow that trains one step")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default %(default)s: steadier on a shared machine)")
    parser.add_argument("--out", default=None, help="also write the rows and the machine as JSON here (rewritten after each model)")
    return parser.parse_args(argv)


def refusal(args: argparse.Namespace, device: torch.device) -> str | None:
    """Why this combination of flags cannot run, naming the flag to change; None when it can."""
    if args.max_batch and device.type != "cuda":
        return "--max-batch needs --device cuda: it searches for the batch where torch.cuda.OutOfMemoryError starts"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "--device cuda but torch sees no GPU"
    if args.max_batch and (args.compare or args.compile):
        return "--max-batch times nothing and runs eager steps: drop --compare and --compile"
    if args.compare and (args.precision or args.attention != "sdpa"):
        return "--compare sets the precision and attention of both variants itself: drop --precision and --attention"
    unknown = [n for n in (args.models.split(",") if args.models else []) if n not in MODELS]
    if unknown:
        return f"unknown model {unknown[0]!r} in --models; choose from {', '.join(MODELS)}"
    return None


def write_json(path: str, payload: dict) -> None:
    """Write the run so far (an interrupted run keeps the models it finished)."""
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)


def main(argv=None) -> int:
    """Measure, print the Markdown table, optionally write JSON."""
    args = parse_args(argv)
    device = torch.device(args.device)
    error = refusal(args, device)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    kind = "cuda" if device.type == "cuda" else "cpu"
    names = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else DEFAULT_MODELS[kind])
    variant = Variant(args.precision or acceleration.resolve_precision("auto", device), args.attention, args.compile)
    variants = list(compared_variants(args.compile)) if args.compare else [variant]
    info = machine_info(args.device)
    info["threads"] = torch.get_num_threads()
    if args.max_batch:
        return max_batch_main(names, device, variant, info, args.out)
    rounds = args.rounds or (3 if args.quick else 15)
    rows = []
    for name in names:
        # Short rounds on the CPU: more of them land in quiet moments of a shared machine.
        steps = args.steps or (2 if args.quick else (10 if kind == "cuda" else (20 if name == "mlp" else 2)))
        print(f"measuring {name}: {rounds} rounds x {steps} steps per objective and variant ...", file=sys.stderr, flush=True)
        rows += measure_model(name, device, variants, rounds, steps, warmup=2 if args.quick else 3, max_order=args.max_order)
        if args.out:
            write_json(args.out, {"benchmark": "objective", "device": args.device, "variants": [v.label for v in variants],
                                  "machine": info, "rows": rows})
    memory_note = ("peak = torch.cuda.max_memory_allocated over one step, above what was allocated before the variant's "
                   "model was built (its weights, Adam, EMA target and batch included); " if kind == "cuda" else "")
    compare_note = (f"speed-up: median over rounds of ({variants[-1].label} time / this variant's time) in the same round, "
                    "and the ratio of fastest rounds. " if args.compare else "")
    print(f"\nObjective cost on {args.device} ({describe(info)}; torch threads {info['threads']})\n")
    print(table(rows, args.device))
    print(f"\nx FM: median over rounds of the per-round ratio to flow matching in the same variant; fastest rounds: the ratio of each "
          f"configuration's fastest round to flow matching's (load only adds time). x exp.: x FM / FLOP exp. FLOP exp.: (3+N)/3 "
          f"(one forward+backward = 3 forwards, plus N no-grad target forwards; MeanFlow 6/3: the target's JVP ~ three forwards (counted); "
          f"shortcut 8/3: two online forwards with backward and two target half-jumps; consistency 4/3). "
          f"GFLOP/step: trainables.cost.count_flops over one loss + backward (matmuls, convolutions, attention; target forwards "
          f"included; attention as the step runs it on CUDA, through SDPA's math kernel on a CPU); TFLOP/s = GFLOP/step / median step; MFU against trainables.cost.peak_tflops (n/a on a CPU or an "
          f"unknown GPU). {compare_note}MeanFlow's JVP runs SDPA's math kernel in every variant (the fused kernels have no "
          f"forward-mode rule). {memory_note}saved act.: bytes of the distinct storages autograd saves for backward during "
          f"the loss (saved_tensors_hooks; parameters excluded) - the CPU allocator has no peak counter.")
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


def max_batch_main(names: list[str], device: torch.device, variant: Variant, info: dict, out: str | None) -> int:
    """--max-batch: search, print the Markdown table, optionally write JSON."""
    rows = []
    for name in names:
        print(f"largest batch on {name} ({variant.label}) ...", file=sys.stderr, flush=True)
        rows += max_batch_rows(name, device, variant)
        if out:
            write_json(out, {"benchmark": "objective-max-batch", "device": str(device), "machine": info, "rows": rows})
    print(f"\nLargest batch per objective on {device} ({describe(info)})\n")
    print(max_batch_table(rows))
    print(f"\nA try is one training step (loss, backward, Adam, EMA update) from the state a training loop holds between "
          f"steps (weights, gradients, Adam state, EMA copy), {variant.label}; doubling from the model's bench batch, then "
          f"bisecting to 1 %; gc and torch.cuda.empty_cache between tries; capped at {MAX_BATCH_LIMIT}. x FM: largest batch / "
          f"flow matching's on the same model.")
    if out:
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
