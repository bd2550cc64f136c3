"""How a trial uses its device: forward precision, attention path, TF32, the optimizer's kernel, compile."""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA (tensor cores), fp32 elsewhere: CPU trials stay bit-identical to earlier ones.

    (bf16 on a CPU with bf16 instructions can be faster for wide layers: docs/benchmarks.md section 8.)
    """
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forwards; weights, gradients and optimizer state stay fp32. fp32: no context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_attention(attention: str) -> str:
    """'auto' -> sdpa (fused kernels); the objectives that need forward-mode AD switch kernels themselves."""
    return "sdpa" if attention == "auto" else attention


def attention_label(attention: str, model: str, objective: str) -> str:
    """What attention the trial's steps actually ran, for the run's tags."""
    if model == "mlp":
        return "none"
    if objective == "meanflow" and attention == "sdpa":
        return "sdpa-math (jvp)"  # flash / memory-efficient kernels have no forward-mode AD rule
    return attention


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA: fp32 work on tensor cores (10-bit mantissa inputs, fp32 sums)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def build_optimizer(params, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam (AdamW at weight decay 0, our setting); one fused kernel for all parameters on CUDA.

    The CPU keeps torch's default per-parameter loop, so CPU trials stay bit-identical to earlier ones.
    """
    return torch.optim.Adam(params, lr=lr, fused=True if device.type == "cuda" else None)


def compile_model(module: torch.nn.Module) -> None:
    """torch.compile a module in place: its state_dict keys (and so checkpoints) stay those of the eager module."""
    module.compile()
