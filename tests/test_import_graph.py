"""The modules of `telephony/` import each other without a cycle, and at the top.

Read from the source with `ast`, without importing anything: every `import` and
`from ... import` anywhere in a module counts (inside functions and `if TYPE_CHECKING:`
blocks too, since those are cycles put off rather than removed). Relative imports are
resolved to module names; importing a package counts as importing its `__init__`, and
`from pkg import name` where `pkg/name.py` (or `pkg/name/`) exists as importing that
submodule. The parent packages Python initialises on the way are not counted: they are
empty here apart from `telephony/__init__.py`, whose imports are inside `create_app` and
its command group.

Imports belong at the top of a module. Only the app factory and the CLI import inside
functions: importing any `telephony.*` module (the simulator, the migrations) runs
`telephony/__init__.py`, which must not load the whole API for them, and an app imports
the CLI (telephony/cli/) only when its command group is first used, so a web worker never does
(tests/test_web_worker_imports.py); and the CLI keeps the migration tooling (Alembic) and
each command's services unloaded until a command needs them.

One exception, named and explicit: the carrier SDKs (telnyx, plivo, twilio.rest), and
httpx, the HTTP layer of the Telnyx SDK only, are imported when a carrier of their kind is
first used, through `carriers/lazy.py`'s `lazy_module` (re-exported by `carriers/sdk.py`; a
module-level `X = lazy_module("sdk.module")`, with the real import under `if TYPE_CHECKING:`
for the type checker). No other module calls `importlib` or `__import__`, and `lazy_module`
names those packages only (checked below), so every import of the service's own modules
stays visible to the cycle check.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "telephony"
PACKAGE = PACKAGE_DIR.name

# Modules that may import inside functions (see the module docstring): the app factory's, and
# every module of the CLI package.
LAZY_IMPORTS_ALLOWED = {"telephony", "telephony.cli"}
# The one module that imports by name at run time, and the packages it may import so.
DYNAMIC_IMPORTER = "telephony.carriers.lazy"
LAZY_SDK_PACKAGES = {"telnyx", "plivo", "twilio", "httpx"}


def may_import_lazily(module: str) -> bool:
    return module in LAZY_IMPORTS_ALLOWED or module.startswith("telephony.cli.")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def module_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_in(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement and whether it sits inside a function or class body."""

    def walk(node: ast.AST, nested: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, nested
            yield from walk(child, nested or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)))

    yield from walk(tree, False)


def imported_modules(statement: ast.Import | ast.ImportFrom, importer: str, importer_is_package: bool,
                     modules: set[str]) -> set[str]:
    """The telephony modules one statement imports."""
    if isinstance(statement, ast.Import):
        names = [alias.name for alias in statement.names]
    else:
        if statement.level:
            # A package's own name is its base for "." ; a module's base is its package.
            base = importer.split(".") if importer_is_package else importer.split(".")[:-1]
            base = base[:len(base) - (statement.level - 1)]
            source = ".".join(base + ([statement.module] if statement.module else []))
        else:
            source = statement.module or ""
        names = []
        for alias in statement.names:
            submodule = f"{source}.{alias.name}"
            names.append(submodule if submodule in modules else source)
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """The graph of telephony-internal imports, and the imports made inside functions
    as (module, line, statement)."""
    files = module_files()
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in files}
    nested_imports = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for statement, nested in imports_in(tree):
            targets = imported_modules(statement, name, is_package(path), modules)
            unknown = targets - modules
            assert not unknown, f"{name} imports {sorted(unknown)}, which are not modules of {PACKAGE}"
            graph[name] |= targets - {name}
            if nested:
                nested_imports.append((name, statement.lineno, ast.unparse(statement)))
    return graph, nested_imports


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → ... → a) through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_within(graph, group) for group in groups]


def _cycle_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected group


def test_the_telephony_package_has_no_import_cycle():
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "import cycles in telephony/:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_imports_are_at_the_top_of_their_module():
    _, nested_imports = import_graph()
    offending = [(module, line, statement) for module, line, statement in nested_imports
                 if not may_import_lazily(module)]
    assert not offending, "imports inside functions:\n" + "\n".join(
        f"{module}:{line}: {statement}" for module, line, statement in offending)


def test_the_graph_reader_resolves_imports_and_finds_cycles():
    modules = {"telephony", "telephony.api", "telephony.api.calls", "telephony.models", "telephony.services",
               "telephony.services.events"}

    def targets(source: str, importer: str, package: bool = False) -> set[str]:
        [statement] = ast.parse(source).body
        return imported_modules(statement, importer, package, modules)

    assert targets("from ..models import Call", "telephony.services.events") == {"telephony.models"}
    assert targets("from . import events", "telephony.services.events") == {"telephony.services.events"}
    assert targets("from .api import calls, bp", "telephony", package=True) == {"telephony.api.calls", "telephony.api"}
    assert targets("from ..services import events", "telephony.api.calls") == {"telephony.services.events"}
    assert targets("import telephony.models", "telephony.api.calls") == {"telephony.models"}
    assert targets("from flask import Flask", "telephony.api.calls") == set()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def dynamic_imports() -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """(uses of importlib / __import__ outside DYNAMIC_IMPORTER, every lazy_module(...) call
    with its argument) as (module, line, source)."""
    dynamic, lazy = [], []
    for name, path in module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if name != DYNAMIC_IMPORTER and "importlib" in {n.split(".")[0] for n in names}:
                    dynamic.append((name, node.lineno, ast.unparse(node)))
            elif isinstance(node, ast.Name) and node.id == "__import__":
                dynamic.append((name, node.lineno, "__import__"))
            elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "lazy_module":
                lazy.append((name, node.lineno, ast.unparse(node)))
    return dynamic, lazy


def test_only_carrier_sdks_are_imported_lazily_and_only_through_lazy_module():
    dynamic, lazy = dynamic_imports()
    assert not dynamic, "imports by name outside carriers/lazy.py's lazy_module:\n" + "\n".join(
        f"{module}:{line}: {source}" for module, line, source in dynamic)
    assert lazy, "lazy_module is not used: drop DYNAMIC_IMPORTER and this test"
    for module, line, source in lazy:
        call = ast.parse(source).body[0].value  # type: ignore[attr-defined]
        [argument] = call.args
        assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), f"{module}:{line}: {source}"
        assert argument.value.split(".")[0] in LAZY_SDK_PACKAGES, (
            f"{module}:{line}: {source} puts off an import that is not a carrier SDK's")
