"""This process's resident memory, as the kernel counts it (Linux /proc; NaN elsewhere)."""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")


def memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process in MiB."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def resident_mb() -> float:
    """Resident memory now, MiB."""
    return memory_mb("VmRSS")


def peak_resident_mb() -> float:
    """Peak resident memory since the process started (or since reset_peak), MiB."""
    return memory_mb("VmHWM")


def reset_peak() -> bool:
    """Start a new peak from the current resident size; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
