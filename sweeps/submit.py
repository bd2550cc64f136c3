"""Submit a sweep to a Ray cluster with this checkout as working dir and its git commit attached.

  python -m sweeps.submit --address http://HEAD:8265 -- sweeps/kappa_by_order.py --smoke

This is `ray job submit --working-dir . -- python ...` plus the submitter's git commit and
dirty flag as environment variables: `.rayignore` keeps `.git` out of the upload, so workers
could not read them otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PASS_THROUGH = ("MLFLOW_TRACKING_URI", "RCGM_RUNS_DIR", "RCGM_STORAGE_PATH", "RCGM_CACHE_DIR", "RCGM_FID_WEIGHTS")


def job_env() -> dict[str, str]:
    """Environment variables every process of the job gets."""
    from trainables.ray_setup import WORKER_ENV
    from trainables.tracking import git_info

    info = git_info()
    env = {**WORKER_ENV, "RCGM_GIT_COMMIT": info["git.commit"], "RCGM_GIT_DIRTY": info["git.dirty"]}
    env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    return env


def submit_command(address: str, script_args: list[str], no_wait: bool = False) -> list[str]:
    """The `ray job submit` command line."""
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "job", "submit", "--address", address, "--working-dir", str(REPO_ROOT),
           "--runtime-env-json", json.dumps({"env_vars": job_env()})]
    if no_wait:
        cmd.append("--no-wait")
    return cmd + ["--", "python", *script_args]


def client_env() -> dict[str, str]:
    """The submitting client's environment: send Ray's auth token when one is at hand.

    `ray start --head` (Ray 2.60) turns token auth on and writes the token under ~/.ray, but
    the `ray job submit` client only sends it when RAY_AUTH_MODE=token.
    """
    env = dict(os.environ)
    has_token = env.get("RAY_AUTH_TOKEN") or Path(env.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).is_file()
    if "RAY_AUTH_MODE" not in env and has_token:
        env["RAY_AUTH_MODE"] = "token"
    return env


def address_problem(address: str, timeout: float = 10.0) -> str | None:
    """Why `ray job submit` could not reach address (Ray's own client answers with a traceback); None if it answers."""
    from trainables.ray_setup import _host_port, answers

    where = _host_port(address if "://" in address else "http://" + address)
    if where is None:
        return f"--address {address} has no port: pass the head's dashboard address, e.g. http://HEAD:8265"
    if not answers(*where, timeout=timeout):
        return (f"no Ray dashboard answers at {address} within {timeout:.0f} s: start the cluster "
                f"(`python -m sweeps.local_cluster up` here), or fix --address / RAY_ADDRESS")
    return None


def main(argv=None) -> int:
    """Parse, then hand over to `ray job submit`."""
    parser = argparse.ArgumentParser(prog="python -m sweeps.submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"), help="Ray dashboard address of the cluster (default RAY_ADDRESS or %(default)s)")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- then the script and its flags")
    args = parser.parse_args(argv)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not script:
        parser.error("name the script after --, e.g. -- sweeps/kappa_by_order.py --smoke")
    problem = address_problem(args.address)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return subprocess.call(submit_command(args.address, script, args.no_wait), cwd=REPO_ROOT, env=client_env())


if __name__ == "__main__":
    sys.exit(main())
