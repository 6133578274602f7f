"""Layers point one way (docs/ARCHITECTURE.md, "Layers"), read from the imports themselves.

Every module under routecal/ is parsed with `ast`; every import counts, at module level or inside a
function: `import a.b`, `from a import b` (b a submodule or a name in a), relative imports
(`from . import x`, `from ..stats import y`) and `importlib.import_module("a.b")` with a string
literal; in a module that calls `import_module` with a computed name (a table of lazy re-exports,
`_LAZY = {"name": "routecal.stats.power"}`), every string constant naming a routecal module. The
graph of routecal modules must satisfy the layer rules and be acyclic.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (importing package, imported package): forbidden edges. A package is the module's first component
# below routecal (`routecal.stats.kernels` -> "stats"; `routecal.cli` -> "cli").
FORBIDDEN = {
    # stats: pure functions of arrays, no I/O, no models; probes: arrays in, arrays out.
    "stats": {"study", "report", "training", "models", "data", "files", "probes"},
    "probes": {"study", "report", "training", "models", "data"},
    "report": {"study"},
    "training": {"study"},
    "files": {"training", "study", "report"},
}


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Every module under root/routecal by dotted name."""
    return {module_name(p, root): p for p in sorted((root / "routecal").rglob("*.py"))}


def _resolve(name: str, modules: dict[str, pathlib.Path]) -> str | None:
    """The routecal module that `name` (a module or a name inside one) refers to, or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The routecal modules that module `name` (file `path`) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        resolved = _resolve(target, modules)
        if resolved is not None and resolved != name:
            found.add(resolved)

    tree = ast.parse(path.read_text(), filename=str(path))
    lazy = False  # import_module(<computed name>): the names come from string tables
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from a import b`: b is a submodule of a, or a name defined in a.
                full = f"{source}.{alias.name}"
                add(full if full in modules else source)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value)
            else:
                lazy = True
    if lazy:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in modules:
                add(node.value)
    return found


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module -> the routecal modules it imports (module level and inside functions)."""
    modules = all_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph is acyclic (iterative DFS)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "routecal"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from routecal.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\nfrom ..a import f\n")
    (pkg / "sub" / "c.py").write_text(
        "import importlib\ndef g():\n    return importlib.import_module('routecal.a')\n"
    )
    (pkg / "lazy.py").write_text(
        "import importlib\n_LAZY = {'f': 'routecal.a', 'x': 'not.a.module'}\n"
        "def __getattr__(name):\n    return importlib.import_module(_LAZY[name])\n"
    )
    graph = import_graph(tmp_path)
    assert graph["routecal.a"] == {"routecal.sub.b"}
    assert graph["routecal.sub.b"] == {"routecal.sub.c", "routecal.a"}
    assert graph["routecal.sub.c"] == {"routecal.a"}
    assert graph["routecal.lazy"] == {"routecal.a"}
    assert find_cycle(graph) in (
        ["routecal.a", "routecal.sub.b", "routecal.a"],
        ["routecal.a", "routecal.sub.b", "routecal.sub.c", "routecal.a"],
    )
    assert find_cycle({"x": {"y"}, "y": set()}) is None


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_layers_point_one_way(importer):
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if layer(module) == importer
        for target in targets
        if layer(target) in FORBIDDEN[importer]
    )
    assert not bad, (
        f"routecal.{importer} must not import {sorted(FORBIDDEN[importer])}:\n" + "\n".join(bad)
    )


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
