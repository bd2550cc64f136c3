"""A multi-node cluster on this machine, the topology of docker/compose.yaml without Docker.

  python -m sweeps.local_cluster up [--dir runs/cluster] [--workers 2] [--cpus-per-worker 1]
  source runs/cluster/env.sh
  ray job submit --working-dir . -- python sweeps/kappa_by_order.py --smoke
  python -m sweeps.local_cluster status
  python -m sweeps.local_cluster stop SERVICE [--kill]   (a fault drill; SERVICE: postgres, mlflow, ray-head, ray-worker-N)
  python -m sweeps.local_cluster start SERVICE          (again, on the same ports and data; a head before its workers)
  python -m sweeps.local_cluster down [--purge]

`up` starts PostgreSQL (Debian's packages, its own data directory, 127.0.0.1 only), an `mlflow
server` on it (postgresql+psycopg2 backend store, proxied artifacts), a Ray head that takes no
trials (0 CPUs), worker nodes, and one shared folder for checkpoints. PostgreSQL, MLflow and Ray's
dashboard listen on 127.0.0.1 only; Ray's token auth is on. Each Ray node is its own `ray start`
with its own temp dir and ports: separate raylets, object stores and node ids, all on this host's
address (Ray 2.60 turns a --node-ip-address of 127.0.0.1 into the host's address, and its GCS and
raylets bind every interface: no flag keeps them on loopback). Network namespaces, which would give
each node its own address, are not used: a node inside one could not reach services on the host's
127.0.0.1. The nodes carry MLFLOW_TRACKING_URI, RCGM_STORAGE_PATH and RCGM_RUNS_DIR in their
environment, as the compose file's do, so a job submitted with no flags tracks to the server and
checkpoints to the shared folder.

`down` ends exactly the processes `up` started: every process in the session each of them
leads (by process id, never `ray stop`, which ends every Ray of the user). It removes nothing
unless asked with --purge.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from trainables.locations import runs_dir

STATE_FILE = "cluster.json"
ENV_FILE = "env.sh"
PG_USER, PG_DATABASE = "rcgm", "mlflow"
# PostgreSQL refuses to run as root; Debian's package makes this system user.
PG_SYSTEM_USER = "postgres"
# PostgreSQL's SIGTERM waits for every client to leave (the MLflow server's pool never does); SIGINT is its fast shutdown.
STOP_SIGNAL = {"postgres": signal.SIGINT}
JOB_STOP_WAIT_S = 60


class ClusterError(RuntimeError):
    """The cluster cannot be brought up or reached; the message says what to do."""


# ---- small helpers -----------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """count distinct free TCP ports on 127.0.0.1.

    The sockets stay open until all are bound: one port picked and closed at a time can come back
    from the kernel twice (it did: a Ray head refused two of its components on one port).
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def venv_bin(name: str) -> str:
    """A console script of this interpreter's environment (ray, mlflow)."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, postgres, pg_isready) of the newest installed version."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for folder in reversed(versions):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found:
        return found
    raise ClusterError(f"PostgreSQL's {name} is not installed: apt-get install -y postgresql (Debian's package)")


def session_members(sid: int) -> list[int]:
    """Every process whose session is sid (a process we started with start_new_session leads one)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is the state: a zombie has already exited.
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """True while the process (a session leader we started) exists and has not exited."""
    return pid in session_members(pid)


def signal_sessions(sids: list[int], sig: int) -> None:
    """Send sig to every process of these sessions, by pid (one that exits meanwhile is skipped)."""
    for sid in sids:
        for pid in session_members(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def end_sessions(sids: list[int], grace: float = 20.0, first: int = signal.SIGTERM) -> list[int]:
    """Signal every process of these sessions (first: SIGTERM), SIGKILL what is left after grace; return what survived."""
    signal_sessions(sids, first)
    deadline = time.time() + grace
    while time.time() < deadline and any(session_members(s) for s in sids):
        time.sleep(0.5)
    signal_sessions(sids, signal.SIGKILL)
    time.sleep(1)
    return [p for s in sids for p in session_members(s)]


def log_tail(log: Path | None, lines: int = 3) -> str:
    """The last lines of a log, on one line, for an error message."""
    if not log or not log.exists():
        return ""
    tail = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    return " | ".join(tail)


def wait_for(what: str, check, timeout: float, log: Path | None = None, pid: int | None = None) -> None:
    """Poll check() until it is true, or raise naming what did not come up and where its log is.

    With pid, a process that has exited fails at once instead of after the timeout.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            raise ClusterError(f"{what} exited while starting: {log_tail(log)} (its log: {log})")
        time.sleep(1)
    where = f"; its log: {log}" if log else ""
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s{where}")


def http_ok(url: str, token: str | None = None) -> bool:
    """True when url answers 200 (with the Ray token when given)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# ---- the cluster -------------------------------------------------------------------------------

class LocalCluster:
    """The processes of one local cluster, and the state file that remembers them."""

    def __init__(self, folder: Path):
        self.dir = folder.resolve()
        self.state_path = self.dir / STATE_FILE
        self.state: dict = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    # -- bookkeeping

    def save(self) -> None:
        """Write the state (pids, ports, paths) where status and down find it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.state, indent=2))
        self.state_path.chmod(0o600)  # it holds the Ray token and the database password

    def launch(self, name: str, cmd: list[str], env: dict, user: str | None = None) -> int:
        """Start a process in its own session (so down can end it and its children), logging to logs/<name>.log."""
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, user=user, cwd=self.dir)
        self.state.setdefault("processes", {})[name] = proc.pid
        self.save()
        return proc.pid

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    # -- up

    def up(self, workers: int, cpus_per_worker: float, out=print) -> None:
        """Bring every service up, in dependency order; on failure end what was started."""
        if self.state.get("processes") and any(alive(p) for p in self.state["processes"].values()):
            raise ClusterError(f"a cluster from {self.dir} is already up: `python -m sweeps.local_cluster status` "
                               f"shows it, `down` ends it")
        if workers < 1 or cpus_per_worker <= 0:
            raise ClusterError("--workers must be >= 1 and --cpus-per-worker > 0")
        if importlib.util.find_spec("psycopg2") is None:
            raise ClusterError("the MLflow server's PostgreSQL driver is missing: pip install psycopg2-binary "
                               "(a dependency of the project: `make install` installs it)")
        postgres_bin("postgres")  # refused here, with the apt-get line, before anything starts
        started = time.time()
        # Ray's unix sockets must stay under 108 bytes: its temp dirs go under /tmp, named after this cluster.
        tmp = Path(f"/tmp/rcgm-cluster-{secrets.token_hex(3)}")
        self.state = {"dir": str(self.dir), "tmp": str(tmp), "processes": {}, "token": secrets.token_hex(32),
                      "pg_password": secrets.token_hex(16), "storage": str(self.dir / "storage"),
                      "runs": str(self.dir / "runs"), "workers": workers, "cpus_per_worker": cpus_per_worker}
        for sub in ("storage", "runs", "mlflow-artifacts", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.save()
        try:
            self._start_postgres(tmp, out)
            self._start_mlflow(out)
            self._start_ray(tmp, workers, cpus_per_worker, out)
        except BaseException:
            out("bringing up failed: ending what was started", flush=True)
            self.down(purge=False, out=out)
            raise
        self.write_env_file()
        self.state["up_seconds"] = round(time.time() - started, 1)
        self.save()

    def _start_postgres(self, tmp: Path, out) -> None:
        """initdb (once), then postgres on 127.0.0.1 with password auth, then the mlflow database."""
        data, sock = self.dir / "postgres", tmp / "pg"
        user = PG_SYSTEM_USER if os.geteuid() == 0 else None
        sock.mkdir(parents=True, exist_ok=True)
        pwfile = tmp / "pgpass"
        pwfile.write_text(self.state["pg_password"] + "\n")
        if user:
            for path in (tmp, sock, pwfile):
                shutil.chown(path, user)
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            data.chmod(0o700)
            if user:
                shutil.chown(data, user)
                if subprocess.run(["test", "-w", str(data)], user=user).returncode != 0:
                    raise ClusterError(f"the {user} user cannot reach {data} (a parent folder is private): pass "
                                       f"--dir under a folder every user can enter, e.g. /srv or /tmp")
            out(f"  postgres: initdb {data}", flush=True)
            init = subprocess.run([postgres_bin("initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(pwfile),
                                   "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8"],
                                  user=user, capture_output=True, text=True, cwd=tmp)
            if init.returncode != 0:
                raise ClusterError(f"initdb failed: {init.stderr.strip()[-500:]}")
        else:
            # The data dir keeps its password from the first up: reuse it.
            self.state["pg_password"] = (self.dir / "postgres" / ".rcgm-password").read_text().strip() \
                if (self.dir / "postgres" / ".rcgm-password").exists() else self.state["pg_password"]
        # A restart keeps the port: the MLflow server's store URI names it.
        port = self.state.setdefault("ports", {}).get("postgres") or free_port()
        self.state["ports"]["postgres"] = port
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        pid = self.launch("postgres", [postgres_bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                 "-k", str(sock)], env, user=user)
        ready = [postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]
        wait_for("PostgreSQL", lambda: subprocess.run(ready).returncode == 0, 60, self.log("postgres"), pid)
        pg_env = {**env, "PGPASSWORD": self.state["pg_password"]}
        exists = subprocess.run([postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres", "-tAc",
                                 f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"],
                                env=pg_env, capture_output=True, text=True)
        if exists.returncode != 0:
            raise ClusterError(f"cannot log in to PostgreSQL: {exists.stderr.strip()[-300:]}")
        if exists.stdout.strip() != "1":
            subprocess.run([postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DATABASE], env=pg_env,
                           check=True, capture_output=True)
        password_file = data / ".rcgm-password"
        password_file.write_text(self.state["pg_password"])
        password_file.chmod(0o600)
        pwfile.unlink()
        out(f"  postgres: 127.0.0.1:{port} (data {data})", flush=True)

    def _start_mlflow(self, out) -> None:
        """mlflow server on the PostgreSQL store, artifacts proxied into the cluster folder."""
        # A restart keeps the port: every node's MLFLOW_TRACKING_URI names it.
        port = self.state["ports"].get("mlflow") or free_port()
        self.state["ports"]["mlflow"] = port
        # The password reaches psycopg2 through libpq's PGPASSWORD: never on a command line or in a URI.
        env = {**os.environ, "PGPASSWORD": self.state["pg_password"], "MLFLOW_DISABLE_TELEMETRY": "true",
               "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.state['ports']['postgres']}/{PG_DATABASE}"}
        pid = self.launch("mlflow", [venv_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--serve-artifacts", "--artifacts-destination", str(self.dir / "mlflow-artifacts")], env)
        wait_for("the MLflow server", lambda: http_ok(f"{self.tracking_uri}/health"), 120, self.log("mlflow"), pid)
        out(f"  mlflow: {self.tracking_uri} (backend postgresql+psycopg2 on 127.0.0.1:{self.state['ports']['postgres']})", flush=True)

    def node_env(self) -> dict:
        """What every Ray node (and so every job and trial) runs with."""
        from trainables.ray_setup import WORKER_ENV

        inherited = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
        # A job's `python` entrypoint is looked up on the node's PATH: this environment's first, as if activated.
        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        # `ray job stop` SIGTERMs the driver and SIGKILLs it 3 s later by default: too soon for Tune to save its state.
        return {**inherited, **WORKER_ENV, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.state["token"],
                "RAY_JOB_STOP_WAIT_TIME_S": str(JOB_STOP_WAIT_S),
                "MLFLOW_TRACKING_URI": self.tracking_uri, "RCGM_STORAGE_PATH": self.state["storage"],
                "RCGM_RUNS_DIR": self.state["runs"]}

    def _ray_ports(self) -> list[str]:
        """Ports a Ray node would otherwise take at fixed defaults: every node here gets its own."""
        names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port", "node-manager-port", "object-manager-port")
        return [f"--{name}={port}" for name, port in zip(names, free_ports(len(names)))]

    def _start_ray(self, tmp: Path, workers: int, cpus: float, out) -> None:
        """The head (no CPUs: it only coordinates), then each worker node, waiting for each to join."""
        self._start_head(tmp, out)
        for i in range(1, workers + 1):
            # One at a time: nodes joining together on one machine time out under load.
            self._start_worker(f"ray-worker-{i}", tmp, cpus, out)

    def _start_head(self, tmp: Path, out) -> None:
        """The Ray head: GCS, dashboard and job API; a new head after a lost one keeps the ports clients know."""
        ports = self.state.setdefault("ports", {})
        if "gcs" not in ports:
            ports["gcs"], ports["dashboard"] = free_ports(2)
        pid = self.launch("ray-head", [venv_bin("ray"), "start", "--head", "--block", f"--temp-dir={tmp / 'head'}",
                                       "--num-cpus=0", f"--port={ports['gcs']}", "--dashboard-host=127.0.0.1",
                                       f"--dashboard-port={ports['dashboard']}", "--include-dashboard=true",
                                       *self._ray_ports()], self.node_env())
        wait_for("the Ray head", lambda: len(self.ray_nodes()) >= 1, 120, self.log("ray-head"), pid)
        out(f"  ray-head: {self.gcs_address}, dashboard and job API {self.dashboard_url} (0 CPUs)", flush=True)

    def _start_worker(self, name: str, tmp: Path, cpus: float, out) -> None:
        """One worker node joining the head; it waits until the head counts one node more."""
        before = len(self.ray_nodes())
        pid = self.launch(name, [venv_bin("ray"), "start", f"--address={self.gcs_address}", "--block",
                                 f"--temp-dir={tmp / name}", f"--num-cpus={cpus:g}", *self._ray_ports()], self.node_env())
        wait_for(name, lambda: len(self.ray_nodes()) >= before + 1, 120, self.log(name), pid)
        out(f"  {name}: {cpus:g} CPUs", flush=True)

    # -- one service at a time: fault drills (docs/reliability.md)

    def stop(self, name: str, kill: bool = False, out=print) -> None:
        """End one service's processes by pid (kill: SIGKILL at once, as a crash or a lost node would)."""
        pid = self._recorded(name)
        if kill:
            signal_sessions([pid], signal.SIGKILL)
            time.sleep(1)
            left = session_members(pid)
        else:
            left = end_sessions([pid], first=STOP_SIGNAL.get(name, signal.SIGTERM))
        out(f"  {name}: {'killed' if kill else 'ended'}" + (f", still running: {left}" if left else ""), flush=True)

    def start(self, name: str, out=print) -> None:
        """Start one stopped service again: PostgreSQL and MLflow on their ports and data, a worker as a new node."""
        if alive(self._recorded(name)):
            raise ClusterError(f"{name} is running (pid {self.state['processes'][name]}): stop it first")
        if name == "postgres":
            self._start_postgres(Path(self.state["tmp"]), out)
        elif name == "mlflow":
            self._start_mlflow(out)
        elif name == "ray-head":
            # A new head knows no nodes: workers left from the old one must go first.
            stale = [w for w, pid in self.state["processes"].items() if w.startswith("ray-worker-") and alive(pid)]
            if stale:
                raise ClusterError(f"{', '.join(stale)} still run against the lost head: stop them first")
            self._start_head(Path(self.state["tmp"]), out)
        elif name.startswith("ray-worker-"):
            self._start_worker(name, Path(self.state["tmp"]), float(self.state["cpus_per_worker"]), out)
        else:
            raise ClusterError(f"no service {name!r}: postgres, mlflow, ray-head or ray-worker-N")

    def _recorded(self, name: str) -> int:
        """The pid up recorded for a service, or a ClusterError listing the names there are."""
        processes = self.state.get("processes", {})
        if name not in processes:
            raise ClusterError(f"no service {name!r} in {self.state_path}: one of {', '.join(processes) or '(none: run up)'}")
        return processes[name]

    # -- what users read

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.state['ports']['mlflow']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.state['ports']['dashboard']}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.state['ports']['gcs']}"

    def ray_nodes(self) -> list[dict]:
        """The alive Ray nodes, from the dashboard's state API (empty when it does not answer)."""
        request = urllib.request.Request(f"{self.dashboard_url}/api/v0/nodes?limit=100",
                                         headers={"Authorization": f"Bearer {self.state['token']}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                nodes = json.loads(resp.read())["data"]["result"]["result"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return []
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def env_exports(self) -> dict[str, str]:
        """The environment a client needs: job submission, drivers, MLflow."""
        return {
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,  # `ray job submit` and the jobs SDK
            "RAY_ADDRESS": self.gcs_address,  # a driver started here: python sweeps/kappa_by_order.py
            "RAY_AUTH_MODE": "token",  # the Ray CLI sends the token only in this mode
            "RAY_AUTH_TOKEN": self.state["token"],
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "RCGM_STORAGE_PATH": self.state["storage"],
        }

    def write_env_file(self) -> Path:
        """env.sh: the exports above, readable only by this user (it holds the token)."""
        path = self.dir / ENV_FILE
        path.write_text("".join(f"export {k}={v}\n" for k, v in self.env_exports().items()))
        path.chmod(0o600)
        return path

    def status(self, out=print) -> bool:
        """Print each process and service; True when all are up."""
        if not self.state.get("processes"):
            out(f"no cluster recorded in {self.state_path}")
            return False
        ok = True
        for name, pid in self.state["processes"].items():
            up = alive(pid)
            ok &= up
            out(f"  {name:<14} pid {pid:<8} {'running' if up else 'NOT running'}  (log {self.log(name)})")
        mlflow_ok = http_ok(f"{self.tracking_uri}/health")
        nodes = self.ray_nodes()
        out(f"  MLflow {self.tracking_uri}: {'healthy' if mlflow_ok else 'NOT answering'}")
        out(f"  Ray {self.gcs_address}: {len(nodes)} nodes alive "
            + ", ".join(f"{n['node_id'][:8]} ({'head' if n.get('is_head_node') else 'worker'} {n.get('node_ip')})" for n in nodes))
        out(f"  storage: {self.state['storage']}; environment: source {self.dir / ENV_FILE}")
        return ok and mlflow_ok and len(nodes) == 1 + int(self.state.get("workers", 0))

    def down(self, purge: bool, out=print) -> list[int]:
        """End every process up started (workers first, the database last); return any survivor's pid."""
        order = sorted(self.state.get("processes", {}).items(),
                       key=lambda kv: (not kv[0].startswith("ray-worker"), kv[0] == "ray-head", kv[0] == "mlflow", kv[0] == "postgres"))
        left = []
        for name, pid in order:
            survivors = end_sessions([pid], first=STOP_SIGNAL.get(name, signal.SIGTERM))
            out(f"  {name}: ended" + (f", still running: {survivors}" if survivors else ""), flush=True)
            left += survivors
        tmp = self.state.get("tmp")
        if tmp and Path(tmp).exists() and not left:
            shutil.rmtree(tmp, ignore_errors=True)
        self.state["processes"] = {}
        if purge and not left:
            shutil.rmtree(self.dir, ignore_errors=True)
            out(f"  removed {self.dir}")
        elif self.dir.exists():
            self.save()
            (self.dir / ENV_FILE).unlink(missing_ok=True)
        return left


def default_dir() -> Path:
    """runs/cluster (under $RCGM_RUNS_DIR when set)."""
    return runs_dir() / "cluster"


def main(argv=None) -> int:
    """up / status / stop / start / down."""
    parser = argparse.ArgumentParser(prog="python -m sweeps.local_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "status", "down", "stop", "start"))
    parser.add_argument("service", nargs="?", help="with stop/start: postgres, mlflow, ray-head or ray-worker-N (a fault drill)")
    parser.add_argument("--dir", type=Path, default=None, help="the cluster's folder: database, artifacts, checkpoints, "
                        "logs, state (default runs/cluster)")
    parser.add_argument("--workers", type=int, default=2, help="Ray worker nodes (default 2)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker node offers (default 1)")
    parser.add_argument("--purge", action="store_true", help="with down: also delete the folder (database, runs, checkpoints)")
    parser.add_argument("--kill", action="store_true", help="with stop: SIGKILL at once, as a crash would (default: SIGTERM, then SIGKILL)")
    args = parser.parse_args(argv)
    if (args.command in ("stop", "start")) != (args.service is not None):
        parser.error("stop and start take one service (postgres, mlflow, ray-head, ray-worker-N); the other commands none")
    cluster = LocalCluster(args.dir or default_dir())
    try:
        if args.command == "up":
            print(f"local cluster in {cluster.dir}:", flush=True)
            cluster.up(args.workers, args.cpus_per_worker)
            exports = "".join(f"  export {k}={v}\n" for k, v in cluster.env_exports().items())
            print(f"up in {cluster.state['up_seconds']} s. The environment of a client of this cluster:\n{exports}"
                  f"or, the same, from this shell:\n  source {cluster.dir / ENV_FILE}\n"
                  f"then:\n  ray job submit --working-dir . -- python sweeps/kappa_by_order.py --smoke\n"
                  f"  (MLflow UI: {cluster.tracking_uri}; Ray dashboard: {cluster.dashboard_url}; "
                  f"checkpoints: {cluster.state['storage']})")
            return 0
        if args.command == "status":
            return 0 if cluster.status() else 1
        if args.command == "stop":
            cluster.stop(args.service, kill=args.kill)
            return 0
        if args.command == "start":
            cluster.start(args.service)
            return 0
        left = cluster.down(args.purge)
        return 1 if left else 0
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
