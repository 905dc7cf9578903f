"""The packages' layering, kept by a scan of every import (module level and inside functions):
data_pipeline < store < trainer < launch, no package imports one above it (not even for annotations),
and no two modules import each other at run time, directly or around a circle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("data_pipeline", "store", "trainer", "launch")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((REPO / layer).rglob("*.py"))}


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes under ``if TYPE_CHECKING:`` (imports for annotations, never run)."""
    nodes: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.body:
                nodes |= set(ast.walk(child))
    return nodes


def imports(path: Path, modules: dict[str, Path], run_time: bool = False) -> list[tuple[int, str]]:
    """(line, project module) of every import in ``path`` (``run_time``: not those under ``if
    TYPE_CHECKING:``); ``from pkg import name`` counts as an import of pkg.name when that is a module,
    else of pkg."""
    found = []
    tree = ast.parse(path.read_text())
    skip = type_checking_only(tree) if run_time else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            found += [(node.lineno, m) for m in subs] or [(node.lineno, node.module)]
    return [(line, m) for line, m in found if m.split(".")[0] in LAYERS]


def test_no_package_imports_one_above_it():
    modules = project_modules()
    upward = []
    for name, path in modules.items():
        here = LAYERS.index(name.split(".")[0])
        for line, target in imports(path, modules):
            if LAYERS.index(target.split(".")[0]) > here:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not upward, "imports pointing up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(upward)


def test_no_import_circle():
    modules = project_modules()
    graph = {
        name: sorted({t for _, t in imports(path, modules, run_time=True) if t in modules and t != name})
        for name, path in modules.items()
    }
    # a package's __init__ importing its own submodules is how packages expose them, not a circle
    graph = {n: [t for t in ts if not t.startswith(n + ".")] for n, ts in graph.items()}
    circles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for t in graph[node]:
            if state.get(t) == "open":
                circles.append(
                    " -> ".join(stack[stack.index(t) :] + [node, t]) if t in stack else f"{node} -> {t}"
                )
            elif t not in state:
                visit(t, [*stack, node])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])
    assert not circles, "modules that import each other:\n" + "\n".join(circles)
