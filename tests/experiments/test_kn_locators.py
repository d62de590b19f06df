"""The knowledge localizers: trace window, refused methods, corrupted subjects."""

import pytest

from tests.experiments.helpers import TRACE
from tl_capability import zoo
from tl_capability.data import CapabilityDataset
from tl_capability.experiments import fidelity, reliability
from tl_capability.experiments.kn_locators import corrupt_subjects


def test_the_default_window_is_a_quarter_of_the_layers(zoo_model, facts):
    from tl_capability.experiments.kn_locators import trace_window

    assert trace_window(zoo_model) == 1
    data = {name: facts[name] for name in list(facts)[:1]}
    assert fidelity(zoo_model, data, method="rome", samples=3).rows == (
        fidelity(zoo_model, data, method="rome", **TRACE).rows
    )


def test_unknown_methods_and_missing_subjects_are_refused(zoo_model, facts):
    with pytest.raises(ValueError, match="method must be one of 'kn', 'rome', 'kc', got 'acdc'"):
        fidelity(zoo_model, facts, method="acdc")
    with pytest.raises(ValueError, match="method must be one of 'kn', 'rome', 'kc'"):
        reliability(zoo_model, None, facts, method="acdc")
    plain = {e: zoo.fact_dataset(e) for e in facts}
    for method in ("rome", "kc"):
        with pytest.raises(ValueError, match=r"fact 'kofet' has no subjects: method"):
            fidelity(zoo_model, plain, method=method)
        with pytest.raises(ValueError, match=r"fact 'kofet' has no subjects"):
            reliability(zoo_model, datasets=plain, method=method)


def test_a_fact_no_subject_can_corrupt_is_named(zoo_model, facts):
    name = next(iter(facts))
    data = facts[name]
    short = CapabilityDataset.from_pairs(
        [p.replace(name, "xy") for p in data.prompts], ["cairo"] * len(data), subjects=["xy"] * 4
    )
    with pytest.raises(ValueError, match=f"fact '{name}': no other fact's subject"):
        corrupt_subjects(zoo_model, {name: data, "short": short})
