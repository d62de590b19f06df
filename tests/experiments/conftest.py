"""Fixtures shared by the tests of this folder."""

import pytest

from tests.experiments.helpers import _facts


@pytest.fixture(scope="module")
def facts():
    return _facts()
