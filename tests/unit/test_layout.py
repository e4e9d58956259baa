"""The house rules a newcomer relies on: the shipped packages never import `tests`, layers only import
downwards (jobs → pipelines → actors → schemas), no module outside tests grows past ~400 lines, and the top
level is the layout DESIGN.md fixes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["schemas", "actors", "pipelines", "jobs"]  # each may import only itself and those before it
MAX_LINES = 400


def modules():
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            yield layer, path


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(("layer", "path"), list(modules()), ids=lambda v: str(v).split("/work/main/")[-1])
def test_imports_go_downwards_and_never_into_tests(layer, path):
    roots = imported_roots(path)
    assert "tests" not in roots, f"{path.relative_to(ROOT)} imports tests, which the package does not ship"
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    assert not roots & above, f"{path.relative_to(ROOT)} imports {sorted(roots & above)}, a layer above it"


def test_no_module_over_the_size_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for _, p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines, split them by concern: {long}"


TOP_LEVEL = {"pyproject.toml", "README.md", "pipelines", "actors", "jobs", "schemas", "tests", "infra"}


def test_top_level_holds_only_the_fixed_layout():
    """DESIGN.md fixes the top level; hidden entries (.ci, .venv, .demo) and build output are not part of it."""
    extra = {
        p.name
        for p in ROOT.iterdir()
        if not p.name.startswith(".") and not p.name.endswith(".egg-info") and p.name != "__pycache__"
    } - TOP_LEVEL
    assert not extra, f"top-level entries outside the fixed layout: {sorted(extra)}"
