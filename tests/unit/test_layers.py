"""The import structure stays one-way: layers point down, nothing imports in a circle, HTTP stays on top.

Every import statement of ``gateway/`` and ``routing/`` is read from the source (those inside functions
and ``TYPE_CHECKING`` blocks included: a lazy import is still a dependency), so these tests hold without
importing anything.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module may import modules of its own layer or of a lower one, never of a higher one.
LAYERS: list[tuple[str, ...]] = [
    ("routing",),
    ("gateway", "gateway.errors", "gateway.metrics", "gateway.config", "gateway.failures"),
    ("gateway.protocol",),
    (
        "gateway.auth",
        "gateway.upstream",
        "gateway.adapters",
        "gateway.fleet",
        "gateway.embeddings",
        "gateway.rag",
        "gateway.accounting",
        "gateway.routing_state",
        "gateway.finetune",
        "gateway.evidence",
    ),
    ("gateway.dispatch",),
    ("gateway.components",),
    ("gateway.api", "gateway.app"),
    ("gateway.cli", "gateway.__main__"),
]
# The foundations say exactly what they may import (their docstrings): held to it, not just to their layer.
ALLOWED: dict[str, set[str]] = {
    "routing": set(),
    "gateway.errors": set(),
    "gateway.metrics": set(),
    "gateway.failures": {"gateway.errors"},
    "gateway.protocol": {"gateway.errors"},
    "gateway.config": {"routing"},
}
HTTP_LIBRARIES = ("fastapi", "starlette", "uvicorn")
HTTP_LAYERS = ("gateway.api", "gateway.app", "gateway.cli")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("gateway", "routing"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``name`` imports (absolute names, relative ones resolved), with its line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # ``from gateway.api import pipeline`` imports a module
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}", node.lineno


def _internal(target: str) -> str | None:
    """The project module an imported name belongs to (its longest known prefix), if any."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _within(module: str, prefix: str) -> bool:
    """``module`` is ``prefix`` or inside it (the root package ``gateway`` stands only for itself)."""
    return module == prefix or (prefix != "gateway" and module.startswith(prefix + "."))


def _layer(module: str) -> int:
    best, level = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and len(prefix) > best:
                best, level = len(prefix), index
    assert level >= 0, f"{module} is in no layer: add it to LAYERS (and to the README's drawing)"
    return level


def _unit(module: str) -> str:
    """What a circle is judged between: a top-level package of the gateway, or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gateway" and len(parts) > 1 else parts[0]


def _graph() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        for target, line in _imports(name, path):
            internal = _internal(target)
            if internal is not None and internal != name and not name.startswith(internal + "."):
                edges.setdefault(internal, line)  # a package's own __init__ is not a dependency of its modules
        graph[name] = edges
    return graph


GRAPH = _graph()


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle in ``graph``, as the path around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_every_import_points_down_the_layers() -> None:
    wrong = [
        f"{MODULES[name].relative_to(ROOT)}:{line}: {name} (layer {_layer(name)}) imports {target} "
        f"(layer {_layer(target)})"
        for name, edges in GRAPH.items()
        for target, line in edges.items()
        if _layer(target) > _layer(name)
    ]
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_the_foundations_import_only_what_they_say(package: str) -> None:
    allowed = ALLOWED[package]
    wrong = [
        f"{MODULES[name].relative_to(ROOT)}:{line}: {target}"
        for name, edges in GRAPH.items()
        if _within(name, package)
        for target, line in edges.items()
        if not _within(target, package) and not any(_within(target, other) for other in allowed)
    ]
    assert not wrong, f"{package} may import only {sorted(allowed) or 'nothing of the project'}:\n" + "\n".join(wrong)


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        _layer(name)  # fails, naming the module, when none of LAYERS covers it


def test_no_module_imports_in_a_circle() -> None:
    circle = _cycle({name: set(edges) for name, edges in GRAPH.items()})
    assert circle is None, "modules import each other in a circle: " + " -> ".join(circle or [])


def test_no_package_imports_in_a_circle() -> None:
    units: dict[str, set[str]] = defaultdict(set)
    for name, edges in GRAPH.items():
        units[_unit(name)] |= {_unit(target) for target in edges if _unit(target) != _unit(name)}
    circle = _cycle(dict(units))
    assert circle is None, "packages import each other in a circle: " + " -> ".join(circle or [])


@pytest.mark.parametrize("package", ["gateway.dispatch", "gateway.accounting"])
def test_the_service_and_the_accounting_know_nothing_of_http(package: str) -> None:
    found = [
        f"{MODULES[name].relative_to(ROOT)}:{line}: {target}"
        for name, path in MODULES.items()
        if name == package or name.startswith(package + ".")
        for target, line in _imports(name, path)
        if target.split(".")[0] in HTTP_LIBRARIES or target == "gateway.api" or target.startswith("gateway.api.")
    ]
    assert not found, f"{package} imports the HTTP layer:\n" + "\n".join(found)


def test_only_the_http_layer_imports_the_web_framework() -> None:
    found = [
        f"{MODULES[name].relative_to(ROOT)}:{line}: {target}"
        for name, path in MODULES.items()
        if not any(name == top or name.startswith(top + ".") for top in HTTP_LAYERS)
        for target, line in _imports(name, path)
        if target.split(".")[0] in HTTP_LIBRARIES
    ]
    assert not found, "web framework imports below the HTTP layer:\n" + "\n".join(found)


def test_every_package_says_what_it_may_import() -> None:
    silent = [
        str(path.relative_to(ROOT))
        for name, path in MODULES.items()
        if path.name == "__init__.py" and "May import" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert not silent, "package docstrings without a 'May import' line: " + ", ".join(silent)


def test_the_checks_see_real_imports() -> None:
    """The graph is read right: known edges are there (so an empty list of problems means something)."""
    assert (
        "gateway.dispatch.service" in GRAPH["gateway.api.completions"]
        or "gateway.api.responses" in GRAPH["gateway.api.completions"]
    )
    assert "gateway.protocol.requests" in GRAPH["gateway.dispatch.service"]
    assert "gateway.api.pipeline" in GRAPH["gateway.api.deps"]  # ``from gateway.api import pipeline``
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _layer("gateway.api.completions") > _layer("gateway.dispatch.service") > _layer("gateway.protocol.sse")
    assert not _within("gateway.api", "gateway")  # the root package does not swallow the others
    with pytest.raises(AssertionError, match="in no layer"):
        _layer("gateway.newcomer")
