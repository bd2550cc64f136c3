"""A trial's MLflow writes across a tracking outage: queued in order, replayed, none lost; wrong requests still raise.

The queue's own tests send to a stand-in that can refuse or hang; the real thing runs a TrialTracker against a
real `mlflow server`, ended by its pid for longer than the client retries and started again on
the same port and store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException

from trainables.status import Status
from trainables import tracking_queue
from trainables.tracking import TrialTracker, TrialTracking, recorded_result
from trainables.tracking_queue import PATIENCE_ENV, TrackingOutage, WriteQueue, is_outage, patience_s


class Server:
    """The far end of the wire for the queue's own tests: records writes, refuses them while down."""

    def __init__(self):
        self.up, self.got, self.attempts = True, [], 0

    def write(self, value, takes: float = 0.0):
        def send():
            self.attempts += 1
            time.sleep(takes)
            if not self.up:
                raise requests.exceptions.ConnectionError("connection refused")
            self.got.append(value)
        return send


def _queue(lines=None, patience=30.0):
    return WriteQueue("MLflow at test", patience=patience, retry_every=0.05,
                      say=(lines.append if lines is not None else lambda _: None))


def _until(check, timeout=10.0):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_writes_during_an_outage_are_replayed_in_order_and_announced_twice():
    server, lines = Server(), []
    q = _queue(lines)
    q.put("a", server.write(1))
    _until(lambda: server.got == [1])
    server.up = False
    for value in (2, 3, 4):
        q.put(f"v{value}", server.write(value))
    _until(lambda: server.attempts >= 5)  # the oldest write is tried again and again, the others wait behind it
    assert server.got == [1] and len(q) == 3
    assert len(lines) == 1 and "unreachable" in lines[0] and "training goes on" in lines[0]
    server.up = True
    q.put("v5", server.write(5))
    q.drain()
    assert server.got == [1, 2, 3, 4, 5] and len(q) == 0 and q.outages == 1
    assert "answers again after" in lines[-1]


def test_a_hanging_server_never_stalls_the_writer():
    server = Server()
    q = _queue()
    started = time.monotonic()
    for value in range(20):  # each send hangs 0.2 s, as a server waiting on a dead database does
        q.put(f"v{value}", server.write(value, takes=0.2))
    assert time.monotonic() - started < 0.1  # put only queues
    q.drain()
    assert server.got == list(range(20))


def test_settle_waits_for_a_healthy_server_only():
    server = Server()
    q = _queue()
    q.put("slowish", server.write(1, takes=0.2))
    q.settle()
    assert server.got == [1]  # answered: settle returned only once it was sent (ASHA may end the process next)
    server.up = False
    q.put("lost for now", server.write(2))
    _until(lambda: q.down_since is not None)
    started = time.monotonic()
    q.put("more", server.write(3))
    q.settle()
    assert time.monotonic() - started < 0.1 and len(q) == 2  # during an outage training does not wait
    server.up = True
    q.drain()
    hung = _queue()
    hung.put("hangs", server.write(4, takes=1.0))
    started = time.monotonic()
    hung.settle(timeout=0.2)
    hung.settle(timeout=0.2)  # the first gave up: the second does not wait again
    assert time.monotonic() - started < 0.6
    hung.drain()
    assert server.got == [1, 2, 3, 4]


def test_drain_waits_for_the_server_then_gives_up_naming_what_is_left():
    server = Server()
    q = _queue(patience=0.5)
    server.up = False
    q.put("metrics at step 7", server.write(7))
    started = time.monotonic()
    with pytest.raises(TrackingOutage, match=r"stayed unreachable for 0 s .*RCGM_TRACKING_PATIENCE_S.*1 writes.*metrics at step 7"):
        q.drain()
    assert time.monotonic() - started >= 0.5

    server2 = Server()
    q2 = _queue(patience=30.0)
    server2.up = False
    q2.put("x", server2.write("x"))
    threading.Timer(0.3, lambda: setattr(server2, "up", True)).start()
    q2.drain()
    assert server2.got == ["x"]


def test_a_wrong_request_fails_the_trial_in_its_own_thread():
    server = Server()
    q = _queue()

    on_the_wire = threading.Event()

    def bad():  # what the client raises for a server's 400 answer, once "next" is queued behind it
        on_the_wire.wait(10)
        raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Param value too long"})
    q.put("bad", bad)
    q.put("next", server.write("next"))
    on_the_wire.set()
    with pytest.raises(MlflowException, match="too long"):
        q.drain()
    q.drain()
    assert server.got == ["next"]  # the wrong write is dropped, not retried forever ahead of the rest
    assert not is_outage(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}))
    # The client's message once its retries of a 500 run out.
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
        tracker.queue.retry_every = 1.0
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
        assert len(tracker.queue) >= 6 and max(took) < 0.1, took  # put only queues: training never waits
        time.sleep(5)  # down for well over what one client call retries
        server = _start_server(tmp_path, port)
        tracker.finish(Status.FINISHED)
        assert len(tracker.queue) == 0 and tracker.queue.outages == 1
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)  # read back through the server that came back
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 9))
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/picture.png"]
    finally:
        _end(server)
    err = capfd.readouterr().err
    assert "unreachable" in err and "answers again after" in err


@pytest.mark.slow
def test_a_trial_restarted_during_an_outage_waits_for_the_server(tmp_path, monkeypatch, capfd):
    """A retried trial first asks MLflow whether an earlier attempt ended it: with the server away it waits, not fails.

    Found on the local cluster: a trial moved off a killed node restarted while MLflow was down and
    spent both its retries in the client's few seconds of backoff.
    """
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setattr(tracking_queue, "RETRY_EVERY_S", 0.5)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    try:
        tracking = TrialTracking(uri=uri, experiment="restart", trial_key="restart/N2", run_name="N2")
        tracker = TrialTracker(tracking)
        tracker.start({"order": "2"})
        tracker.log_metrics({"loss": 0.5, "final_step": 10}, 10)
        tracker.finish(Status.FINISHED)
        _end(server)
        seen = {}

        def look_up():
            try:
                seen["result"] = recorded_result(tracking)
            except Exception as err:  # the failure this test is about: it must not happen
                seen["error"] = err
        asking = threading.Thread(target=look_up)
        asking.start()
        asking.join(6)  # longer than the client's own retry
        assert asking.is_alive() and not seen, seen
        server = _start_server(tmp_path, port)
        asking.join(60)
        assert seen.get("result", {}).get("status") == "finished" and seen["result"]["step"] == 10, seen
    finally:
        _end(server)
    assert "unreachable while looking up trial 'restart/N2'" in capfd.readouterr().err
