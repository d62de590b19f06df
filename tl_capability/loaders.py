"""Named loaders that map public datasets' real schemas to (prompt, answer) pairs.

Each loader takes ``source``: a hub name (needs a network; the default is the dataset's usual
repository), or a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file or directory with the
same columns, which always works offline. The datasets are those of the capability-localization
paper (GSM8K, Emotion, IMDB, MetaMathQA, Code25K) and MCEval8K-style multiple choice from the
neuron-empirical-gradient paper.

Two more loaders read the original files of the sets shipped (in part) with the zoo
([`tl_capability.zoo.real`][tl_capability.zoo.real]), so that the full sets work the same way:
[`load_function_vectors`][tl_capability.loaders.load_function_vectors] (a Function Vectors task
file, Todd et al., ICLR 2024) and [`load_pararel`][tl_capability.loaders.load_pararel] (PARAREL's
T-REx facts and paraphrase patterns, Elazar et al., TACL 2021).

Answers begin with a space, as BPE tokenizers (GPT-2, Llama) write a word after a prompt.
Classification and multiple-choice sets also fill ``choices`` (every candidate answer, spelled as
the answer is) and ``label`` (``answer == choices[label]``), which skill-neuron probes use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tl_capability._fv_pararel_files import read_function_vectors, read_pararel_patterns, read_trex
from tl_capability.data import CapabilityDataset, check_answer_tokens
from tl_capability.hub_loaders import (
    EMOTION_LABELS,
    IMDB_LABELS,
    load_code25k,
    load_emotion,
    load_gsm8k,
    load_imdb,
    load_mceval8k,
    load_metamathqa,
    load_raw,
    looks_local,
)
from tl_capability.options import check_positive_int
from tl_capability.zoo import capability_names, real
from tl_capability.zoo import dataset as zoo_dataset

__all__ = [
    "EMOTION_LABELS",
    "IMDB_LABELS",
    "LOADERS",
    "load",
    "load_code25k",
    "load_emotion",
    "load_function_vectors",
    "load_gsm8k",
    "load_imdb",
    "load_mceval8k",
    "load_metamathqa",
    "load_pararel",
    "load_raw",
    "looks_local",
    "resolve",
]


def load_function_vectors(
    source: str | Path | None = None,
    fmt: Any = 0,
    *,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    shots: int | None = None,
    task: str | None = None,
) -> CapabilityDataset:
    """A Function Vectors task file as prompts in one of the zoo's formats.

    The pairs are split into test and train as the zoo's shipped tasks are (by a hash of each
    input, so a word is in the same split in the full file and in the zoo's subset), and
    few-shot demonstrations come from the train split; see
    [`task_dataset`][tl_capability.zoo.real.task_dataset].

    Args:
        source: The task's ``.json`` file (a list of ``{"input", "output"}`` objects), or the
            name of a task the zoo ships ([`task_names`][tl_capability.zoo.real.task_names]).
        fmt: An index into the task's formats
            ([`task_formats`][tl_capability.zoo.real.task_formats]; the generic few-shot
            layouts for a task the zoo does not know), or a
            [`PromptFormat`][tl_capability.zoo.real.PromptFormat].
        split: ``"test"`` or ``"train"``.
        n: Number of samples (all of the split when ``None``).
        seed: Which samples and demonstrations (deterministic).
        shots: Demonstrations before each query (the format's default when ``None``).
        task: The task whose formats to use (default: the file's name without ``.json``).

    Raises:
        FileNotFoundError: When ``source`` is neither a file nor a shipped task.
        ValueError: For a file that is not a Function Vectors task file (naming it and the
            format expected), an unknown format or split, or more samples than the split
            holds.
    """
    if source is None:
        raise ValueError(
            f"function_vectors needs a task file or a shipped task ({real.task_names()}), "
            "e.g. function_vectors:antonym"
        )
    path = Path(source)
    if not path.is_file() and str(source) in real.task_names():
        path = real.FV_DIR / f"{source}.json"
    return real.dataset_from_pairs(
        read_function_vectors(path),
        task or path.stem,
        fmt,
        n=n,
        split=split,
        seed=seed,
        shots=shots,
    )


def load_pararel(
    facts_path: str | Path | None = None,
    patterns_path: str | Path | None = None,
    *,
    n_facts: int | None = None,
    n: int | None = None,
    relation: str | None = None,
    templates: Sequence[int | str] | None = None,
    split: str | None = None,
    model: Any = None,
) -> CapabilityDataset:
    """T-REx facts with PARAREL's paraphrase patterns (or the zoo's own templates), one row per
    (fact, paraphrase), for causal LMs.

    A pattern becomes a prompt when ``[Y]`` ends it (trailing punctuation aside): the prompt is
    the text before ``[Y]`` with ``[X]`` replaced by the subject, and the answer is the object,
    with a leading space when the pattern has one before ``[Y]``. Patterns with text after
    ``[Y]`` (``"[Y] is the capital of [X]."``, ``"[X] is a [Y]-born person."``) cannot be read
    by next-token prediction and are skipped. Subjects with more than one object in the file
    are dropped (no single right answer); repeated facts are kept once.

    The dataset has ``prompt``, ``answer``, ``subject`` (a substring of the prompt), ``fact``
    (the fact's index) and ``template`` (the pattern's index among the usable ones) columns; see
    [`fact_dataset`][tl_capability.zoo.real.fact_dataset].

    Args:
        facts_path: The relation's ``data/trex_lms_vocab/P*.jsonl`` file, or the id of a
            relation the zoo ships ([`relation_names`][tl_capability.zoo.real.relation_names]).
        patterns_path: Its ``data/pattern_data/graphs_json/P*.jsonl`` file; ``None`` uses the
            zoo's own templates of the relation
            ([`relation_templates`][tl_capability.zoo.real.relation_templates]).
        n_facts: Keep the first ``n_facts`` facts (all when ``None``).
        n: Keep the first ``n`` rows (as the other loaders' ``n``; all when ``None``).
        relation: The relation's id (default: the facts file's name, ``P36``).
        templates: Keep only these patterns: indices into the usable ones, or the patterns
            themselves.
        split: Ignored: PARAREL has no splits (accepted for the loaders' common signature).
        model: A model or tokenizer to check the answers' tokens against
            ([`check_answer_tokens`][tl_capability.data.check_answer_tokens]).

    Raises:
        FileNotFoundError: When ``facts_path`` is neither a file nor a shipped relation.
        ValueError: For files in the wrong format (naming the file and the format expected),
            no usable pattern, or, without ``patterns_path``, a relation the zoo has no
            templates for; with ``model``, naming a fact whose answer the tokenizer splits
            across the prompt's end.
    """
    del split
    if facts_path is None:
        raise ValueError(
            f"pararel needs a T-REx facts file or a shipped relation ({real.relation_names()}), "
            "e.g. pararel:P36"
        )
    path = Path(facts_path)
    if not path.is_file() and str(facts_path) in real.relation_names():
        path = real.PARAREL_DIR / "trex" / f"{facts_path}.jsonl"
    facts = read_trex(path)
    relation = relation or path.stem
    if patterns_path is None:
        if relation not in real.RELATIONS:
            raise ValueError(
                f"the zoo has no templates for relation {relation!r} ({sorted(real.RELATIONS)}); "
                "pass patterns_path (PARAREL's graphs_json file of the relation)"
            )
        patterns = real.relation_templates(relation)
    else:
        patterns = real.causal_templates(read_pararel_patterns(patterns_path))
        if not patterns:
            raise ValueError(
                f"{patterns_path}: no pattern ends with [Y], so none can be read by next-token "
                "prediction"
            )
    data = real.facts_dataset_from_pairs(facts, patterns, relation, n_facts=n_facts, keep=templates)
    data = _limit_dataset(data, n)
    if model is not None:
        check_answer_tokens(model, data)
    return data


def _limit_dataset(data: CapabilityDataset, n: int | None) -> CapabilityDataset:
    return data if n is None else data.select(range(min(n, len(data))))


LOADERS: dict[str, Callable[..., CapabilityDataset]] = {
    "gsm8k": load_gsm8k,
    "emotion": load_emotion,
    "imdb": load_imdb,
    "metamathqa": load_metamathqa,
    "code25k": load_code25k,
    "mceval8k": load_mceval8k,
    "function_vectors": load_function_vectors,
    "pararel": load_pararel,
}
"""Loader of each named dataset."""


def load(name: str, source: str | Path | None = None, **kwargs: Any) -> CapabilityDataset:
    """Loads a named dataset (see [`LOADERS`][tl_capability.loaders.LOADERS]) from its hub default
    or a local ``source``."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(LOADERS)}")
    if source is not None:  # the first parameter of every loader
        return LOADERS[name](source, **kwargs)
    return LOADERS[name](**kwargs)


def resolve(
    spec: str, *, split: str = "test", n: int | None = None, seed: int = 0
) -> CapabilityDataset:
    """A dataset from a command-line style spec.

    Specs, tried in this order:

    - a zoo capability (``addition``, ``sentiment``, ...): ``n`` fresh samples (default 200) of
      its ``split``, seeded;
    - a loader of [`LOADERS`][tl_capability.loaders.LOADERS] (``emotion``) from its hub default, or
      ``emotion:PATH`` from a local file or directory with the same columns;
    - a local ``.jsonl``/``.json``/``.csv`` file with ``prompt`` and ``answer`` columns;
    - any other name: a hub dataset with ``prompt`` and ``answer`` columns.

    ``n`` keeps the first ``n`` samples of loaded data (all when ``None``).

    Raises:
        ValueError: For an ``n`` that is not a positive integer, or a split other than
            ``"test"`` / ``"train"`` of a zoo capability.
        FileNotFoundError: For a path-like spec (``./x.jsonl``, ``data/x.csv``,
            ``emotion:./x.jsonl``) that does not exist.
    """
    if n is not None:
        check_positive_int(n, "n")
    name, _, source = spec.partition(":")
    if name in capability_names() and not source:
        if split not in ("test", "train"):
            raise ValueError(
                f"zoo capability {name!r} has the splits 'test' and 'train', not {split!r}"
            )
        return zoo_dataset(name, n=200 if n is None else n, split=split, seed=seed)
    if name in LOADERS:
        return load(name, source or None, split=split, n=n)
    if Path(spec).is_file():
        data = CapabilityDataset.from_file(spec)
    else:
        data = CapabilityDataset.from_hf(load_raw(spec, split), name=spec)
    return data if n is None else data.select(range(min(n, len(data))))
