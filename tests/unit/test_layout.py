"""The house rules a newcomer relies on, read from the code's own imports: the shipped packages never import
`tests`; layers only import downwards (jobs → pipelines → actors → schemas); no two modules import each other,
directly or around a circle (imports inside functions and type-only imports count); no module outside tests
grows past 400 lines; `pipelines/` and `actors/` keep their concerns in sub-packages; and the top level is
the layout DESIGN.md fixes."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["schemas", "actors", "pipelines", "jobs"]  # each may import only itself and those before it
MAX_LINES = 400
PIPELINES_TOP_FILES = 3  # __init__, the public API, and at most one more


def modules():
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            yield layer, path


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def known_modules() -> frozenset[str]:
    return frozenset(module_name(p) for _, p in modules())


def imported_names(path: Path, own: str | None = None) -> set[str]:
    """Every module `path` (the module `own`, by default its place in the tree) imports, at the top, inside
    functions or under `TYPE_CHECKING` alike: `import a.b` gives `a.b`; `from a import b` gives `a.b` when
    that is a module, else `a`."""
    names = set()
    own = own or module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in known_modules() else base)
    return names


def roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(("layer", "path"), list(modules()), ids=lambda v: str(v).split("/work/main/")[-1])
def test_imports_go_downwards_and_never_into_tests(layer, path):
    imported = roots(imported_names(path))
    assert "tests" not in imported, f"{path.relative_to(ROOT)} imports tests, which the package does not ship"
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    assert not imported & above, (
        f"{path.relative_to(ROOT)} imports {sorted(imported & above)}, a layer above it"
    )


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for _, path in modules():
        own = module_name(path)
        graph[own] = {name for name in imported_names(path) if name in known_modules() and name != own}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, f"modules that import each other (directly or around a circle): {found}"


def test_the_circle_check_sees_imports_inside_functions_and_type_only_ones(tmp_path):
    """The rule above is only as good as its reading of imports: a circle closed by a function-level or a
    `TYPE_CHECKING` import is still found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert circles(graph) == [["a", "b"]]
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from actors.pool import PoolSpec\n"
        "def f():\n    from schemas import columns\n    from .rows import RowErrors\n"
    )
    assert imported_names(source, "actors.example") == {
        "typing",
        "actors.pool",
        "schemas.columns",
        "actors.rows",
    }


def test_no_module_over_the_size_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for _, p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines, split them by concern: {long}"


def test_concerns_live_in_sub_packages():
    top = sorted(p.name for p in (ROOT / "pipelines").glob("*.py"))
    assert len(top) <= PIPELINES_TOP_FILES, (
        f"pipelines/ holds {top} at its top: put each in its concern's package"
    )
    assert "api.py" in top, "the public Python API stays at pipelines/api.py, where the README says"
    media = sorted(p.name for p in (ROOT / "actors").glob("media_*.py"))
    assert not media, f"media modules at the top of actors/: {media}; they belong in actors/media/"


def test_no_module_is_named_like_the_standard_library():
    import sys

    clash = sorted(
        str(p.relative_to(ROOT))
        for _, p in modules()
        if p.stem in sys.stdlib_module_names
        or (p.name == "__init__.py" and p.parent.name in sys.stdlib_module_names)
    )
    assert not clash, f"modules named like the standard library (they read as it in an import): {clash}"


TOP_LEVEL = {"pyproject.toml", "README.md", "pipelines", "actors", "jobs", "schemas", "tests", "infra"}


def test_top_level_holds_only_the_fixed_layout():
    """DESIGN.md fixes the top level; hidden entries (.ci, .venv, .demo) and build output are not part of it."""
    extra = {
        p.name
        for p in ROOT.iterdir()
        if not p.name.startswith(".") and not p.name.endswith(".egg-info") and p.name != "__pycache__"
    } - TOP_LEVEL
    assert not extra, f"top-level entries outside the fixed layout: {sorted(extra)}"
