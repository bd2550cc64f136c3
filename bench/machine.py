"""Where a benchmark number came from: machine, load, versions and git commit."""

from __future__ import annotations

import os
import platform as std_platform  # the standard library module (we never name one of ours `platform`)
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what the platform module says elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return std_platform.processor() or "unknown"


def git_commit() -> str:
    """HEAD of this checkout, with '+dirty' when tracked files under bench/ or trainables/ changed."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        commit = run("rev-parse", "--short=12", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", "bench", "trainables", "sweeps")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the packages that decide what the numbers mean."""
    out = {"python": std_platform.python_version()}
    for name in ("torch", "ray", "mlflow", "timm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def machine_info(device: str = "cpu") -> dict:
    """A JSON-ready description of the machine at the time of the run, load average included."""
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "git_commit": git_commit(),
        **versions(),
    }
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def describe(info: dict) -> str:
    """One line for the top of a printed table."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    load = "/".join(str(x) for x in info["load_avg_1_5_15"])
    return (f"{info['cpu_model']}, {info['cores']} cores{gpu}; load {load} (1/5/15 min); torch {info['torch']}, "
            f"ray {info['ray']}, mlflow {info['mlflow']}, python {info['python']}; commit {info['git_commit']}")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; floats are expected to be formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
