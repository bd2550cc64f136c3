"""What a trial's training costs: FLOPs per step (counted), throughput, MFU and memory.

FLOPs are counted by torch.utils.flop_counter over one real training step of the trial's
objective (matmuls, convolutions and attention; elementwise work is not counted, as in every
published MFU). On CUDA the counter has formulas for the flash / memory-efficient kernels, so the
step is counted as it runs. On the CPU it has none for the fused kernel, so attention is counted
through SDPA's math kernel there (its matmuls); the CUDA backward formulas add flash's
recomputation, so a GPU count is a few percent above a CPU count of the same step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trainables import cost_schema as S
from trainables.acceleration import autocast
from trainables.saved_activations import SavedActivations

# Dense (no sparsity) peak TFLOP/s per GPU from the vendors' data sheets: (bf16, tf32, fp32).
# Matched in order against torch.cuda.get_device_name, so "H100 PCIe" is tried before "H100"
# and "A100" before "A10". fp32 trials run their matmuls on TF32 (acceleration.configure_device),
# so their MFU is against the TF32 peak.
PEAK_TFLOPS = (
    ("H200", (989.4, 494.7, 66.9)),
    ("H100 PCIe", (756.5, 378.0, 51.2)),
    ("H100 NVL", (835.5, 417.5, 60.0)),
    ("H100", (989.4, 494.7, 66.9)),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.1, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
    ("RTX 4090", (165.2, 82.6, 82.6)),
)


def device_name(device: torch.device) -> str:
    """'cpu', or the GPU's name as torch reports it (e.g. 'NVIDIA H200')."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_tflops(name: str, precision: str) -> float | None:
    """The dense peak of a named GPU for the trial's precision; None for a CPU or an unknown GPU."""
    for pattern, (bf16, tf32, _fp32) in PEAK_TFLOPS:
        if pattern in name:
            return bf16 if precision == "bf16" else tf32
    return None


def forward_equivalents(objective: str, order: int, guidance: float) -> float | None:
    """Forwards one step costs: forward + backward (3) per graded forward, the no-grad target forwards, 2 for guidance.

    RCGM: 3 + N target jumps; shortcut: 3 (flow matching) + 3 (the jump) + 2 half jumps; consistency:
    3 + 1 target forward at t'. None for MeanFlow: its JVP has no simple count, the counter's figure is
    the one to use.
    """
    base = {"rcgm": 3.0 + order, "shortcut": 8.0, "consistency": 4.0}.get(objective)
    if base is None:
        return None
    return base + (2.0 if guidance > 0.0 else 0.0)


@dataclass(frozen=True)
class StepCost:
    """One training step's work on one device, counted once at the start of a trial."""

    forward_flops: int  # one forward of the model on this device's batch
    step_flops: int  # the whole step: objective forwards, backward, target and guidance forwards
    saved_bytes: int | None  # activations autograd keeps for the backward (CPU only; CUDA has a real peak)

    @property
    def equivalents(self) -> float:
        """The step in forwards of the model."""
        return self.step_flops / self.forward_flops if self.forward_flops else float("nan")

    def metrics(self) -> dict[str, float]:
        """The counts as MLflow metrics."""
        out = {S.FORWARD_FLOPS: float(self.forward_flops), S.FLOPS_PER_STEP: float(self.step_flops),
               S.FORWARD_EQUIVALENTS: self.equivalents}
        if self.saved_bytes is not None:
            out[S.SAVED_ACTIVATIONS_MB] = self.saved_bytes / 2**20
        return out


def count_flops(fn, math_attention: bool = True) -> int:
    """FLOPs of the matmuls, convolutions and attention that fn runs (attention through SDPA's math kernel if asked)."""
    kernels = sdpa_kernel([SDPBackend.MATH]) if math_attention else contextlib.nullcontext()
    with kernels, FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_training_step(loss, model: torch.nn.Module, device: torch.device) -> int:
    """FLOPs of loss().backward(), gradients cleared again: on CUDA in the step's own attention kernels
    (the counter has flash / memory-efficient formulas), on the CPU through SDPA's math kernel."""
    flops = count_flops(lambda: loss().backward(), math_attention=device.type != "cuda")
    model.zero_grad(set_to_none=True)
    return flops


def measure_step_cost(trainer) -> StepCost:
    """Count one training step of the trainer's objective, without moving the trial's state.

    Its batch comes from a generator of its own (the trial's draws are untouched), no optimizer
    step is taken and the gradients are cleared again. Call before wrapping (DDP) or compiling.
    """
    model, device = trainer.model, trainer.device
    gen = torch.Generator(device=trainer.generator.device).manual_seed(0)
    x, y, z, t, r = trainer.draw_batch(trainer.local_batch, gen)
    params = list(model.parameters())

    def loss():
        with autocast(device, trainer.precision):
            value, _ = trainer.objective.loss(model, trainer.target, x, z, t, r, y=y, generator=gen)
        return value

    def forward():
        with torch.no_grad(), autocast(device, trainer.precision):
            model(x, t, r, y)

    on_cpu = device.type != "cuda"
    forward_flops = count_flops(forward, math_attention=on_cpu)
    step_flops = count_training_step(loss, model, device)
    saved = None
    if on_cpu:
        # In the trial's own attention kernel: the math kernel counted above saves the attention matrix.
        with SavedActivations(exclude=params) as counter:
            value = loss()
        saved = counter.bytes
        del value
    else:
        torch.cuda.reset_peak_memory_stats(device)  # the trial's peak is its training steps', not this count's
    return StepCost(forward_flops, step_flops, saved)


class StepMeter:
    """Seconds spent inside training steps: per window between evaluations, and for the whole trial."""

    def __init__(self):
        self.window_steps, self.window_s = 0, 0.0
        self.total_steps, self.total_s = 0, 0.0

    def add(self, seconds: float) -> None:
        """Record one step (train_step returns a host float, so queued GPU work is included)."""
        self.window_steps += 1
        self.window_s += seconds
        self.total_steps += 1
        self.total_s += seconds

    def take_window(self) -> tuple[int, float]:
        """(steps, seconds) since the last call."""
        out = (self.window_steps, self.window_s)
        self.window_steps, self.window_s = 0, 0.0
        return out


def rates(cost: StepCost | None, steps: int, seconds: float, global_batch: int, peak: float | None,
          prefix: str = "") -> dict[str, float]:
    """Throughput over `steps` steps that took `seconds`: steps/s, samples/s, TFLOP/s per device, MFU."""
    if steps <= 0 or seconds <= 0.0:
        return {}
    per_s = steps / seconds
    out = {S.STEPS_PER_S: per_s, S.SAMPLES_PER_S: per_s * global_batch}
    if cost is not None:
        achieved = cost.step_flops * per_s / 1e12
        out[S.TFLOPS_PER_S] = achieved
        if peak:
            out[S.MFU] = achieved / peak
    return {prefix + k: v for k, v in out.items()}
