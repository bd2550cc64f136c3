"""The house's shape, read from the source: imports point down the layers and never form a cycle.

Imports made inside functions count: a cycle hidden in a function is still a cycle a reader has
to hold in their head, and it breaks the moment someone moves the import to the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainables", "sweeps", "dashboards", "bench")


def module_name(path: Path, root: Path = REPO) -> str:
    """trainables/rcgm/objective.py -> trainables.rcgm.objective (a package's __init__ is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, name: str, is_package: bool) -> set[str]:
    """Every module a file imports, at the top or inside functions, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from pkg import sub` imports the module pkg.sub when sub is one.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_graph(root: Path = REPO, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = imports_of(path.read_text(), name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def external_imports(name: str) -> set[str]:
    """Top-level package names a project module imports (torch, ray, mlflow, ...)."""
    path = REPO / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / name.replace(".", "/") / "__init__.py"
    return {t.split(".")[0] for t in imports_of(path.read_text(), name, path.name == "__init__.py")}


def test_no_import_cycles():
    assert cycles(project_graph()) == []


def test_the_cycle_check_has_teeth(tmp_path):
    # The shape the consolidation removed: a package __init__ and its submodule importing each other.
    pkg = tmp_path / "trainables" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "trainables" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("def load():\n    from trainables.data.images import f\n")
    (pkg / "images.py").write_text("from trainables.data import DatasetUnavailable\n")
    (pkg / "points.py").write_text("from . import images\n")
    graph = project_graph(tmp_path, packages=("trainables",))
    assert cycles(graph) == [["trainables.data", "trainables.data.images"]]


def layer(name: str) -> str:
    """The layer of a project module (docs/design.md's layer table)."""
    if name.startswith("trainables.rcgm"):
        return "method"
    if name.startswith(("trainables.models", "trainables.data", "trainables.metrics")):
        return "parts"
    if name in ("trainables.locations", "trainables.status", "trainables.cost_schema", "trainables.metric_names"):
        return "leaf"  # standard library only: every layer may import them
    return name.split(".")[0].replace("trainables", "trainable")


# Layer -> the layers it may import from. The dashboards read the setting declarations too
# (trainables.config and the method's ranges, both torch-free), for their column types and row order.
ALLOWED = {
    "method": {"method"},
    "parts": {"method", "parts", "leaf"},
    "leaf": set(),
    "trainable": {"method", "parts", "leaf", "trainable"},
    "dashboards": {"dashboards", "leaf"},
    "sweeps": {"method", "parts", "leaf", "trainable", "dashboards", "sweeps"},
    "bench": {"method", "parts", "leaf", "trainable", "dashboards", "sweeps", "bench"},
}
DASHBOARDS_READ = {"trainables.config", "trainables.rcgm.ranges"}
# Layer -> third-party packages it must not import.
BANNED = {"method": {"ray", "mlflow", "optuna"}, "parts": {"ray", "mlflow", "optuna"}, "leaf": {"torch", "ray", "mlflow"},
          "dashboards": {"ray", "torch"}}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import that points up (or sideways into a layer it may not use)."""
    wrong = []
    for name, targets in sorted(graph.items()):
        mine = layer(name)
        for target in sorted(targets):
            if target in ("trainables",) or layer(target) in ALLOWED[mine] or (mine == "dashboards" and target in DASHBOARDS_READ):
                continue
            wrong.append(f"{name} -> {target}")
    return wrong


def test_imports_point_down_the_layers():
    assert layer_violations(project_graph()) == []


def test_the_layer_check_has_teeth():
    assert layer_violations({"trainables.rcgm.objective": {"trainables.config"},
                             "trainables.data.images": {"trainables.tracking", "trainables.locations"},
                             "dashboards.collect": {"trainables.tracking", "trainables.config"}}) == [
        "dashboards.collect -> trainables.tracking", "trainables.data.images -> trainables.tracking",
        "trainables.rcgm.objective -> trainables.config"]


def test_layers_import_no_banned_package():
    wrong = []
    for name in project_graph():
        for package in BANNED.get(layer(name), ()):
            if package in external_imports(name):
                wrong.append(f"{name} -> {package}")
    assert wrong == []


def test_no_python_module_named_platform():
    # A `platform` module shadows the standard library on every Ray worker (working_dir first on sys.path).
    assert not [p for p in REPO.rglob("platform.py") if ".venv" not in p.parts]
