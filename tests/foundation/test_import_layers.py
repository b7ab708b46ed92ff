"""Which package may import which: a static scan of every import statement.

Every ``import`` and ``from ... import`` in the packages counts, at module
level and inside functions (the lazy imports that keep start-up cheap are
dependencies all the same), and so do the command line's mounts by name
(``workers.cli._LAZY``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "storage", "matching", "crawler", "notices", "registry", "webapp", "workers")

#: Package cycles that are allowed, with the reason (none).
ALLOWED_PACKAGE_CYCLES: dict[frozenset[str], str] = {}
#: The command line and the one-command job: the top layer, which mounts every
#: package's commands. It lives in ``workers`` for the ``artwatch =
#: workers.cli:main`` entry point; for the package graph it is a layer of its own.
CLI_LAYER = {"workers.cli", "workers.run", "workers.deadletters", "workers.__main__", "workers.demo"}
#: The task queue: the Celery app, the broker checks and the maintenance hook.
#: The layers below the command line reach it through the composition root
#: (``registry.root.queue_task``, ``queue_health``); it imports only settings and the matcher's replica, never the
#: tasks, the registry or the web app. It lives in ``workers`` beside the tasks;
#: for the package graph it is a layer of its own.
QUEUE_LAYER = {"workers.app", "workers.broker", "workers.maintenance"}
#: The only modules in ``registry`` that may import ``workers``, and what they may import.
REGISTRY_TO_WORKERS = {"registry.root": {"workers.app", "workers.broker", "workers.maintenance"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` is (or lies in), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _lazy_mounts(tree: ast.Module) -> Iterator[str]:
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "_LAZY":
            assert isinstance(node.value, ast.Dict)
            for value in node.value.values:
                assert isinstance(value, ast.Tuple) and isinstance(value.elts[0], ast.Constant)
                yield str(value.elts[0].value)


def _imports(module: str) -> set[str]:
    """Every project module ``module`` imports, anywhere in its code."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            resolved = _resolve(name)
            if resolved is not None and resolved != module:
                targets.add(resolved)
    if module == "workers.cli":
        targets.update(m for m in _lazy_mounts(tree) if m in MODULES)
    return targets


GRAPH = {module: _imports(module) for module in MODULES}


def _top(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _layer(module: str) -> str:
    if module in CLI_LAYER:
        return "cli"
    return "queue" if module in QUEUE_LAYER else _top(module)


def _sccs(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _edges(source: str, target: str) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _top(m) == source for t in ts if _top(t) == target)


def test_the_scan_sees_lazy_imports() -> None:
    """A function-level import counts: the matcher's maintenance hook is imported inside a property."""
    assert "workers.maintenance" in GRAPH["registry.root"]
    assert "matching" in GRAPH["registry.root"]
    assert "webapp.cli" in GRAPH["workers.cli"]  # mounted by name


def test_no_package_cycles_but_the_listed_ones() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        packages[_layer(module)].update(_layer(t) for t in targets if _layer(t) != _layer(module))
    assert not any(_layer(t) == "cli" for m, ts in GRAPH.items() if _layer(m) != "cli" for t in ts)
    cycles = [frozenset(c) for c in _sccs(packages)]
    unexpected = [sorted(c) for c in cycles if c not in ALLOWED_PACKAGE_CYCLES]
    detail = {f"{a} -> {b}": _edges(a, b) for c in cycles for a in c for b in c if a != b}
    assert not unexpected, detail


def test_no_module_cycle_crosses_a_package() -> None:
    for component in _sccs(GRAPH):
        assert len({_top(m) for m in component}) == 1, sorted(component)


def test_the_queue_layer_imports_no_tasks_registry_or_web_app() -> None:
    for module in QUEUE_LAYER:
        assert {_layer(t) for t in GRAPH[module]} <= {"config", "matching", "queue"}, (module, GRAPH[module])


def test_registry_reaches_only_the_queue_side_of_workers() -> None:
    for module, targets in GRAPH.items():
        if _top(module) != "registry":
            continue
        into_workers = {t for t in targets if _top(t) == "workers"}
        assert into_workers <= REGISTRY_TO_WORKERS.get(module, set()), (module, into_workers)
    for allowed in REGISTRY_TO_WORKERS.values():
        for queue_module in allowed:
            assert not any(_top(t) == "registry" for t in GRAPH[queue_module]), queue_module


def test_workers_and_webapp_do_not_import_each_other() -> None:
    """The web app reaches the registry service through ``registry`` and the
    maintenance hook, queue health and "crawl now" through the composition root;
    the alerts the workers send live in ``notices.alerts``. The one exception is the command line mounting
    the ``web`` and ``users`` commands by name (``workers.cli._LAZY``)."""
    assert _edges("webapp", "workers") == []
    assert _edges("workers", "webapp") == ["workers.cli -> webapp.cli"]


def test_the_cli_the_job_and_the_dead_letters_do_not_import_each_other_in_a_circle() -> None:
    trio = {"workers.cli", "workers.run", "workers.deadletters"}
    sub = {m: GRAPH[m] & trio for m in trio}
    assert _sccs(sub) == []
    # Nor through the task module they all use.
    assert not GRAPH["workers.tasks"] & trio


def test_the_registry_service_is_its_own_module() -> None:
    assert not (ROOT / "workers" / "pipeline.py").exists() and not (ROOT / "webapp" / "alerts.py").exists()
    assert "notices.alerts" in MODULES
    assert not any(_top(t) in ("workers", "webapp") for t in GRAPH["registry.service"] - {"registry.root"})
    for low in ("config", "storage", "matching", "crawler", "notices"):
        assert not _edges(low, "registry"), (low, _edges(low, "registry"))
