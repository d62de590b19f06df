"""The zoo's task generators: disjoint, deterministic splits decided by the prompt."""

import pytest

from tl_capability import zoo
from tl_capability.zoo import tasks

pytestmark = pytest.mark.core


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_splits_are_disjoint_and_deterministic(name):
    n = 200
    train = zoo.dataset(name, n=n, split="train", seed=0)
    test = zoo.dataset(name, n=n, split="test", seed=0)
    assert set(train.prompts).isdisjoint(test.prompts)
    assert len(set(test.prompts)) == n
    assert zoo.dataset(name, n=n, split="test", seed=0).prompts == test.prompts
    assert zoo.dataset(name, n=n, split="test", seed=1).prompts != test.prompts


def test_every_split_membership_is_a_function_of_the_prompt():
    for task in tasks.TASKS.values():
        for split in ("train", "test"):
            for e in task.sample(50, split, seed=5):
                assert task.split_of(e) == split


def test_facts_are_tested_on_a_paraphrase_never_trained_for_that_entity():
    entity, city = tasks.ENTITIES[0]
    prompts = zoo.fact_prompts(entity)
    assert len(prompts) >= 3 and all(p.answer == city for p in prompts)
    splits = [tasks.TASKS["facts"].split_of(p) for p in prompts]
    assert splits.count("test") == 1
    with pytest.raises(ValueError, match="only 250 distinct test examples"):
        zoo.dataset("facts", n=251)
