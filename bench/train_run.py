"""A DiT training run through trainables.loop.Trainer on synthetic latents, untracked: throughput and the loss curve.

  python -m bench.train_run --steps 2000 --model DiT-B/2 --device cuda --out /tmp/train-run
  python -m bench.train_run --steps 20 --model DiT-XS/4 --device cpu --batch 8 --out /tmp/train-run   # seconds

The task is a folder of random N(0, 1) 4x32x32 latents with 1000 classes, written with the
project's own shard writer (trainables.data.latents) into a temporary folder, so nothing needs
the network; nothing on the way imports Ray, MLflow or Optuna. Progress goes to stderr every
--log-every steps; train_run.json (rewritten at each progress line, so a run cut short keeps
what it measured) holds the throughput (steps/s, samples/s = images/s, TFLOP/s and MFU from the
trainer's counted step cost, over the whole run and its second half), the CUDA peak memory and
the loss of every step; loss.png is drawn when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.machine import describe, machine_info, markdown_table
from trainables.config import PRECISIONS, TrialConfig
from trainables.cost import device_name, peak_tflops, rates
from trainables.data.catalog import LATENT_PREFIX
from trainables.data.latents import LatentWriter
from trainables.loop import Trainer
from trainables.models import DIT_NAMES
from trainables.rcgm.registry import OBJECTIVES

LATENT_SHAPE = (4, 32, 32)  # a VAE-f8 latent of a 256x256 image, as in DiT's ImageNet runs
NUM_CLASSES = 1000


def write_latents(folder: Path, rows: int, seed: int = 0) -> None:
    """Random N(0, 1) latents with uniform labels, in the project's shard format."""
    gen = torch.Generator().manual_seed(seed)
    writer = LatentWriter(folder, LATENT_SHAPE, info={"encoder": "none (synthetic N(0, 1) latents)",
                                                      "source": "bench.train_run", "num_classes": NUM_CLASSES})
    for start in range(0, rows, 1024):
        n = min(1024, rows - start)
        writer.add(torch.randn((n, *LATENT_SHAPE), generator=gen), torch.randint(NUM_CLASSES, (n,), generator=gen))
    writer.close()


def trial_config(args: argparse.Namespace, folder: Path) -> TrialConfig:
    """The trial the run trains: the flags on a latents task, evaluation never due."""
    return TrialConfig(task=LATENT_PREFIX + str(folder), model=args.model, objective=args.objective, order=args.order,
                       batch_size=args.batch, steps=args.steps, lr=args.lr, precision=args.precision,
                       compile=args.compile, eval_every=args.steps)


def plot_losses(losses: list[float], title: str, path: Path) -> bool:
    """Draw the loss per step and its running mean; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    window = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.5, alpha=0.4, label="loss")
    ax.plot(range(1, len(losses) + 1), smooth, lw=1.5, label=f"mean of {window} steps")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


class Run:
    """What the run measured so far, and its JSON."""

    def __init__(self, args: argparse.Namespace, trainer: Trainer, info: dict):
        self.args, self.trainer, self.info = args, trainer, info
        self.device = trainer.device
        self.peak = peak_tflops(device_name(self.device), trainer.precision)
        self.losses: list[float] = []
        self.seconds: list[float] = []  # per step, from train_step's host float (so queued GPU work is in it)

    def rates(self, first: int = 0) -> dict[str, float]:
        """steps/s, samples/s, TFLOP/s and MFU over the steps from index `first` on."""
        return rates(self.trainer.cost, len(self.seconds) - first, sum(self.seconds[first:]), self.args.batch, self.peak)

    def report(self) -> dict:
        """The JSON-ready record of the run so far."""
        cost = self.trainer.cost
        out = {
            "benchmark": "train_run", "device": str(self.device), "gpu": device_name(self.device), "machine": self.info,
            "config": self.trainer.cfg.to_dict(), "precision": self.trainer.precision, "attention": self.trainer.attention,
            "steps_done": len(self.losses), "peak_tflops": self.peak,
            "cost": {"forward_flops": cost.forward_flops, "step_flops": cost.step_flops,
                     "forward_equivalents": cost.equivalents},
            "throughput": self.rates(),
            # The second half: compiling, allocator warm-up and cuDNN heuristics are behind it.
            "throughput_second_half": self.rates(len(self.seconds) // 2),
            "losses": self.losses,
        }
        if self.device.type == "cuda":
            out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return out

    def write(self, path: Path) -> dict:
        """Rewrite the JSON; return what was written."""
        report = self.report()
        path.write_text(json.dumps(report, indent=2))
        return report


def progress(run: Run, window: int) -> str:
    """One progress line: the step, the loss and the rates over the last `window` steps."""
    r = run.rates(max(0, len(run.seconds) - window))
    mfu = f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
    return (f"step {len(run.losses)}/{run.args.steps} loss {run.losses[-1]:.4f} | {r['steps_per_s']:.2f} steps/s, "
            f"{r['samples_per_s']:.0f} images/s, {r['tflops_per_s']:.3g} TFLOP/s{mfu} (last {window} steps)")


def summary_table(report: dict) -> str:
    """The Markdown summary of a finished run."""
    rows = []
    for name in ("throughput", "throughput_second_half"):
        r = report[name]
        rows.append([name.replace("_", " "), f"{r['steps_per_s']:.2f}", f"{r['samples_per_s']:.0f}", f"{r['tflops_per_s']:.3g}",
                     f"{r['mfu']:.1%}" if "mfu" in r else "n/a"])
    return markdown_table(["steps", "steps/s", "images/s", "TFLOP/s", "MFU"], rows)


def parse_args(argv=None) -> argparse.Namespace:
    """The run's command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.train_run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default %(default)s)")
    parser.add_argument("--model", default="DiT-B/2", choices=DIT_NAMES, metavar="MODEL", help="a DiT: " + ", ".join(DIT_NAMES) + " (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--objective", default="rcgm", choices=OBJECTIVES, help="default %(default)s")
    parser.add_argument("--order", type=int, default=2, help="RCGM order N (default %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default %(default)s, DiT's)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto", help="default auto: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the first steps pay for compiling)")
    parser.add_argument("--rows", type=int, default=4096, help="synthetic latents to write (default %(default)s; >= 16)")
    parser.add_argument("--log-every", type=int, default=250, help="progress line and JSON every this many steps (default %(default)s)")
    parser.add_argument("--time-limit", type=float, default=0.0, help="stop after this many seconds of training, keeping what was measured (0 = none)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default %(default)s)")
    parser.add_argument("--out", default="/tmp/train-run", help="folder for train_run.json and loss.png (default %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Write the latents, train, report."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    if args.steps < 1 or args.log_every < 1 or args.rows < 16:
        print("error: --steps and --log-every must be >= 1 and --rows >= 16 (a latent task holds out 1/8 of them)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device)
    with tempfile.TemporaryDirectory(prefix="rcgm-latents-") as tmp:
        write_latents(Path(tmp), args.rows)
        trainer = Trainer(trial_config(args, Path(tmp)), device=device, measure_cost=True)
        run = Run(args, trainer, info)
        print(f"training {args.model} {args.objective} N={args.order} batch {args.batch} {trainer.precision} on {device_name(device)} "
              f"({trainer.cost.step_flops / 1e9:.1f} GFLOP/step counted) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            run.losses.append(trainer.train_step())
            run.seconds.append(time.perf_counter() - t0)
            over_time = args.time_limit and time.perf_counter() - started > args.time_limit
            if step % args.log_every == 0 or step == args.steps or over_time:
                print(progress(run, args.log_every), file=sys.stderr, flush=True)
                report = run.write(out / "train_run.json")
            if over_time:
                print(f"stopped at step {step}: --time-limit {args.time_limit:g} s reached", file=sys.stderr)
                break
    title = f"{args.model} {args.objective} N={args.order}, batch {args.batch}, {trainer.precision}, {device_name(device)}"
    drawn = plot_losses(run.losses, title, out / "loss.png")
    print(f"\nTraining run on {args.device} ({describe(info)}): {title}, {report['steps_done']} steps\n")
    print(summary_table(report))
    print(f"\nwrote {out / 'train_run.json'}" + (f" and {out / 'loss.png'}" if drawn else " (no loss.png: matplotlib is not installed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
