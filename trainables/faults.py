"""Faults injected on purpose, for the reliability tests and fault drills: a trial's weights turned NaN, or an allocation no machine can serve.

  RCGM_INJECT_FAULTS="nan@N1-k0.9-s0:100,oom@N2-k0.9-s0:100" python sweeps/kappa_by_order.py --smoke

Each entry is KIND@TRIAL:STEP, TRIAL a cell key (the run name). Both faults go through the real
paths: NaN weights make the next loss non-finite (the divergence check), and the allocation fails
in PyTorch's allocator as a real out-of-memory does. Unset, nothing here runs.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

FAULTS_ENV = "RCGM_INJECT_FAULTS"
KINDS = ("nan", "oom")
# More than any 64-bit process can map (user space is 128 TiB): refused whatever the overcommit setting.
IMPOSSIBLE_BYTES = 1 << 48


def planned_faults(trial: str | None, text: str | None = None) -> dict[int, str]:
    """{step: kind} planned for this trial by RCGM_INJECT_FAULTS (empty when unset or for other trials)."""
    text = os.environ.get(FAULTS_ENV, "") if text is None else text
    out = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        kind, _, rest = entry.partition("@")
        name, _, step = rest.rpartition(":")
        if kind not in KINDS or not name or not step.isdigit() or int(step) < 1:
            raise ValueError(f"{FAULTS_ENV} entry {entry!r} is not KIND@TRIAL:STEP with KIND in {KINDS} and STEP >= 1")
        if name == trial:
            out[int(step)] = kind
    return out


def fault_hook(trial: str | None, model: torch.nn.Module, device) -> Callable[[int], None] | None:
    """A step hook that injects this trial's planned faults, or None when it has none."""
    plan = planned_faults(trial)
    if not plan:
        return None

    def hook(step: int) -> None:
        kind = plan.get(step)
        if kind == "nan":
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        elif kind == "oom":
            torch.empty(IMPOSSIBLE_BYTES, dtype=torch.uint8, device=device)

    return hook


def chain(*hooks) -> Callable[[int], None] | None:
    """One step hook calling each given one in turn (None when none is given)."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None
    return lambda step: [h(step) for h in present] and None
