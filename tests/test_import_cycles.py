"""No module of the project's packages imports one that imports it back, directly or through
others: imports inside functions count too, since a cycle dodged by a late import is still one
module depending on the other both ways. Read from the source with ast; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cluster", "comgan", "data_shards")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(tree: ast.Module, package: str, known: set[str]) -> set[str]:
    """The project modules a module's source imports, at any depth of its code. `from . import x`
    and `from package import x` name a module when x is one, else the package's __init__."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per dot after the first
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for package in PACKAGES for p in (ROOT / package).glob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name.removesuffix(".__init__")] = imported_modules(ast.parse(path.read_text()), package, set(paths))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colouring modules as it goes)."""
    done, path = set(), []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph.get(module, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), None)


def test_the_graph_sees_every_kind_of_import():
    """The parser finds the imports the project writes (a graph that missed them would find no cycle)."""
    graph = import_graph()
    assert "cluster.storage" in graph["cluster.pipeline"]       # from .storage import RunLayout
    assert "cluster.checkpoints" in graph["cluster.pipeline"]   # from . import checkpoints
    assert "data_shards.io" in graph["cluster.pipeline"]        # from data_shards.io import ...
    assert "cluster.pipeline" in graph["cluster.cli"]           # inside run_job


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
