"""Helpers shared by the attribution tests."""

from typing import Any


def forbid_probes(monkeypatch: Any, probes: list[tuple[Any, str]]) -> None:
    """Makes each ``(module, name)`` stand-alone probe fail the test if it runs (a first call
    must read its checks off its own passes)."""

    def probe(*args, **kwargs):
        raise AssertionError("a stand-alone probe ran")

    for module, name in probes:
        monkeypatch.setattr(module, name, probe)
