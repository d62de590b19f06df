"""PARAREL facts (Elazar et al., TACL 2021) as datasets for pretrained models: T-REx triples of a
relation with paraphrased templates. See [`tl_capability.zoo.real`][tl_capability.zoo.real].
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import datasets

from tl_capability._fv_pararel_files import read_pararel_patterns, read_trex
from tl_capability.data import CapabilityDataset, check_answer_tokens
from tl_capability.options import check_positive_int
from tl_capability.zoo.real_formats import PARAREL_DIR, PromptFormat, _parse

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
        check_positive_int(n_facts, "n_facts")
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
