"""The documentation (pages + API reference from docstrings) builds offline, strictly."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent


def test_docs_build_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "api" / "masks" / "index.html").read_text()
    assert "select" in page and "NeuronMask" in page and "coarse_masks" in page


ROLE = re.compile(r":(func|class|mod|meth|attr|data|obj|exc):`")


def test_docstrings_use_checked_cross_references_not_sphinx_roles():
    """mkdocstrings renders a Sphinx role as raw text and never checks its target; a
    ``[`name`][dotted.path]`` reference is resolved by the strict build or fails it."""
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in sorted((ROOT / "tl_capability").rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if ROLE.search(line)
    ]
    assert not found, f"Sphinx roles left in docstrings: {found}"


def test_an_unresolved_cross_reference_fails_the_strict_build(tmp_path):
    """The same plugins as the real build, on one page that names an object that does not exist:
    the strict build must refuse it (so the real build passing means every reference resolved)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(
        "# Probe\n\n::: tl_capability.options.check_option\n\n"
        "See [`nothing`][tl_capability.options.no_such_function].\n"
    )
    config.update(docs_dir=str(docs), site_dir=str(tmp_path / "site"), nav=["index.md"])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "tl_capability.options.no_such_function" in result.stdout + result.stderr
