"""Function Vectors tasks (Todd et al., ICLR 2024) as datasets for pretrained models.

See [`tl_capability.zoo.real`][tl_capability.zoo.real] for the formats and splits.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import cache

from tl_capability._fv_pararel_files import read_function_vectors
from tl_capability.data import CapabilityDataset
from tl_capability.options import check_positive_int
from tl_capability.zoo.real_formats import (
    ARROW,
    FV_DIR,
    GENERIC_FORMATS,
    INPUT_OUTPUT,
    QUESTION_ANSWER,
    TEST_FRACTION,
    PromptFormat,
    _labelled,
    _zero,
)

# Each task's formats, in order of SmolLM2-135M-Instruct's accuracy on 100 test samples
# (docs/real-data.md): zero-shot templates, the task's labelled few-shot layout and the generic
# layouts. The tasks are in order of its accuracy on their first format.
_TASKS: dict[str, tuple[PromptFormat, ...]] = {
    "singular-plural": (
        _labelled("singular", "plural"),
        ARROW,
        QUESTION_ANSWER,
        INPUT_OUTPUT,
        _zero('The plural of "[X]" is "[Y]"'),
        _zero("The plural of [X] is [Y]"),
    ),
    "capitalize": (
        ARROW,
        QUESTION_ANSWER,
        _labelled("word", "capitalized"),
        INPUT_OUTPUT,
        _zero('The word "[X]" capitalized is "[Y]"'),
        _zero("[X] with a capital first letter is [Y]"),
    ),
    "present-past": (
        QUESTION_ANSWER,
        ARROW,
        INPUT_OUTPUT,
        _labelled("present", "past"),
        _zero('The past tense of "[X]" is "[Y]"'),
        _zero("Today I [X]. Yesterday I [Y]"),
    ),
    "country-capital": (
        _labelled("country", "capital"),
        _zero("The capital of [X] is [Y]"),
        ARROW,
        INPUT_OUTPUT,
        _zero("[X]'s capital city is [Y]"),
        QUESTION_ANSWER,
    ),
    "landmark-country": (
        ARROW,
        _zero("[X] is located in the country of [Y]"),
        QUESTION_ANSWER,
        INPUT_OUTPUT,
        _labelled("place", "country"),
        _zero("[X], a place in [Y]"),
    ),
    "next_item": (
        ARROW,
        _labelled("item", "next"),
        INPUT_OUTPUT,
        _zero("[X], [Y]"),
        _zero("After [X] comes [Y]"),
        QUESTION_ANSWER,
    ),
    "person-occupation": (
        ARROW,
        _labelled("person", "occupation"),
        QUESTION_ANSWER,
        INPUT_OUTPUT,
        _zero("[X] is a famous [Y]"),
        _zero("[X], a well-known [Y]"),
    ),
    "antonym": (
        _zero('The opposite of "[X]" is "[Y]"'),
        _zero("The opposite of [X] is [Y]"),
        INPUT_OUTPUT,
        ARROW,
        QUESTION_ANSWER,
        _labelled("word", "opposite"),
    ),
    "english-french": (
        ARROW,
        _labelled("English", "French"),
        QUESTION_ANSWER,
        _zero('The French word for "[X]" is "[Y]"'),
        INPUT_OUTPUT,
        _zero("The French word for [X] is [Y]"),
    ),
}


# ---------------------------------------------------------------------- Function Vectors tasks


def task_names() -> list[str]:
    """The shipped Function Vectors tasks, those SmolLM2-135M does best first."""
    return list(_TASKS)


def task_formats(task: str) -> list[PromptFormat]:
    """The prompt formats of a task (``fmt`` indexes them); the generic few-shot layouts
    ([`GENERIC_FORMATS`][tl_capability.zoo.real.GENERIC_FORMATS]) for a task the zoo does not
    know."""
    return list(_TASKS.get(task, GENERIC_FORMATS))


def _check_task(task: str) -> None:
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; the shipped tasks are {task_names()}")


@cache
def _shipped_pairs(task: str) -> tuple[tuple[str, str], ...]:
    return tuple(read_function_vectors(FV_DIR / f"{task}.json"))


def in_test_split(x: str) -> bool:
    """Whether input ``x`` belongs to the test split: a hash of the input, so the split of a
    word does not depend on which other words the file holds."""
    digest = hashlib.sha256(x.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


def split_pairs(pairs: Sequence[tuple[str, str]], split: str) -> list[tuple[str, str]]:
    """The pairs of one split, in order: inputs with more than one output are dropped (no
    single right answer, e.g. ``next_item``'s ``i`` -> ``ii`` and ``j``), repeats kept once.

    Args:
        pairs: ``(input, output)`` pairs.
        split: ``"test"`` or ``"train"``.

    Raises:
        ValueError: For another split.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    outputs: dict[str, set[str]] = {}
    for x, y in pairs:
        outputs.setdefault(x, set()).add(y)
    want = split == "test"
    return [
        (x, next(iter(ys)))
        for x, ys in outputs.items()
        if len(ys) == 1 and in_test_split(x) == want
    ]


def task_pairs(task: str, split: str = "test") -> list[tuple[str, str]]:
    """One split of a shipped task's ``(input, output)`` pairs, in file order.

    Raises:
        ValueError: For an unknown task or split.
    """
    _check_task(task)
    return split_pairs(_shipped_pairs(task), split)


def _resolve_format(task: str, fmt: int | PromptFormat) -> PromptFormat:
    if isinstance(fmt, PromptFormat):
        return fmt
    formats = task_formats(task)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or not 0 <= fmt < len(formats):
        raise ValueError(
            f"fmt must be a PromptFormat or an index 0..{len(formats) - 1} into the formats of "
            f"{task!r}, got {fmt!r}"
        )
    return formats[fmt]


def dataset_from_pairs(
    pairs: Sequence[tuple[str, str]],
    task: str,
    fmt: int | PromptFormat = 0,
    *,
    n: int | None = 100,
    split: str = "test",
    seed: int = 0,
    shots: int | None = None,
) -> CapabilityDataset:
    """Prompts for ``n`` pairs of one split, in one format (the engine of
    [`task_dataset`][tl_capability.zoo.real.task_dataset] and
    [`load_function_vectors`][tl_capability.loaders.load_function_vectors]).

    Args:
        pairs: All of the task's ``(input, output)`` pairs (both splits).
        task: The task's name (the dataset's name, and whose formats ``fmt`` indexes).
        fmt: An index into [`task_formats`][tl_capability.zoo.real.task_formats], or a format.
        n: Number of samples, distinct inputs of the split (all of them when ``None``).
        split: ``"test"`` or ``"train"``.
        seed: Which samples, in which order, and which demonstrations; each sample's
            demonstrations depend on the seed and its input only, so every format of a task
            shows the same ones.
        shots: Demonstrations before each query (the format's default when ``None``), drawn
            from the train split, never the query's own input.

    Raises:
        ValueError: For an unknown format or split, an ``n`` below 1 or above the split's size,
            or more shots than the train split can give.
    """
    form = _resolve_format(task, fmt)
    k = form.shots if shots is None else shots
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"shots must be a non-negative integer, got {shots!r}")
    items = split_pairs(pairs, split)
    if n is None:
        n = len(items)
    check_positive_int(n, "n")
    if n > len(items):
        raise ValueError(f"{task!r} has {len(items)} {split} inputs, fewer than n={n}")
    chosen = random.Random(f"{task}|{split}|{seed}").sample(items, n)
    pool = split_pairs(pairs, "train") if k else []
    prompts, answers = [], []
    for x, y in chosen:
        others = [p for p in pool if p[0] != x]
        if len(others) < k:
            raise ValueError(f"{task!r} has {len(others)} train pairs to show, fewer than {k}")
        demos = random.Random(f"{task}|{seed}|demos|{x}").sample(others, k) if k else []
        prompts.append(form.prompt(x, demos))
        answers.append(form.answer(y))
    return CapabilityDataset.from_pairs(prompts, answers, name=task)


def task_dataset(
    task: str,
    n: int | None = 100,
    split: str = "test",
    fmt: int | PromptFormat = 0,
    seed: int = 0,
    shots: int | None = None,
) -> CapabilityDataset:
    """``n`` samples of a shipped Function Vectors task, in one prompt format.

    Args:
        task: One of [`task_names`][tl_capability.zoo.real.task_names].
        n: Number of samples, distinct inputs (all of the split when ``None``).
        split: ``"test"`` or ``"train"``; the two never share an input, and few-shot
            demonstrations always come from ``"train"``.
        fmt: An index into [`task_formats`][tl_capability.zoo.real.task_formats] (0: one the
            model of ``docs/real-data.md`` does well on), or a
            [`PromptFormat`][tl_capability.zoo.real.PromptFormat].
        seed: Samples and demonstrations are a deterministic function of (task, split, seed).
        shots: Demonstrations before each query (the format's default when ``None``; 0 makes
            any format zero-shot).

    Returns:
        A dataset named after the task.

    Raises:
        ValueError: For an unknown task, format or split, or more samples than the split holds.
    """
    _check_task(task)
    return dataset_from_pairs(
        _shipped_pairs(task), task, fmt, n=n, split=split, seed=seed, shots=shots
    )


# ---------------------------------------------------------------------- PARAREL facts
