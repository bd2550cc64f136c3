"""Headless Chromium for the tests: found once, run offline and quiet with its own profile folder."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

# No GPU, no sandbox (containers), no first-run pages, no network of its own besides the page asked for.
HEADLESS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium() -> str:
    """The Chromium binary, or a failure saying how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run `make test`, which installs the Debian "
                    "packages (apt-get install -y chromium chromium-driver)")
    return found


def run_headless(profile: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Chromium with a profile under profile (never $HOME's) and args: what to do (--screenshot=..., --dump-dom) and the page."""
    return subprocess.run([chromium(), *HEADLESS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


def visible_text(html: str) -> str:
    """The text a page shows: its DOM without scripts, styles and tags, whitespace collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", text).strip()
