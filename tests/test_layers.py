"""The package's layers import one way only (docs/ARCHITECTURE.md).

Every ``clusterchat`` import is counted, including those only for type
checking and those inside functions: a type-only arrow upwards is still a
layer that knows its caller. ``python -m tests.test_layers`` prints the
arrows between layers and any import cycle between modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

#: Each layer may import only layers of a lower rank (and itself).
RANKS = {
    "protocol": 0, "errors": 0, "budget": 0, "logs": 0, "tasks": 0,
    "config": 1, "options": 2,
    "storage": 3, "bus": 3,
    "service": 4,
    "server": 5,
    "client": 6, "bench": 6, "cluster": 6, "admin": 6,
    "cli": 7, "__main__": 8,
}  # fmt: skip

#: Import cycles still to break: none (the service's handler modules name
#: the ``service.context.Service`` protocol, not the ChatService).
KNOWN_CYCLES: list[set[str]] = []


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "clusterchat").rglob("*.py"):
        if "migrations" in path.parts:  # Alembic loads these by path
            continue
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(mods: dict[str, Path]) -> dict[tuple[str, str], set[str]]:
    """(importer, imported) -> how: "top", "typing" (under TYPE_CHECKING), "local"."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)

    def visit(name: str, node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            kind = how
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                kind = "typing"
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and how == "top":
                kind = "local"
            targets: list[str] = []
            if isinstance(child, ast.ImportFrom) and child.module:
                # `from clusterchat.x import y`: y may be a module of its own.
                targets = [f"{child.module}.{a.name}" for a in child.names]
                targets = [t for t in targets if t in mods] or [child.module]
            elif isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            for target in targets:
                if target in mods and target != "clusterchat":
                    edges[(name, target)].add(kind)
            visit(name, child, kind)

    for name, path in mods.items():
        visit(name, ast.parse(path.read_text()), "top")
    return edges


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def cycles(names: list[str], edges: dict[tuple[str, str], set[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    after: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        if not a.startswith(b + "."):  # a package's __init__ is not a cycle
            after[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in after[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(group)

    for name in names:
        if name not in index:
            strong(name)
    return found


def test_layers_import_only_downwards() -> None:
    mods = modules()
    wrong = [
        f"{a} -> {b} ({', '.join(sorted(how))})"
        for (a, b), how in imports(mods).items()
        if layer(a) != layer(b) and RANKS[layer(a)] <= RANKS[layer(b)]
    ]
    assert not wrong


def test_every_layer_has_a_rank() -> None:
    assert {layer(m) for m in modules()} - {"clusterchat"} <= set(RANKS)


def test_no_import_cycles_but_the_known_ones() -> None:
    mods = modules()
    assert sorted(map(sorted, cycles(sorted(mods), imports(mods)))) == sorted(
        map(sorted, KNOWN_CYCLES)
    )


if __name__ == "__main__":
    mods = modules()
    edges = imports(mods)
    arrows: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (a, b), how in edges.items():
        if layer(a) != layer(b):
            arrows[(layer(a), layer(b))] |= how
    for (a, b), how in sorted(arrows.items(), key=lambda e: (-RANKS[e[0][0]], e[0])):
        print(f"{a:>9} -> {b:<9} {', '.join(sorted(how))}")
    for group in cycles(sorted(mods), edges):
        print("cycle:", " ".join(sorted(group)))
