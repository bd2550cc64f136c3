"""A trial's MLflow writes across a tracking outage: queued in order, replayed, none lost; wrong requests still raise.

The queue's logic runs on a clock the test turns; the real thing runs a TrialTracker against a
real `mlflow server`, ended by its pid for longer than the client retries and started again on
the same port and store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException

from trainables.status import Status
from trainables.tracking import TrialTracker, TrialTracking
from trainables.tracking_queue import PATIENCE_ENV, TrackingOutage, WriteQueue, is_outage, patience_s


class Clock:
    """Time that moves only when the queue sleeps or the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Server:
    """A stand-in for the far end of the wire: records writes, refuses them while down."""

    def __init__(self):
        self.up, self.got = True, []

    def write(self, value):
        def send():
            if not self.up:
                raise requests.exceptions.ConnectionError("connection refused")
            self.got.append(value)
        return send


def _queue(clock, lines=None, patience=60.0):
    return WriteQueue("MLflow at test", patience=patience, retry_every=10.0, clock=clock, sleep=clock.sleep,
                      say=(lines.append if lines is not None else lambda _: None))


def test_writes_during_an_outage_are_replayed_in_order_and_announced_twice():
    clock, server, lines = Clock(), Server(), []
    q = _queue(clock, lines)
    q.put("a", server.write(1))
    server.up = False
    for value in (2, 3, 4):
        q.put(f"v{value}", server.write(value))
        clock.now += 4
    assert server.got == [1] and len(q) == 3
    assert len(lines) == 1 and "unreachable" in lines[0] and "training goes on" in lines[0]
    server.up = True
    q.put("v5", server.write(5))  # 12 s after the first failure: past retry_every, so it probes and replays
    assert server.got == [1, 2, 3, 4, 5] and len(q) == 0 and q.outages == 1
    assert "answers again after 12 s" in lines[-1]


def test_during_an_outage_writes_only_queue_between_probes():
    clock, server = Clock(), Server()
    q = _queue(clock)
    server.up = False
    attempts = []
    q.put("first", lambda: (attempts.append(clock.now), server.write(0)())[1])
    for _ in range(5):  # 5 writes within 10 s: none is attempted, so none blocks training on the network
        clock.now += 1.5
        q.put("more", lambda: (attempts.append(clock.now), server.write(0)())[1])
    assert attempts == [0.0] and len(q) == 6


def test_drain_waits_for_the_server_then_gives_up_naming_what_is_left():
    clock, server = Clock(), Server()
    q = _queue(clock, patience=60.0)
    server.up = False
    q.put("metrics at step 7", server.write(7))
    with pytest.raises(TrackingOutage, match=r"stayed unreachable for 60 s .*RCGM_TRACKING_PATIENCE_S.*1 writes.*metrics at step 7"):
        q.drain()
    assert clock.now >= 60.0

    clock2, server2 = Clock(), Server()
    q2 = _queue(clock2, patience=60.0)
    server2.up = False
    q2.put("x", server2.write("x"))

    def back_after_25_s(seconds):
        clock2.sleep(seconds)
        server2.up = clock2.now >= 25
    q2.sleep = back_after_25_s
    q2.drain()
    assert server2.got == ["x"] and 25 <= clock2.now < 60


def test_a_wrong_request_raises_at_once_and_is_not_queued():
    clock = Clock()
    q = _queue(clock)

    def bad():  # what the client raises for a server's 400 answer
        raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Param value too long"})
    with pytest.raises(MlflowException, match="too long"):
        q.put("bad", bad)
    assert len(q) == 1  # still first in line: a later flush raises again rather than skip it
    assert not is_outage(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}))
    # The client's message once its retries of a 500 (PostgreSQL away under the server) run out.
    assert is_outage(MlflowException("API request to endpoint failed: too many 500 error responses"))
    assert is_outage(requests.exceptions.ConnectionError("refused")) and is_outage(ConnectionRefusedError())
    assert not is_outage(ValueError("a bug"))


def test_patience_comes_from_the_environment_and_bad_values_say_what_to_set(monkeypatch):
    monkeypatch.setenv(PATIENCE_ENV, "42")
    assert patience_s() == 42.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(PATIENCE_ENV, bad)
        with pytest.raises(ValueError, match=PATIENCE_ENV):
            patience_s()


# ---- the real server ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(folder, port) -> subprocess.Popen:
    log = open(folder / "server.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        assert proc.poll() is None, (folder / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    pytest.fail("mlflow server did not come up: " + (folder / "server.log").read_text()[-2000:])


def _end(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its gunicorn/uvicorn worker, by the group we started
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_trial_rides_out_a_server_outage_longer_than_the_client_retries(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the client gives up within seconds: the queue must not
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    try:
        tracker = TrialTracker(TrialTracking(uri=uri, experiment="outage", trial_key="outage/N2", run_name="N2"))
        tracker.queue.retry_every = 2.0
        run_id = tracker.start({"order": "2"})
        picture = tmp_path / "picture.png"
        picture.write_bytes(b"\x89PNG not really")
        for step in (1, 2):
            tracker.log_metrics({"loss": 1.0 / step}, step)
        _end(server)
        took = []
        for step in range(3, 9):  # the server is gone: each write returns at once, nothing raises
            started = time.time()
            tracker.log_metrics({"loss": 1.0 / step}, step)
            took.append(time.time() - started)
            time.sleep(1.0)
        tracker.log_artifact(picture, "samples")
        assert len(tracker.queue) >= 6 and sorted(took)[len(took) // 2] < 1.0, took
        time.sleep(5)  # down for well over what one client call retries
        server = _start_server(tmp_path, port)
        tracker.finish(Status.FINISHED)
        assert len(tracker.queue) == 0 and tracker.queue.outages == 1
    finally:
        _end(server)
    err = capfd.readouterr().err
    assert "unreachable" in err and "answers again after" in err
    server = _start_server(tmp_path, port)  # read it back through a fresh server on the same store
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 9))
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/picture.png"]
    finally:
        _end(server)
