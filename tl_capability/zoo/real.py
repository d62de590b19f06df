"""Real tasks and real facts for pretrained models: Function Vectors tasks and PARAREL facts.

The zoo's own capabilities ([`tl_capability.zoo.tasks`][tl_capability.zoo.tasks]) suit the zoo
models; a pretrained model needs natural-language data. Two public, MIT-licensed sets ship (in
part) inside the package, under ``tl_capability/zoo/data/`` with their licences and a README
each; ``docs/real-data.md`` gives their sources and SmolLM2-135M's accuracies.

- **Function Vectors tasks** (Todd et al., ICLR 2024): word-level tasks as ``(input, output)``
  pairs (``present-past``: ``walk`` -> ``walked``).
  [`task_dataset`][tl_capability.zoo.real.task_dataset] writes them as prompts in one of several
  deliberately different formats ([`task_formats`][tl_capability.zoo.real.task_formats]):
  zero-shot templates ("The past tense of walk is") and few-shot layouts ("walk -> walked"
  lines) whose demonstrations come from the train split only. Inputs are split into test and
  train by a hash of the input, so a word keeps its split in the full set
  ([`load_function_vectors`][tl_capability.loaders.load_function_vectors]).
- **PARAREL facts** (Elazar et al., TACL 2021): T-REx triples of a relation (``P36``, capital)
  with paraphrased templates, the knowledge-neuron papers' setting.
  [`fact_dataset`][tl_capability.zoo.real.fact_dataset] writes every (fact, paraphrase) pair,
  with the subject (a substring of the prompt) in a ``subject`` column;
  [`facts`][tl_capability.zoo.real.facts] gives one dataset per fact, named after its subject.

Templates use PARAREL's notation: ``[X]`` is the input (subject), ``[Y]`` the answer, which must
end the template (punctuation after it aside). The prompt is the text before ``[Y]``; the answer
gets a leading space when the template has one before ``[Y]``, as BPE tokenizers expect.

Example:
    >>> from tl_capability.zoo import real
    >>> data = real.task_dataset("present-past", n=3, fmt=real.ARROW)
    >>> len(data.prompts[0].splitlines()), data.answers[0].startswith(" ")
    (4, True)
    >>> per_fact = real.facts("P36", n=2)
    >>> per_fact[0].name == per_fact[0].subjects[0]
    True
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import datasets

from tl_capability.data import CapabilityDataset, check_answer_tokens
from tl_capability.loaders import read_function_vectors, read_trex

DATA_DIR = Path(__file__).parent / "data"
"""The directory of the shipped real data."""

FV_DIR = DATA_DIR / "function_vectors"
"""The shipped Function Vectors task files (``<task>.json``, the original format)."""

PARAREL_DIR = DATA_DIR / "pararel"
"""The shipped PARAREL files: ``trex/<P>.jsonl`` (facts) and ``patterns/<P>.jsonl``
(PARAREL's own paraphrase patterns), in the original formats."""

TEST_FRACTION = 0.6
"""The share of a task's distinct inputs in its test split (the rest is train)."""

DEFAULT_SHOTS = 3
"""Demonstrations before each query in the one-line few-shot formats (``walk -> walked``); the
two-line layouts (``input:`` / ``output:``) show one fewer, so that prompts stay at about 40
tokens or less (few-shot prompts cost the compute)."""

# [Y] ends a usable template: only spaces, punctuation and closing quotes or brackets follow it.
_TAIL = re.compile(r"(?P<before>.*?)(?P<space>\s*)\[Y\](?P<after>[\s.,;:!?)\]\"'»]*)", re.S)


def _parse(template: str) -> tuple[str, str, str] | None:
    """``(text before [Y] without trailing space, the space before [Y], text after [Y])`` of a
    template whose ``[Y]`` ends it (punctuation aside) and that holds ``[X]`` once before it;
    ``None`` for any other template."""
    match = _TAIL.fullmatch(template)
    if match is None or template.count("[Y]") != 1 or match["before"].count("[X]") != 1:
        return None
    space = " " if match["space"] else ""
    return match["before"], space, match["after"]


def causal_templates(patterns: Sequence[str]) -> list[str]:
    """The patterns a causal LM can answer by next-token prediction: those that hold ``[X]``
    once and end with ``[Y]`` (punctuation after it aside), in order, without repeats.

    Args:
        patterns: PARAREL patterns (``"The capital of [X] is [Y] ."``).
    """
    return list(dict.fromkeys(p for p in patterns if _parse(p) is not None))


@dataclass(frozen=True)
class PromptFormat:
    """One way to write a task's ``(input, output)`` pairs as prompts.

    Attributes:
        template: One example in PARAREL's notation: ``[X]`` the input, ``[Y]`` the answer,
            which ends it (``"The past tense of [X] is [Y]"``, ``"[X] -> [Y]"``).
        shots: How many demonstrations (filled-in templates, from the train split) come
            before the query by default: 0 for a zero-shot template.
        separator: The text between demonstrations, and between the last one and the query.
        name: A short label for tables.

    Raises:
        ValueError: For a template without ``[X]`` once and ``[Y]`` at its end.
    """

    template: str
    shots: int = 0
    separator: str = "\n"
    name: str = ""

    def __post_init__(self) -> None:
        if _parse(self.template) is None:
            raise ValueError(
                f"template {self.template!r} must hold [X] once and end with [Y] (punctuation "
                "after it aside)"
            )
        if self.shots < 0:
            raise ValueError(f"shots must be at least 0, got {self.shots}")

    @property
    def label(self) -> str:
        """The name, or a description made from the template."""
        if self.name:
            return self.name
        kind = f"{self.shots}-shot" if self.shots else "zero-shot"
        return f"{kind} {self.template!r}"

    def query(self, x: str) -> str:
        """The prompt for input ``x`` without demonstrations."""
        before, _, _ = _parse(self.template)  # type: ignore[misc]
        return before.replace("[X]", x)

    def answer(self, y: str) -> str:
        """The answer text for output ``y`` (with the template's space before it)."""
        _, space, _ = _parse(self.template)  # type: ignore[misc]
        return space + y

    def example(self, x: str, y: str) -> str:
        """The whole filled-in template (a demonstration)."""
        before, space, after = _parse(self.template)  # type: ignore[misc]
        return before.replace("[X]", x) + space + y + after.rstrip()

    def prompt(self, x: str, demonstrations: Sequence[tuple[str, str]] = ()) -> str:
        """The demonstrations, then the query for ``x``."""
        return "".join(self.example(dx, dy) + self.separator for dx, dy in demonstrations) + (
            self.query(x)
        )


def _few_shot(template: str, name: str) -> PromptFormat:
    lines = template.count("\n") + 1
    return PromptFormat(template, shots=max(1, DEFAULT_SHOTS + 1 - lines), name=name)


ARROW = _few_shot("[X] -> [Y]", "few-shot 'x -> y'")
"""Few-shot layout: ``walk -> walked`` lines."""

INPUT_OUTPUT = _few_shot("input: [X]\noutput: [Y]", "few-shot 'input:/output:'")
"""Few-shot layout: ``input: walk`` / ``output: walked`` lines."""

QUESTION_ANSWER = _few_shot("Q: [X]\nA: [Y]", "few-shot 'Q:/A:'")
"""Few-shot layout: ``Q: walk`` / ``A: walked`` lines."""

GENERIC_FORMATS: tuple[PromptFormat, ...] = (ARROW, INPUT_OUTPUT, QUESTION_ANSWER)
"""The few-shot layouts every task has (the only formats of a task the zoo does not know)."""


def _zero(template: str) -> PromptFormat:
    return PromptFormat(template)


def _labelled(x: str, y: str) -> PromptFormat:
    return _few_shot(f"{x}: [X]\n{y}: [Y]", f"few-shot '{x}:/{y}:'")


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

RELATIONS: dict[str, str] = {
    "P37": "official language (of a country or region)",
    "P103": "native language (of a person)",
    "P36": "capital (of a country or region)",
    "P1376": "capital of (the country or region a city is the capital of)",
    "P30": "continent (of a place)",
    "P17": "country (a place's country)",
}
"""The shipped PARAREL relations and what each relates, in order of SmolLM2-135M-Instruct's
mean accuracy over their templates."""

# The zoo's own paraphrase templates of each relation, all ending with [Y] (PARAREL's patterns
# often put [Y] first, which next-token prediction cannot answer), in order of
# SmolLM2-135M-Instruct's accuracy on the relation's first 100 facts.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "P37": (
        "In [X], the official language is [Y].",
        "People in [X] officially speak [Y].",
        "The official language of [X] is [Y].",
        "[X]'s official language is [Y].",
        "The language spoken officially in [X] is [Y].",
    ),
    "P103": (
        "The native language of [X] is [Y].",
        "[X]'s mother tongue is [Y].",
        "[X] grew up speaking [Y].",
        "The first language of [X] was [Y].",
        "[X] is a native speaker of [Y].",
    ),
    "P36": (
        "The capital of [X] is [Y].",
        "The capital city of [X] is [Y].",
        "[X] has its capital in [Y].",
        "[X]'s capital city is [Y].",
        "[X]'s capital is [Y].",
        "The seat of government of [X] is [Y].",
    ),
    "P1376": (
        "The city of [X] is the capital of [Y].",
        "[X] is the capital city of [Y].",
        "[X], the capital of [Y].",
        "[X] is the capital of [Y].",
        "[X] serves as the capital of [Y].",
    ),
    "P30": (
        "[X] is part of the continent of [Y].",
        "[X] is located on the continent of [Y].",
        "[X] is in [Y].",
        "The continent of [X] is [Y].",
        "[X] lies in [Y].",
    ),
    "P17": (
        "[X] is in the country of [Y].",
        "[X] is a place in [Y].",
        "The country of [X] is [Y].",
        "[X] can be found in [Y].",
        "[X] is located in [Y].",
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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
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


def relation_names() -> list[str]:
    """The shipped PARAREL relations (``"P36"``, ...), those SmolLM2-135M knows best first."""
    return list(RELATIONS)


def _check_relation(relation: str) -> None:
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; the shipped ones are {relation_names()}")


def relation_templates(relation: str) -> list[str]:
    """The zoo's own paraphrase templates of a shipped relation (at least five, each ending
    with ``[Y]``).

    Raises:
        ValueError: For an unknown relation.
    """
    _check_relation(relation)
    return list(_TEMPLATES[relation])


def pararel_patterns(relation: str) -> list[str]:
    """PARAREL's own paraphrase patterns of a shipped relation, as shipped (``[Y]`` anywhere;
    [`causal_templates`][tl_capability.zoo.real.causal_templates] keeps those a causal LM can
    answer)."""
    from tl_capability.loaders import read_pararel_patterns

    _check_relation(relation)
    return read_pararel_patterns(PARAREL_DIR / "patterns" / f"{relation}.jsonl")


@cache
def _shipped_facts(relation: str) -> tuple[tuple[str, str], ...]:
    return tuple(read_trex(PARAREL_DIR / "trex" / f"{relation}.jsonl"))


def unique_facts(facts: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(subject, object)`` facts in order, without subjects that have more than one object
    (no single right answer) and with repeats kept once."""
    objects: dict[str, set[str]] = {}
    for subject, obj in facts:
        objects.setdefault(subject, set()).add(obj)
    return [(s, next(iter(o))) for s, o in objects.items() if len(o) == 1]


def relation_facts(relation: str) -> list[tuple[str, str]]:
    """A shipped relation's ``(subject, object)`` facts, in file order (see
    [`unique_facts`][tl_capability.zoo.real.unique_facts])."""
    _check_relation(relation)
    return unique_facts(_shipped_facts(relation))


def facts_dataset_from_pairs(
    facts: Sequence[tuple[str, str]],
    templates: Sequence[str],
    name: str,
    *,
    n_facts: int | None = None,
    keep: Sequence[int | str] | None = None,
) -> CapabilityDataset:
    """Every (fact, template) prompt of some facts, fact by fact (the engine of
    [`fact_dataset`][tl_capability.zoo.real.fact_dataset] and
    [`load_pararel`][tl_capability.loaders.load_pararel]).

    Args:
        facts: ``(subject, object)`` pairs (deduplicated here with
            [`unique_facts`][tl_capability.zoo.real.unique_facts]).
        templates: Templates ending with ``[Y]`` (see
            [`causal_templates`][tl_capability.zoo.real.causal_templates]).
        name: The dataset's name.
        n_facts: Keep the first ``n_facts`` facts (all when ``None``).
        keep: Keep only these templates: indices into ``templates``, or templates.

    Returns:
        A dataset with ``prompt``, ``answer``, ``subject``, ``fact`` (index of the fact) and
        ``template`` (index into ``templates``) columns.

    Raises:
        ValueError: For a template a causal LM cannot answer, an unknown kept template, or an
            ``n_facts`` below 1.
    """
    for t in templates:
        if _parse(t) is None:
            raise ValueError(f"template {t!r} must hold [X] once and end with [Y]")
    indices = list(range(len(templates)))
    if keep is not None:
        indices = []
        for t in keep:
            if isinstance(t, str) and t in templates:
                indices.append(list(templates).index(t))
            elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < len(templates):
                indices.append(t)
            else:
                raise ValueError(f"{t!r} is not one of {name}'s {len(templates)} templates")
    if not indices:
        raise ValueError(f"no templates for {name}")
    rows = unique_facts(facts)
    if n_facts is not None:
        if isinstance(n_facts, bool) or not isinstance(n_facts, int) or n_facts < 1:
            raise ValueError(f"n_facts must be a positive integer, got {n_facts!r}")
        rows = rows[:n_facts]
    forms = [PromptFormat(templates[i]) for i in indices]
    columns: dict[str, list[Any]] = {k: [] for k in ("prompt", "answer", "subject", "fact")}
    columns["template"] = []
    for f, (subject, obj) in enumerate(rows):
        for i, form in zip(indices, forms, strict=True):
            columns["prompt"].append(form.query(subject))
            columns["answer"].append(form.answer(obj))
            columns["subject"].append(subject)
            columns["fact"].append(f)
            columns["template"].append(i)
    return CapabilityDataset(datasets.Dataset.from_dict(columns), name)


def fact_dataset(
    relation: str,
    n_facts: int | None = None,
    templates: Sequence[int | str] | None = None,
    *,
    model: Any = None,
) -> CapabilityDataset:
    """Every (fact, paraphrase) prompt of a shipped relation, fact by fact.

    Args:
        relation: One of [`relation_names`][tl_capability.zoo.real.relation_names].
        n_facts: Keep the first ``n_facts`` facts in file order (all when ``None``).
        templates: Keep only these of
            [`relation_templates`][tl_capability.zoo.real.relation_templates]: indices, or
            the templates; PARAREL's own patterns go through
            [`load_pararel`][tl_capability.loaders.load_pararel].
        model: A model or tokenizer to check the answers' tokens against
            ([`check_answer_tokens`][tl_capability.data.check_answer_tokens]).

    Returns:
        A dataset named after the relation, with ``prompt``, ``answer``, ``subject`` (a
        substring of the prompt), ``fact`` (index of the fact) and ``template`` (index into
        the relation's templates) columns.

    Raises:
        ValueError: For an unknown relation or template, or (with ``model``) naming a sample
            whose prompt and answer tokenize differently apart than together.
    """
    _check_relation(relation)
    data = facts_dataset_from_pairs(
        _shipped_facts(relation),
        _TEMPLATES[relation],
        relation,
        n_facts=n_facts,
        keep=templates,
    )
    if model is not None:
        check_answer_tokens(model, data)
    return data


def group_by_fact(data: CapabilityDataset) -> list[CapabilityDataset]:
    """One dataset per fact of a fact dataset (its ``fact`` column, or its subject when it has
    no such column), in order, each named after its subject.

    Raises:
        ValueError: For a dataset without ``subject`` column.
    """
    subjects = data.subjects
    if subjects is None:
        raise ValueError(f"{data.name or 'the dataset'} has no subject column")
    keys = data._column("fact") if "fact" in data.data.column_names else subjects
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    out = []
    for rows in groups.values():
        part = data.select(rows)
        part.name = subjects[rows[0]]
        out.append(part)
    return out


def facts(
    relation: str,
    n: int | None = 20,
    templates: Sequence[int | str] | None = None,
    *,
    model: Any = None,
) -> list[CapabilityDataset]:
    """The first ``n`` facts of a shipped relation, one dataset per fact named after its
    subject, each prompt a paraphrase (the knowledge-neuron papers' setting).

    Args:
        relation: One of [`relation_names`][tl_capability.zoo.real.relation_names].
        n: Number of facts (all when ``None``).
        templates: As in [`fact_dataset`][tl_capability.zoo.real.fact_dataset].
        model: As in [`fact_dataset`][tl_capability.zoo.real.fact_dataset].
    """
    return group_by_fact(fact_dataset(relation, n, templates, model=model))


# ---------------------------------------------------------------------- measurement


def accuracy_table(
    model: Any,
    *,
    n: int = 100,
    n_facts: int = 100,
    tasks: Sequence[str] | None = None,
    relations: Sequence[str] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """A model's exact-match accuracy on the shipped tasks and facts (``docs/real-data.md``).

    Args:
        model: A TransformerLens model in eval mode.
        n: Test samples per task and format.
        n_facts: Facts per relation (the first ones), each with every template.
        tasks: The tasks to measure (default: all).
        relations: The relations to measure (default: all).
        batch_size: Samples per forward pass.

    Returns:
        ``{"tasks": {task: [accuracy of each format]}, "relations": {relation: {"templates":
        [accuracy of each template], "facts": number of facts, "known_any": facts answered by
        at least one template, "known_most": by more than half, "known_all": by all}}}``.
    """
    from tl_capability.evaluate import answer_correct

    out: dict[str, Any] = {"tasks": {}, "relations": {}}
    for task in task_names() if tasks is None else tasks:
        out["tasks"][task] = [
            answer_correct(model, task_dataset(task, n=n, fmt=f), batch_size=batch_size)
            .float()
            .mean()
            .item()
            for f in range(len(task_formats(task)))
        ]
    for relation in relation_names() if relations is None else relations:
        data = fact_dataset(relation, n_facts=n_facts)
        correct = answer_correct(model, data, batch_size=batch_size).tolist()
        by_template: dict[int, list[bool]] = {}
        by_fact: dict[int, list[bool]] = {}
        rows = zip(data._column("template"), data._column("fact"), correct, strict=True)
        for template, fact, ok in rows:
            by_template.setdefault(template, []).append(ok)
            by_fact.setdefault(fact, []).append(ok)
        out["relations"][relation] = {
            "templates": [sum(v) / len(v) for _, v in sorted(by_template.items())],
            "facts": len(by_fact),
            "known_any": sum(any(v) for v in by_fact.values()),
            "known_most": sum(sum(v) > len(v) / 2 for v in by_fact.values()),
            "known_all": sum(all(v) for v in by_fact.values()),
        }
    return out


def markdown_tables(table: dict[str, Any]) -> str:
    """The tables of [`accuracy_table`][tl_capability.zoo.real.accuracy_table] in Markdown: one
    column per kind of format (each task's format 0 in bold), the task's own templates, and the
    relations' templates with the facts known."""
    kinds = [f.name for f in GENERIC_FORMATS] + ["labelled few-shot", "zero-shot 1", "zero-shot 2"]
    lines = ["| task | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    own = ["| task | labelled few-shot | zero-shot 1 | zero-shot 2 |", "|---|---|---|---|"]
    for task, accs in table["tasks"].items():
        cells, texts, zero = [""] * len(kinds), [""] * 3, 0
        for i, (form, acc) in enumerate(zip(task_formats(task), accs, strict=True)):
            if form in GENERIC_FORMATS:
                k = GENERIC_FORMATS.index(form)
            elif form.shots:
                k = len(GENERIC_FORMATS)
            else:
                k, zero = len(GENERIC_FORMATS) + 1 + zero, zero + 1
            cells[k] = f"**{acc:.2f}**" if i == 0 else f"{acc:.2f}"
            if k >= len(GENERIC_FORMATS):
                texts[k - len(GENERIC_FORMATS)] = "`" + form.template.replace("\n", "\\n") + "`"
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
        own.append(f"| {task} | " + " | ".join(texts) + " |")
    rel = ["| relation | template | accuracy |", "|---|---|---:|"]
    known = [
        "| relation | facts | known by any template | by most | by all |",
        "|---|---:|---:|---:|---:|",
    ]
    for relation, row in table["relations"].items():
        for t, acc in zip(relation_templates(relation), row["templates"], strict=True):
            rel.append(f"| {relation} | `{t}` | {acc:.2f} |")
        known.append(
            f"| {relation} | {row['facts']} | {row['known_any']} | {row['known_most']} | "
            f"{row['known_all']} |"
        )
    return "\n\n".join("\n".join(t) for t in (lines, own, rel, known))
