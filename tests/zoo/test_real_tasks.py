"""Function Vectors tasks: splits, demonstrations from train, seeds, shots."""

import pytest

from tests.zoo.helpers import SHIPPED_TASKS
from tl_capability.zoo import real

pytestmark = pytest.mark.core


@pytest.mark.parametrize("task", sorted(SHIPPED_TASKS))
def test_splits_are_disjoint_and_demonstrations_come_from_train(task):
    test = dict(real.task_pairs(task, "test"))
    train = dict(real.task_pairs(task, "train"))
    assert test and train and not set(test) & set(train)
    assert len(test) >= 100  # the accuracy tables use 100 test samples
    data = real.task_dataset(task, n=30, fmt=real.ARROW)
    for prompt, answer in zip(data.prompts, data.answers, strict=True):
        *demos, query = prompt.split("\n")
        x = query.removesuffix(" ->")
        assert test[x] == answer[1:]
        assert len(demos) == real.ARROW.shots
        for demo in demos:
            dx, dy = demo.split(" -> ")
            assert train[dx] == dy and dx != x
    on_train = real.task_dataset(task, n=20, split="train", fmt=real.ARROW)
    for prompt in on_train.prompts:
        *demos, query = prompt.split("\n")
        assert query.removesuffix(" ->") not in [d.split(" -> ")[0] for d in demos]


def test_inputs_with_two_answers_are_in_no_split():
    pairs = [("i", "ii"), ("i", "j"), ("a", "b"), ("a", "b")]
    both = real.split_pairs(pairs, "test") + real.split_pairs(pairs, "train")
    assert both == [("a", "b")]
    with pytest.raises(ValueError, match="split"):
        real.split_pairs(pairs, "validation")


def test_task_samples_are_deterministic_under_a_seed():
    a = real.task_dataset("antonym", n=40, fmt=3, seed=1)
    b = real.task_dataset("antonym", n=40, fmt=3, seed=1)
    assert a.prompts == b.prompts and a.answers == b.answers and a.name == "antonym"
    assert real.task_dataset("antonym", n=40, fmt=3, seed=2).prompts != a.prompts
    # Every format of a task shows the same samples in the same order.
    zero = real.task_dataset("antonym", n=40, fmt=1, seed=1)
    assert zero.answers == a.answers


def test_shots_and_bad_arguments():
    zero = real.PromptFormat("The past tense of [X] is [Y]")
    data = real.task_dataset("present-past", n=3, fmt=zero, shots=2)
    assert all(p.count("\n") == 2 and p.endswith(" is") for p in data.prompts)
    bare = real.task_dataset("present-past", n=3, fmt=real.ARROW, shots=0)
    assert all("\n" not in p and p.endswith(" ->") for p in bare.prompts)
    with pytest.raises(ValueError, match="unknown task"):
        real.task_dataset("nope")
    with pytest.raises(ValueError, match="fmt"):
        real.task_dataset("antonym", fmt=99)
    with pytest.raises(ValueError, match="fewer than n"):
        real.task_dataset("country-capital", n=1000)
    with pytest.raises(ValueError, match="split"):
        real.task_dataset("antonym", split="dev")
    with pytest.raises(ValueError, match=r"\[Y\]"):
        real.PromptFormat("[Y] is the past of [X]")
