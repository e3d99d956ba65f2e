"""The package's parts talk through public doors, and nothing imports in a circle (read from the source's AST).

- No module of one part (the client's top-level modules, ``telemetry``, ``proxy``, ``exporter``, ``top``,
  ``provision``) imports another part's ``_private`` module or name; package-wide helpers
  (``_defaults``, ``_argtypes``) are for everyone.
- No module imports another module's ``_private`` name, even within one part.
- No import cycle among the modules, counting imports inside functions (a cycle hidden there still
  ties the modules together) but not those under ``if TYPE_CHECKING:`` (never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llamatelemetry"
PARTS = ("telemetry", "proxy", "exporter", "top", "provision")
SHARED = {"llamatelemetry._defaults", "llamatelemetry._argtypes"}


@dataclass(frozen=True)
class Import:
    importer: str
    module: str          # the module imported (a submodule when ``from pkg import submodule``)
    name: str | None     # the name taken from it, if any
    line: int
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, None, node.lineno, type_checking))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # ``from pkg import submodule``
                    found.append(Import(module, sub, None, node.lineno, type_checking))
                else:
                    found.append(Import(module, target, alias.name, node.lineno, type_checking))
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


ALL_IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in PARTS) else "client"


def _private(imp: Import) -> bool:
    if imp.module in SHARED:
        return False
    in_path = any(p.startswith("_") and not p.startswith("__") for p in imp.module.split("."))
    return in_path or bool(imp.name and imp.name.startswith("_") and not imp.name.startswith("__"))


def cross_part_private_imports() -> list[str]:
    return sorted(
        f"{imp.importer}:{imp.line} imports {imp.module}{'.' + imp.name if imp.name else ''}"
        for imp in ALL_IMPORTS
        if imp.module.startswith("llamatelemetry") and _part(imp.importer) != _part(imp.module) and _private(imp)
    )


def import_cycles() -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if not imp.type_checking and imp.module in MODULES and imp.module != imp.importer:
            graph[imp.importer].add(imp.module)
    # Tarjan's strongly connected components: any with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_no_part_imports_another_parts_private_module_or_name():
    assert cross_part_private_imports() == []


def test_private_names_stay_in_their_module():
    # Even inside one part: a name another module needs is part of its module's interface, so it has no underscore.
    assert sorted(
        f"{imp.importer}:{imp.line} imports {imp.module}.{imp.name}"
        for imp in ALL_IMPORTS
        if imp.module.startswith("llamatelemetry") and imp.name and imp.name.startswith("_") and not imp.name.startswith("__")
    ) == []


def test_no_import_cycles_even_inside_functions():
    assert import_cycles() == []


def test_the_checks_see_what_they_look_for():
    # The scanner itself must find a private import and an in-function import, or the tests above prove nothing.
    assert any(imp.importer == "llamatelemetry.proxy.cli" and not imp.type_checking and imp.module.endswith("gateway")
               for imp in ALL_IMPORTS), "in-function imports are read"
    assert _private(Import("llamatelemetry.proxy.x", "llamatelemetry._calls", None, 1, False))
    assert _private(Import("llamatelemetry.proxy.x", "llamatelemetry.streaming", "_DONE", 1, False))
    assert not _private(Import("llamatelemetry.proxy.x", "llamatelemetry._defaults", "DEFAULT_BASE_URL", 1, False))
    assert _part("llamatelemetry.client") == "client" and _part("llamatelemetry.proxy.observe") == "proxy"
    assert _part("llamatelemetry.telemetry") == "telemetry"
