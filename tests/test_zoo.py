"""The shipped zoo model: loads offline, fast, in eval mode, and has its capabilities."""

import pytest
import torch

from tl_capability import accuracy, zoo
from tl_capability.zoo import tasks

pytestmark = pytest.mark.core


def test_loads_offline_in_eval_mode_with_a_tokenizer():
    zoo.import_backend()
    model = zoo.load_model()
    assert not model.training
    tokens = model.to_tokens("12+34=")
    assert tokens.shape == (1, 7) and tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert model.to_string(tokens[0, 1:]) == "12+34="


def test_at_least_six_capabilities_each_at_least_95_percent(zoo_model):
    names = zoo.capability_names()
    assert len(names) >= 6
    for name in names:
        acc = accuracy(zoo_model, zoo.dataset(name, n=200, split="test", seed=1))
        assert acc >= 0.95, f"{name}: {acc:.3f}"


def test_model_is_not_a_constant_answerer(zoo_model):
    """Sanity check on the accuracy above: wrong answers are scored wrong."""
    data = zoo.dataset("addition", n=50)
    wrong = type(data).from_pairs(data.prompts, [str(int(a) + 1) for a in data.answers])
    assert accuracy(zoo_model, wrong) < 0.1


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


def test_training_info_records_the_accuracies():
    info = zoo.training_info()
    assert set(info["test_accuracy"]) == set(zoo.capability_names())
    assert info["architecture"]["n_layer"] >= 2


def test_zoo_answers_are_deterministic(zoo_model):
    tokens = zoo_model.to_tokens("37+48=")
    with torch.no_grad():
        a, b = zoo_model(tokens), zoo_model(tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fact_dataset_holds_every_paraphrase():
    entity, city = tasks.ENTITIES[1]
    data = zoo.fact_dataset(entity)
    assert data.name == entity and len(data) == len(tasks.FACT_TEMPLATES)
    assert set(data.answers) == {city}
    with pytest.raises(ValueError, match="unknown entity"):
        zoo.fact_dataset("nobody")
