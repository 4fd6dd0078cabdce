"""Check the package's import graph: no cycle among its modules, and no module importing from a room above it.

The rooms are the folders of ``lightning_rlhf/`` (docs/architecture.md), ranked low to high; a room may import
from lower rooms only. The package's ``__init__`` may import ``strategies`` (registering the strategy names), and
``commands`` the package root. Prints the room-to-room imports; exits 1 on a cycle or an import going up.

    python scripts/check_imports.py
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_rlhf"
RANK = {"algorithms": 0, "models": 1, "data": 2, "rewards": 2, "strategies": 2, "environments": 3, "callbacks": 4,
        "modules": 4, "commands": 5}
ALLOWED = {("", "strategies"), ("commands", "")}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    def resolve(name: str) -> str:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parents + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target) if target.startswith("lightning_rlhf") else ""
                if found and found != name:
                    edges[name].add(found)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def main() -> int:
    edges = import_graph(module_files())
    arrows = sorted({(room(a), room(b)) for a, targets in edges.items() for b in targets if room(a) != room(b)})
    upward = [(a, b) for a, b in arrows if (a, b) not in ALLOWED
              and (a not in RANK or b not in RANK or RANK[b] >= RANK[a])]
    for a, b in arrows:
        print(f"{a or '(root)'} -> {b or '(root)'}{'   <- goes up' if (a, b) in upward else ''}")
    found = cycles(edges)
    print(f"cycles: {found or 'none'}; imports going up: {len(upward)}")
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main())
