"""Data and helpers shared by the top-level test files (the folders have their own)."""

from tl_capability import CapabilityDataset, attribute

# localization and rankings: a target of two samples and one control.
TARGET = CapabilityDataset.from_pairs(["12+34=", "rev abc:"], ["46", "cba"], name="t")
OTHER = CapabilityDataset.from_pairs(["the day was", "q"], [" fun", "xy"], name="o")


def _all(model, data):
    """The scores every ranked method starts from, computed in full by ``attribute``."""
    return attribute(
        model, data, "ig", steps=8, metric="logprob", positions="all", progress=False
    ).values
