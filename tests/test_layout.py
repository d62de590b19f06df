"""The layout docs/architecture.md promises: the core never imports the layers above it, every
module stays small, and every public module has a test file named after it."""

import ast
import inspect
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

PACKAGE = Path(__file__).parent.parent / "tl_capability"
TESTS = Path(__file__).parent
CORE = [
    "options",
    "sites",
    "data",
    "_answer_head",
    "_storage",
    "evaluate",
    "tables",
    "attribution",
    "empirical_neg",
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
    assert "tl_capability.experiments" in _imports(PACKAGE / "demo.py")


def test_every_core_module_is_listed_in_the_architecture_page():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [m for m in CORE if _listed_name(m) not in page]
    assert not missing


# --- Size and shape: every module small, every function short, no import cycle. ---

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _import_nodes(tree: ast.AST):
    """Every import statement at any depth: in functions and under ``if TYPE_CHECKING:`` too,
    since a cycle of names is a cycle of design even where Python would not trip on it."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports: ``import a.b`` and ``from a import b``
    (``a``, and ``a.b`` where that is a module), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        found.update(t for t in targets if t in modules and t != name)
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def _function_lengths(path: Path):
    """(qualified name, lines) of every function in a file, its docstring excluded."""

    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                body = child.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    lines -= body[0].end_lineno - body[0].lineno + 1
                yield name, lines
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text()), "")


def _too_long_modules() -> list[str]:
    return [
        f"{name} ({n} lines)"
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]


def _too_long_functions() -> list[str]:
    return [
        f"{module}.{function} ({n} lines)"
        for module, path in _modules().items()
        for function, n in _function_lengths(path)
        if n > MAX_FUNCTION_LINES
    ]


def _public_names_outside_all() -> list[str]:
    import tl_capability

    public = set(tl_capability.__all__)
    return sorted(
        name
        for name, value in vars(tl_capability).items()
        if not name.startswith("_")
        and name not in public
        # Submodules are the package's own modules, not names it exports.
        and not (inspect.ismodule(value) and value.__name__ == f"tl_capability.{name}")
    )


def test_no_module_is_over_400_lines():
    assert not _too_long_modules()


def test_no_function_is_over_80_lines_docstring_excluded():
    assert not _too_long_functions()


def test_no_import_cycle():
    assert not _cycles(_import_graph())


def test_every_public_name_of_the_top_level_package_is_in_all():
    assert not _public_names_outside_all()


def test_the_size_and_cycle_checks_can_fail(tmp_path):
    """The checks see what they should: a long function, a docstring left out, cycles through
    ``from package import module``, relative and function-level imports."""
    source = tmp_path / "m.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    doc = '"""Doc\n\n    string."""'
    short = "def short():\n    'x'\n    return 1\n"
    source.write_text(f"def long():\n    {doc}\n{body}\n\n{short}")
    assert dict(_function_lengths(source)) == {"long": 82, "short": 2}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from pkg.sub import thing\n")
    (root / "sub" / "__init__.py").write_text("from .leaf import thing\n")
    (root / "sub" / "leaf.py").write_text("def thing():\n    from pkg import other\n")
    (root / "other.py").write_text("")
    modules = {
        "pkg": root / "__init__.py",
        "pkg.sub": root / "sub" / "__init__.py",
        "pkg.sub.leaf": root / "sub" / "leaf.py",
        "pkg.other": root / "other.py",
    }
    graph = {name: _edges(name, path, modules) for name, path in modules.items()}
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg", "pkg.other"}
    assert _cycles(graph) == [["pkg", "pkg.sub", "pkg.sub.leaf"]]


# --- Tests mirror the package: a test file named after every public module. ---


def _has_own_test_file(tests: Path, parts: tuple[str, ...]) -> bool:
    """``tests/<folders>/test_<name>.py`` for the module or subpackage ``(*folders, name)``."""
    return tests.joinpath(*parts[:-1], f"test_{parts[-1]}.py").is_file()


def _modules_without_a_test_file(package: Path, tests: Path) -> list[str]:
    """The public modules and subpackages of ``package`` that ``tests`` gives no file of their own.

    A module ``a/b.py`` needs ``tests/a/test_b.py``; a subpackage ``a/`` needs ``tests/test_a.py``
    or a ``tests/a/`` folder of test files. A subpackage's own file (``tests/test_data.py``)
    counts for all its modules: one test file per subpackage is enough. Private modules and
    everything in a private package (a name starting with ``_``) are tested through the public
    module that uses them, and need no file.
    """
    missing = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if any(part.startswith("_") for part in parts if part != "__init__"):
            continue
        if parts[-1] == "__init__":
            folder = parts[:-1]
            if folder and not (
                _has_own_test_file(tests, folder) or any(tests.joinpath(*folder).glob("test_*.py"))
            ):
                missing.append("/".join(folder) + "/")
            continue
        enclosing = (parts[: i + 1] for i in range(len(parts) - 1))
        if not any(_has_own_test_file(tests, p) for p in (parts, *enclosing)):
            missing.append("/".join(parts) + ".py")
    return missing


def test_every_public_module_has_a_test_file_named_after_it():
    assert not _modules_without_a_test_file(PACKAGE, TESTS)


def test_the_test_file_check_can_fail(tmp_path):
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    for name in ("top", "_private", "sub/__init__", "sub/leaf", "sub/_inner", "_hidden/open",
                 "whole/__init__", "whole/part", "bare/__init__"):  # fmt: skip
        (package / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (package / f"{name}.py").write_text("")
    (tests / "sub").mkdir(parents=True)
    assert _modules_without_a_test_file(package, tests) == [
        "bare/",
        "sub/",
        "sub/leaf.py",
        "top.py",
        "whole/",
        "whole/part.py",
    ]
    for name in ("test_top", "sub/test_leaf", "test_whole"):
        (tests / f"{name}.py").write_text("")
    # tests/test_top.py is top.py's, not sub/top.py's: a nested module's file mirrors its folder.
    (package / "sub" / "top.py").write_text("")
    assert _modules_without_a_test_file(package, tests) == ["bare/", "sub/top.py"]
