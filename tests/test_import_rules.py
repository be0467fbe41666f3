"""The house's import rules, read from the source (standard-library `ast`, nothing is imported).

Layers: `models` (network definitions) know nothing of training; `train` knows nothing of the CLI
or of particular experiments; experiment and sweep files are data that the launcher reads; and no
two modules import each other, directly or around a loop, since a cycle makes the import order
decide what works. Imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "train", "launch", "experiments", "benchmarks")

# folder -> the repository packages its files must not import
RULES: dict[str, tuple[str, ...]] = {
    "models": ("train", "launch", "experiments", "benchmarks"),
    "experiments": ("launch", "train", "benchmarks"),
    "train": ("launch", "experiments", "benchmarks"),
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository, e.g. "train/tasks/base.py"
    line: int
    importer: str  # module name of the importing file
    module: str  # the imported module, resolved to a repository submodule where it is one

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _sources() -> dict[str, Path]:
    """Every Python module of the repository's packages, by dotted name."""
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _targets(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]
) -> list[str]:
    """The modules an import statement loads; `from pkg import name` is `pkg.name` when that is
    one of `modules`, and relative imports are made absolute."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
        for alias in node.names
    ]


@functools.cache
def _imports() -> tuple[Import, ...]:
    found = []
    modules = set(_sources())
    for name, path in _sources().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        file = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for module in _targets(node, name, path.name == "__init__.py", modules):
                    found.append(Import(file, node.lineno, name, module))
    return tuple(dict.fromkeys(found))  # `from a import b, c` is one import of `a`


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layers_import_only_what_they_may(folder: str):
    forbidden = RULES[folder]
    bad = [
        str(i)
        for i in _imports()
        if i.file.startswith(f"{folder}/") and i.module.split(".")[0] in forbidden
    ]
    if bad:
        pytest.fail(
            f"{folder}/ must not import {', '.join(forbidden)}:\n" + "\n".join(bad), pytrace=False
        )


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    modules = set(_sources())
    graph = [i for i in _imports() if i.module in modules and i.module != i.importer]
    edges: dict[str, set[str]] = {}
    for i in graph:
        edges.setdefault(i.importer, set()).add(i.module)
    problems = []
    for cycle in _cycles(edges):
        inside = [str(i) for i in graph if i.importer in cycle and i.module in cycle]
        problems.append(f"cycle among {', '.join(cycle)}:\n  " + "\n  ".join(inside))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_the_walk_resolves_submodules_and_relative_imports_and_finds_loops():
    modules = {"train.errors", "train.tasks", "train.tasks.base", "train.data.splits"}
    tree = ast.parse("def f():\n    from . import base\n    from ..data import splits\n")
    inner, outer = (n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _targets(inner, "train.tasks", True, modules) == ["train.tasks.base"]
    assert _targets(inner, "train.tasks.lm", False, modules) == ["train.tasks.base"]
    assert _targets(outer, "train.tasks.base", False, modules) == ["train.data.splits"]
    plain = ast.parse("from train import errors, tasks\nimport train.data.splits").body
    assert _targets(plain[0], "models.x", False, modules) == ["train.errors", "train.tasks"]
    assert _targets(plain[1], "models.x", False, modules) == ["train.data.splits"]
    assert _cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b"]]
