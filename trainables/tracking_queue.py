"""A trial's MLflow writes that outlive a tracking outage: kept in order while the server is away, replayed when it answers.

The guarantee (docs/reliability.md): while the trial's process lives, no write is dropped or
reordered. A background thread sends the writes, so a server that is away, or hangs (PostgreSQL
down under it), never stalls training; writes wait in memory and go out oldest first once it
answers. At the trial's end the queue waits up to
RCGM_TRACKING_PATIENCE_S for the server, then raises, and Tune retries the trial from its last
checkpoint. What is lost is only what a process that dies during an outage still held.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Callable

PATIENCE_ENV = "RCGM_TRACKING_PATIENCE_S"
DEFAULT_PATIENCE_S = 1800.0
# While the server is away, the sender tries the oldest write again this often.
RETRY_EVERY_S = 15.0
# How long an evaluation waits for its writes before training goes on without them (a server that hangs).
SETTLE_S = 30.0
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
    """Ordered writes to one tracking server, sent by one background thread so the training loop never waits.

    Each write is a no-argument callable that raises on failure. A wrong request (not an outage)
    is dropped and re-raised in the trial's thread by the next put or drain: a bug fails the trial.
    """

    def __init__(self, where: str, patience: float | None = None, retry_every: float = RETRY_EVERY_S,
                 say: Callable[[str], None] | None = None):
        self.where = where
        self.patience = patience_s() if patience is None else patience
        self.retry_every = retry_every
        self.say = say or _to_stderr
        self.pending: deque[tuple[str, Callable[[], object]]] = deque()
        self.down_since: float | None = None
        self.outages = 0  # how many outages this queue rode out
        self.error: BaseException | None = None
        self.sending = False  # a write is out on the wire (taken, not yet done)
        self.slow = False  # the last settle gave up waiting: later ones do not wait until a write succeeds
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self.wake:
            return len(self.pending)

    def put(self, what: str, write: Callable[[], object]) -> None:
        """Queue a write; it is sent in order, behind every earlier one, by the sender thread."""
        with self.wake:
            self._raise_error()
            self.pending.append((what, write))
            if self.thread is None:
                self.thread = threading.Thread(target=self._send_forever, name="rcgm-tracking", daemon=True)
                self.thread.start()
            self.wake.notify_all()

    def settle(self, timeout: float = SETTLE_S) -> None:
        """While the server answers, wait for queued writes (as synchronous writes would); during an outage, return at once.

        A trial reports to Tune right after its evaluation, and a scheduler may end its process on
        that report: with a healthy server nothing may still be queued then.
        """
        deadline = time.monotonic() + timeout
        with self.wake:
            while (self.pending or self.sending) and self.down_since is None and not self.slow:
                self._raise_error()
                left = deadline - time.monotonic()
                if left <= 0:
                    self.slow = True
                    return
                self.wake.wait(min(left, 1.0))
            self._raise_error()

    def drain(self, what: str = "the trial's last writes") -> None:
        """Wait until every queued write is sent, up to the patience; raise TrackingOutage if the server stays away."""
        deadline = time.monotonic() + self.patience
        with self.wake:
            while self.pending or self.sending:
                self._raise_error()
                left = deadline - time.monotonic()
                if left <= 0:
                    first = self.pending[0][0] if self.pending else "the write in flight"
                    raise TrackingOutage(
                        f"{self.where} stayed unreachable for {self.patience:.0f} s ({PATIENCE_ENV}); {len(self.pending)} "
                        f"writes of {what} are not recorded (the next one: {first}); the trial is retried from its "
                        f"last checkpoint")
                self.wake.wait(min(left, 1.0))
            self._raise_error()

    def call(self, what: str, read: Callable[[], object]):
        """Run a call whose answer is needed now (finding or creating the run), waiting up to the patience."""
        return call_through_outage(self.where, what, read, self.patience, self.retry_every, self.say)

    def _raise_error(self) -> None:
        """Re-raise, in the caller's thread, a wrong request the sender met (called holding the lock)."""
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def _send_forever(self) -> None:
        """The sender: oldest write first; on an outage wait retry_every and try the same write again."""
        while True:
            with self.wake:
                while not self.pending:
                    self.wake.wait()
                what, write = self.pending[0]
                self.sending = True
            try:
                write()
            except Exception as err:
                with self.wake:
                    self.sending = False
                    if not is_outage(err):
                        self.pending.popleft()
                        self.error = err
                        self.wake.notify_all()
                        continue
                    if self.down_since is None:
                        self.down_since = time.monotonic()
                        self.say(f"tracking: {self.where} unreachable ({_short(err)}); training goes on, "
                                 f"writes are kept in order and replayed when it answers")
                time.sleep(self.retry_every)
                continue
            with self.wake:
                self.sending = False
                self.pending.popleft()
                self.slow = False
                if self.down_since is not None:
                    self.outages += 1
                    self.say(f"tracking: {self.where} answers again after {time.monotonic() - self.down_since:.0f} s; "
                             f"queued writes replayed")
                    self.down_since = None
                self.wake.notify_all()


def call_through_outage(where: str, what: str, read: Callable[[], object], patience: float | None = None,
                        retry_every: float | None = None, say: Callable[[str], None] | None = None):
    """read(), tried again every retry_every while the server is away, up to the patience; a wrong request raises at once.

    For the calls whose answer a trial needs before it can go on: opening its run, and asking
    whether an earlier attempt already ended it (a trial restarted during an outage waits for the
    server instead of failing its retries away).
    """
    patience = patience_s() if patience is None else patience
    retry_every = RETRY_EVERY_S if retry_every is None else retry_every
    say = say or _to_stderr
    deadline = time.monotonic() + patience
    while True:
        try:
            return read()
        except Exception as err:
            if not is_outage(err) or time.monotonic() >= deadline:
                raise
            say(f"tracking: {where} unreachable while {what} ({_short(err)}); retrying")
            time.sleep(min(retry_every, max(0.0, deadline - time.monotonic())))


def _to_stderr(line: str) -> None:
    """Where a trial's tracking lines go by default: its log, beside Ray's own."""
    print(line, file=sys.stderr, flush=True)


def _short(err: BaseException) -> str:
    """The first line of an error, clipped: MLflow's connection errors run to a screenful."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160] + ("..." if len(text) > 160 else "")
