"""Fixtures shared by the tests of this folder."""

from tests.experiments.helpers import _facts
import pytest



@pytest.fixture(scope="module")
def facts():
    return _facts()
