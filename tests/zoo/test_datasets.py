"""The zoo's capability datasets (zoo/__init__): six capabilities the models know, choices,
facts."""

import pytest

from tests.zoo.helpers import ZOO, _zoo
from tl_capability import accuracy, zoo
from tl_capability.zoo import tasks

pytestmark = pytest.mark.core


@pytest.mark.parametrize("name", ZOO)
def test_at_least_six_capabilities_each_at_least_95_percent(name):
    model = _zoo(name)
    names = zoo.capability_names()
    assert len(names) >= 6
    for capability in names:
        acc = accuracy(model, zoo.dataset(capability, n=200, split="test", seed=1))
        assert acc >= 0.95, f"{name} {capability}: {acc:.3f}"


def test_multiple_choice_capability_has_choices_and_labels():
    data = zoo.dataset("choice", n=20)
    assert data.is_multiple_choice
    for row in data:
        assert row["choices"][row["label"]] == row["answer"]


def test_bad_requests():
    with pytest.raises(ValueError, match="unknown capability"):
        zoo.dataset("poetry")
    with pytest.raises(ValueError, match="split must be"):
        zoo.dataset("addition", split="validation")


def test_fact_dataset_holds_every_paraphrase():
    entity, city = tasks.ENTITIES[1]
    data = zoo.fact_dataset(entity)
    assert data.name == entity and len(data) == len(tasks.FACT_TEMPLATES)
    assert set(data.answers) == {city}
    with pytest.raises(ValueError, match="unknown entity"):
        zoo.fact_dataset("nobody")
