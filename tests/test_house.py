"""The shape of the code base (issue 25): imports only run down, files and functions stay small, and
every import deferred into a function says why. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

MAX_FILE_LINES = 310       # "about 300"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*(REPO / "qffs").rglob("*.py"), *(REPO / "cli").rglob("*.py")]):
        if path.is_symlink() or any(p.is_symlink() for p in path.parents if REPO in p.parents):
            continue   # a checkout's qffs/cli link to cli/: the same files
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[0] == "cli":
            parts = ["qffs", "cli", *parts[1:]]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _walk(tree: ast.AST, depth: int = 0):
    """(node, depth in functions) for every import and function, skipping ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child, depth
        yield from _walk(child, depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for node, _ in _walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, path.name == "__init__.py"):
                    resolved = _resolve(target) if target.startswith("qffs") else None
                    if resolved and resolved != module:
                        edges.add(resolved)
        graph[module] = edges
    return graph


def test_imports_only_run_down_the_house():
    """No cycle in the graph of every import, at module level or deferred into a function."""
    graph, floors, visiting = _graph(), {}, []

    def floor(module: str) -> int:
        if module in visiting:
            raise AssertionError("import cycle: " + " -> ".join(visiting[visiting.index(module):] + [module]))
        if module not in floors:
            visiting.append(module)
            floors[module] = 1 + max((floor(m) for m in graph[module]), default=0)
            visiting.pop()
        return floors[module]

    assert max(floor(m) for m in graph) >= 1   # the floors are listed in docs/architecture.md


def test_no_file_of_qffs_is_long():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in MODULES.values()}
    long = {name: n for name, n in sizes.items() if n > MAX_FILE_LINES}
    assert not long


def test_no_function_is_long():
    """Whole functions; a command's typer option declarations are its signature, so there the body counts."""
    long = []
    for module, path in MODULES.items():
        for node, _ in _walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.body[0].lineno if module.startswith("qffs.cli.commands") else node.lineno
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {node.end_lineno - start + 1} lines")
    assert not long


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_deferred_import_says_why(module):
    """An import inside a function carries a comment in its block (start-up time, optional dependency, ...)."""
    lines = MODULES[module].read_text().splitlines()
    silent = []
    for node, depth in _walk(ast.parse("\n".join(lines))):
        if depth and isinstance(node, (ast.Import, ast.ImportFrom)):
            row, explained = node.lineno - 1, False
            while row >= 0:
                text = lines[row].strip()
                if "#" in lines[row]:
                    explained = True
                    break
                if row < node.lineno - 1 and text and not text.startswith(("import ", "from ", "matplotlib.use")):
                    break
                row -= 1
            if not explained:
                silent.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not silent
