"""Only the sites package knows the model surface (hook and weight names, the cache call)."""

import pytest

from tests.sites.helpers import PACKAGE, _surface_uses

pytestmark = pytest.mark.core


def test_the_surface_scan_sees_code_and_skips_prose():
    source = '''"""Docstring: W_U and blocks.0.hook_resid_post."""
# a comment on model.W_U
x = model.W_U  # the code
name = f"blocks.{layer}.hook_resid_pre"
'''
    assert _surface_uses(source) == ["W_U", "hook_resid", '"blocks.']
    assert _surface_uses((PACKAGE / "sites" / "support.py").read_text())  # where it all lives


def test_only_sites_knows_the_model_surface():
    """Hook names, head and MLP weights, the KV-cache call: the sites package only."""
    found = {
        path.relative_to(PACKAGE).as_posix(): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "sites"
        and (uses := _surface_uses(path.read_text()))
    }
    assert found == {}
