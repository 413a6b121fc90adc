"""The package's import graph: module-to-module imports (top-level and inside functions), the cycles in it,
and every import written inside a function with its line.

    python scripts/import_graph.py            # summary: modules, imports inside functions, cycles
    python scripts/import_graph.py --inner    # also list each import inside a function with its comment

tests/test_layout.py runs the same functions: no cycle, and every import inside a function says why.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xkd_cli"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner", action="store_true", help="list every import inside a function")
    args = parser.parse_args()
    edges, inner = graph()
    found = cycles(edges)
    print(f"modules: {len(edges)}; imports inside functions: {len(inner)} "
          f"({sum(i.internal for i in inner)} of xkd_cli modules); cycles: {len(found)}")
    for component in found:
        print("cycle:", " ↔ ".join(component))
    if args.inner:
        for item in inner:
            print(f"{item.path.relative_to(PACKAGE.parent)}:{item.line}: {item.text}")


if __name__ == "__main__":
    main()
