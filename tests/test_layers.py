"""The layering contract: every import inside ``bridge/`` points down the house, never up.

Layers, lowest first: errors < core < telemetry < {streams, edge} < delivery < ownership <
config < app < ops. A module imports only from its own room or a room below it; streams and
edge, side by side, do not import each other. devkit stands aside: it may import anything, and
only ops imports it, inside the functions of the dev commands (``demo``, ``ingest-server``).
``bridge/__init__.py`` (the facade) and ``__main__.py`` are exempt. Imports are read from the
syntax tree, so those inside functions and under ``TYPE_CHECKING`` count too.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PACKAGE: Final = Path(__file__).resolve().parents[1] / "bridge"

# Each room's height; a module may import from rooms of the same height or lower only.
LAYERS: Final[dict[str, int]] = {
    "errors": 0,
    "core": 1,
    "telemetry": 2,
    "streams": 3,
    "edge": 3,
    "delivery": 4,
    "ownership": 5,
    "config": 6,
    "app": 7,
    "ops": 8,
}
DEVKIT: Final = "devkit"
EXEMPT: Final = frozenset({"bridge", "bridge.__main__"})
DEV_COMMANDS: Final = frozenset({"demo", "ingest-server", "ingest_server"})


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, and the functions and branches around it."""

    importer: str
    imported: str
    functions: tuple[str, ...]
    branches: tuple[str, ...]  # the string constants in the tests of enclosing ``if`` statements


def module_name(path: Path) -> str:
    """``bridge/core/signal.py`` -> ``bridge.core.signal``; a package is its ``__init__``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str | None:
    """The room of a ``bridge`` module (``bridge.telemetry.fastpath.spans`` -> ``telemetry``)."""
    parts = module.split(".")
    if parts[0] != "bridge" or len(parts) < 2:
        return None
    return parts[1]


def _facade_origin(name: str) -> str:
    """The module that defines a name imported from the facade (``from bridge import publish``)."""
    value = getattr(importlib.import_module("bridge"), name, None)
    origin = getattr(value, "__module__", None)
    return origin if isinstance(origin, str) else "bridge"


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> Iterator[str]:
    """The ``bridge`` modules an import statement names, relative imports resolved."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "bridge")
        return
    base = node.module or ""
    if node.level:
        package = importer.split(".")
        if not is_package:
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    if base.split(".")[0] != "bridge":
        return
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if _is_module(submodule):
            yield submodule
        else:
            yield _facade_origin(alias.name) if base == "bridge" else base


def _is_module(dotted: str) -> bool:
    """Whether ``bridge.x.y`` names a module or package under ``bridge/``."""
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _branch_strings(node: ast.If) -> tuple[str, ...]:
    """The string constants of an ``if`` test (``args.command == "demo"`` -> ``("demo",)``)."""
    return tuple(
        const.value
        for const in ast.walk(node.test)
        if isinstance(const, ast.Constant) and isinstance(const.value, str)
    )


def imports_of(source: str, importer: str, *, is_package: bool = False) -> list[Import]:
    """Every import of ``bridge`` modules in ``source``, with its enclosing functions and ifs."""
    found: list[Import] = []

    def visit(node: ast.AST, functions: tuple[str, ...], branches: tuple[str, ...]) -> None:
        """Walk the tree, remembering the functions and ``if`` branches on the way down."""
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(
                Import(importer, target, functions, branches)
                for target in _targets(node, importer, is_package)
            )
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions = (*functions, node.name)
        if isinstance(node, ast.If):
            inside = (*branches, *_branch_strings(node))
            for statement in node.body:
                visit(statement, functions, inside)
            for statement in node.orelse:
                visit(statement, functions, branches)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, functions, branches)

    visit(ast.parse(source), (), ())
    return found


def _for_a_dev_command(found: Import) -> bool:
    """An ops import of devkit inside a function that serves ``demo`` or ``ingest-server``.

    The function serves the command by its name, an enclosing ``if`` on the command, or its
    module's name (``ops/ingest_server.py`` is that command's module).
    """
    if not found.functions:
        return False
    named = {name.strip("_") for name in found.functions}
    named.add(found.importer.rsplit(".", 1)[-1])
    return bool(DEV_COMMANDS & ({*named, *found.branches}))


def violation(found: Import) -> bool:
    """Whether this import breaks the contract."""
    if found.importer in EXEMPT:
        return False
    source, target = room(found.importer), room(found.imported)
    if source is None or target is None or source in {target, DEVKIT}:
        return False
    if target == DEVKIT:
        return not (source == "ops" and _for_a_dev_command(found))
    if source not in LAYERS or target not in LAYERS:
        return True  # a room the contract does not know: place it first
    if {source, target} == {"streams", "edge"}:
        return True
    return LAYERS[target] > LAYERS[source]


def violations(root: Path = PACKAGE) -> list[str]:
    """Every breach under ``root``, as sorted, distinct ``importer -> imported`` lines."""
    lines: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        name = module_name(path)
        text = path.read_text(encoding="utf-8")
        for found in imports_of(text, name, is_package=path.name == "__init__.py"):
            if violation(found):
                lines.add(f"{found.importer} -> {found.imported}")
    return sorted(lines)


def test_imports_point_down_the_layers() -> None:
    """No module of ``bridge/`` imports from a room above its own (or across streams/edge)."""
    found = violations()
    for line in found:
        print(line)
    assert not found, "imports against the layering contract:\n" + "\n".join(found)


def test_every_room_has_a_place() -> None:
    """Each folder (and top module) of ``bridge/`` is a layer, devkit, or exempt."""
    rooms = {room(module_name(p)) for p in PACKAGE.rglob("*.py")} - {None, "__main__"}
    assert rooms <= {*LAYERS, DEVKIT}


def _found(source: str, importer: str) -> list[str]:
    """The breaches of one made-up module."""
    return [f"{i.importer} -> {i.imported}" for i in imports_of(source, importer) if violation(i)]


def test_the_checker_sees_imports_inside_functions_and_relative_ones() -> None:
    """An upward import is caught at module level, inside a function and written relatively."""
    source = (
        "from bridge.errors import BridgeError\n"
        "from . import signal\n"
        "def f() -> None:\n"
        "    from bridge.delivery import worker\n"
        "    from ..config.loader import load_config\n"
    )
    assert _found(source, "bridge.core.thing") == [
        "bridge.core.thing -> bridge.delivery.worker",
        "bridge.core.thing -> bridge.config.loader",
    ]


def test_the_checker_keeps_streams_and_edge_apart() -> None:
    """Rooms of the same height may not import each other."""
    assert _found("import bridge.edge.client\n", "bridge.streams.x") == [
        "bridge.streams.x -> bridge.edge.client"
    ]


def test_only_the_dev_commands_of_ops_import_devkit() -> None:
    """Ops may import devkit in the functions of ``demo``/``ingest-server``; no one else may."""
    source = (
        "def _dispatch(args):\n"
        "    if args.command == 'demo':\n"
        "        from bridge.devkit.demo import run_demo\n"
        "    from bridge.devkit.demo import sample_signal\n"
        "def _ingest_server(args):\n"
        "    from bridge.devkit.ingest import IngestApp\n"
        "from bridge.devkit import embedded\n"
    )
    assert _found(source, "bridge.ops.cli") == [
        "bridge.ops.cli -> bridge.devkit.demo",
        "bridge.ops.cli -> bridge.devkit.embedded",
    ]
    assert _found("import bridge.devkit.ingest\n", "bridge.app.runner") == [
        "bridge.app.runner -> bridge.devkit.ingest"
    ]
    assert _found("import bridge.ops.cli\n", "bridge.devkit.demo") == []
