"""The layout docs/architecture.md promises: the core never imports the layers above it, and
every module stays small."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

PACKAGE = Path(__file__).parent.parent / "tl_capability"
CORE = [
    "options",
    "sites",
    "data",
    "_answer_head",
    "_storage",
    "evaluate",
    "tables",
    "attribution",
    "neg",
    "masks",
    "interventions",
    "edits",
    "curves",
    "learned",
    "localization",
    "tracing",
]
ABOVE = ("experiments", "report", "cli", "zoo", "demo", "models")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _files(module: str) -> list[Path]:
    """A core module's source: its file, or every file of its package."""
    package = PACKAGE / module
    return sorted(package.glob("*.py")) if package.is_dir() else [PACKAGE / f"{module}.py"]


def _listed_name(module: str) -> str:
    return f"`{module}/`" if (PACKAGE / module).is_dir() else f"`{module}.py`"


@pytest.mark.parametrize("module", CORE)
def test_the_core_never_imports_the_layers_above_it(module):
    bad = {
        name
        for path in _files(module)
        for name in _imports(path)
        if any(
            name == f"tl_capability.{a}" or name.startswith(f"tl_capability.{a}.") for a in ABOVE
        )
    }
    assert not bad, f"{module}.py imports {sorted(bad)}"


def test_the_check_can_fail():
    assert "tl_capability.experiments" in _imports(PACKAGE / "report.py")


def test_every_core_module_is_listed_in_the_architecture_page():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [m for m in CORE if _listed_name(m) not in page]
    assert not missing
