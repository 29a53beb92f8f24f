"""The package's shape, checked: no import cycle, small modules, each layer keeping its rule.

Imports are read with `ast`, those inside functions included (a lazy import still makes a
cycle: it only hides it until the function runs). An edge goes to the module an import
names: `from ordergraph.resolvers import orders` names the submodule `orders`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ordergraph"
MAX_LINES = 450
WEB_LIBRARIES = ("strawberry", "starlette", "graphql", "uvicorn")
# What only the demo and the tests run.
OFFLINE = ("ordergraph.demo", "ordergraph.stripe_emulator")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in path.parts
    }


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `name` imports, ours and others', wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among our modules, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node] & graph.keys()):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "os"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_lazy_and_relative_imports_are_seen(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ordergraph.events import redis\n    from . import x\n")
    found = _imports("ordergraph.events.m", source, {"ordergraph.events.redis"})
    assert found == {"ordergraph.events.redis", "ordergraph.events"}


def test_the_package_has_no_import_cycle() -> None:
    assert _cycle(_graph()) is None


def test_no_module_is_over_the_limit() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_domain_knows_nothing_of_graphql_or_http() -> None:
    graph = _graph()
    leaks = {
        name: sorted(i for i in imports if i.split(".")[0] in WEB_LIBRARIES)
        for name, imports in graph.items()
        if name.startswith("ordergraph.domain")
    }
    assert {name: found for name, found in leaks.items() if found} == {}
    assert len(leaks) >= 9


def test_production_code_does_not_import_the_demo_or_the_emulator() -> None:
    graph = _graph()
    offenders = {
        name: sorted(i for i in imports if i.startswith(OFFLINE))
        for name, imports in graph.items()
        if not name.startswith(OFFLINE) and name != "ordergraph.cli"
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_emulator_stands_alone() -> None:
    graph = _graph()
    emulator = {name: imports for name, imports in graph.items() if name.startswith(OFFLINE[1])}
    assert emulator
    outside = {
        i for imports in emulator.values() for i in imports if i.startswith("ordergraph.")
    } - set(emulator)
    assert outside == set()
