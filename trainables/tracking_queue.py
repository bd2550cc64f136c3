"""A trial's MLflow writes that outlive a tracking outage: kept in order while the server is away, replayed when it answers.

The guarantee (docs/reliability.md): while the trial's process lives, no write is dropped or
reordered. Writes made during an outage wait in memory and training goes on; the next attempt
that reaches the server replays them oldest first. At the trial's end the queue waits up to
RCGM_TRACKING_PATIENCE_S for the server, then raises, and Tune retries the trial from its last
checkpoint. What is lost is only what a process that dies during an outage still held.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Callable

PATIENCE_ENV = "RCGM_TRACKING_PATIENCE_S"
DEFAULT_PATIENCE_S = 1800.0
# While the server is away, writes only queue; one attempt per this many seconds probes for it.
RETRY_EVERY_S = 15.0
# MLflow error codes that say the request itself is wrong: replaying it would fail forever.
PERMANENT_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                             "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE", "NOT_FOUND"})


class TrackingOutage(RuntimeError):
    """The tracking server stayed away past the patience; the message says how much was not written."""


def patience_s() -> float:
    """How long a trial waits for its server before giving up (RCGM_TRACKING_PATIENCE_S, seconds)."""
    raw = os.environ.get(PATIENCE_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_PATIENCE_S
    except ValueError:
        raise ValueError(f"{PATIENCE_ENV}={raw!r} is not a number of seconds: unset it or give e.g. 600") from None
    if not value >= 0:
        raise ValueError(f"{PATIENCE_ENV}={raw!r} must be >= 0 seconds")
    return value


def is_outage(err: BaseException) -> bool:
    """True when err says the server could not be reached or failed, not that the request was wrong."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code not in PERMANENT_CODES
    import requests

    return isinstance(err, (OSError, requests.exceptions.RequestException))


class WriteQueue:
    """Ordered writes to one tracking server; each is a no-argument callable that raises on failure."""

    def __init__(self, where: str, patience: float | None = None, retry_every: float = RETRY_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 say: Callable[[str], None] | None = None):
        self.where = where
        self.patience = patience_s() if patience is None else patience
        self.retry_every, self.clock, self.sleep = retry_every, clock, sleep
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.pending: deque[tuple[str, Callable[[], object]]] = deque()
        self.down_since: float | None = None
        self.last_try = 0.0
        self.outages = 0  # how many outages this queue rode out (logged by the trial)

    def __len__(self) -> int:
        return len(self.pending)

    def put(self, what: str, write: Callable[[], object]) -> None:
        """Queue a write and send what the server can take now (during an outage, at most one probe per retry_every)."""
        self.pending.append((what, write))
        if self.down_since is None or self.clock() - self.last_try >= self.retry_every:
            self.flush()

    def flush(self) -> bool:
        """Send queued writes oldest first; True when none is left. A wrong request raises at once."""
        self.last_try = self.clock()
        while self.pending:
            what, write = self.pending[0]
            try:
                write()
            except Exception as err:
                if not is_outage(err):
                    raise
                if self.down_since is None:
                    self.down_since = self.clock()
                    self.say(f"tracking: {self.where} unreachable ({_short(err)}); training goes on, "
                             f"writes are kept in order and replayed when it answers")
                return False
            self.pending.popleft()
        if self.down_since is not None:
            self.outages += 1
            self.say(f"tracking: {self.where} answers again after {self.clock() - self.down_since:.0f} s; "
                     f"queued writes replayed")
            self.down_since = None
        return True

    def drain(self, what: str = "the trial's last writes") -> None:
        """Flush, waiting for the server up to the patience; raise TrackingOutage if it stays away."""
        deadline = self.clock() + self.patience
        while not self.flush():
            if self.clock() >= deadline:
                raise TrackingOutage(
                    f"{self.where} stayed unreachable for {self.patience:.0f} s ({PATIENCE_ENV}); {len(self)} writes "
                    f"of {what} are not recorded (the next one: {self.pending[0][0]}); the trial is retried from its "
                    f"last checkpoint")
            self.sleep(min(self.retry_every, max(0.0, deadline - self.clock())))

    def call(self, what: str, read: Callable[[], object]):
        """Run a call whose answer is needed now (finding or creating the run), waiting up to the patience."""
        deadline = self.clock() + self.patience
        while True:
            try:
                return read()
            except Exception as err:
                if not is_outage(err) or self.clock() >= deadline:
                    raise
                self.say(f"tracking: {self.where} unreachable while {what} ({_short(err)}); retrying")
                self.sleep(min(self.retry_every, max(0.0, deadline - self.clock())))


def _short(err: BaseException) -> str:
    """The first line of an error, clipped: MLflow's connection errors run to a screenful."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160] + ("..." if len(text) > 160 else "")
