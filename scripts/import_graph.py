"""The package's import graph: module-to-module imports (top-level and inside functions), the cycles in it,
the imports that point up the declared order of subpackages, and every import written inside a function
with its line.

    python scripts/import_graph.py            # summary: modules, imports inside functions, cycles, upward imports
    python scripts/import_graph.py --inner    # also list each import inside a function with its comment

tests/test_layout.py runs the same functions: no cycle, no upward import, and every import inside a function
says why.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PACKAGE = Path(__file__).resolve().parents[1] / "xkd_cli"
# The subpackages from the bottom up: a module imports from its own subpackage and those listed before it,
# never from one listed after it.
LAYERS = ("core", "config", "data", "models", "objectives", "evaluation", "training", "experiments", "cli")
# Modules directly in the package that sit above every layer; the package itself (__init__, the version)
# sits below them all.
ENTRY_POINTS = ("__main__",)


@dataclass(frozen=True)
class InnerImport:
    path: Path
    line: int
    text: str
    internal: bool  # imports an xkd_cli module


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    """The xkd_cli modules an import statement loads (``from pkg import mod`` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = module.split(".") if known[module].name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [name for name in names if name in known]


def graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[InnerImport]]:
    """Edges module → modules it imports (anywhere in the file), and the imports written inside functions."""
    known = modules(package)
    edges: dict[str, set[str]] = {name: set() for name in known}
    inner: list[InnerImport] = []
    for name, path in known.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    targets = _targets(name, child, known)
                    edges[name].update(t for t in targets if t != name)
                    if in_function:
                        inner.append(InnerImport(path, child.lineno, lines[child.lineno - 1].strip(), bool(targets)))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse(source), False)
    return edges, inner


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def rank(module: str, layers: Sequence[str] = LAYERS, entry_points: Sequence[str] = ENTRY_POINTS) -> int:
    """A module's height in the order: -1 for the package itself, its subpackage's index in ``layers``, or
    ``len(layers)`` for an entry point. A module in no layer is an error naming the fix."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[1] in layers:
        return layers.index(parts[1])
    if len(parts) == 2 and parts[1] in entry_points:
        return len(layers)
    raise ValueError(f"{module} is in no layer: add its subpackage to LAYERS (or the module to ENTRY_POINTS) "
                     "in scripts/import_graph.py")


def upward(edges: dict[str, set[str]], layers: Sequence[str] = LAYERS,
           entry_points: Sequence[str] = ENTRY_POINTS) -> list[tuple[str, str]]:
    """The imports (importer, imported) that point up the order: the imported module sits in a later layer."""
    return sorted((source, target) for source, targets in edges.items() for target in targets
                  if rank(target, layers, entry_points) > rank(source, layers, entry_points))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner", action="store_true", help="list every import inside a function")
    args = parser.parse_args()
    edges, inner = graph()
    found = cycles(edges)
    up = upward(edges)
    print(f"modules: {len(edges)}; imports inside functions: {len(inner)} "
          f"({sum(i.internal for i in inner)} of xkd_cli modules); cycles: {len(found)}; upward imports: {len(up)}")
    print("layers, bottom up:", " → ".join(LAYERS))
    for component in found:
        print("cycle:", " ↔ ".join(component))
    for source, target in up:
        print(f"upward: {source} → {target}")
    if args.inner:
        for item in inner:
            print(f"{item.path.relative_to(PACKAGE.parent)}:{item.line}: {item.text}")


if __name__ == "__main__":
    main()
