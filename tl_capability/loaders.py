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

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets

from tl_capability.data import CapabilityDataset

EMOTION_LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")
IMDB_LABELS = ("negative", "positive")
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_raw(source: str | Path, split: str = "test", config: str | None = None) -> Any:
    """Loads a ``datasets.Dataset`` from a local file or directory, or from the hub.

    Raises:
        FileNotFoundError: When ``source`` looks like a local path (see
            [`looks_local`][tl_capability.loaders.looks_local]) but does not exist, instead of
            asking the hub for it.
        ValueError: When a local directory has no data files.
        ConnectionError: Naming the dataset, when the hub cannot be reached (offline, or
            ``HF_DATASETS_OFFLINE=1``) and the dataset is not in the local cache.
    """
    path = Path(source)
    if not path.exists() and looks_local(source):
        raise FileNotFoundError(f"no such file or directory: {str(source)!r}")
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"unsupported file type {path.suffix!r} ({sorted(_FILE_BUILDERS)})")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in _FILE_BUILDERS)
        if not files:
            raise ValueError(f"no data files ({sorted(_FILE_BUILDERS)}) under {path}")
        # Hub-style directories name their files after the split; fall back to all files.
        chosen = [f for f in files if split in f.stem] or files
        builder = _FILE_BUILDERS[chosen[0].suffix.lower()]
        return datasets.load_dataset(builder, data_files=[str(f) for f in chosen], split="train")
    try:
        return datasets.load_dataset(str(source), config, split=split)
    except ConnectionError as exc:
        raise ConnectionError(
            f"cannot load the dataset {str(source)!r} from the Hugging Face Hub ({exc}); without "
            "a network, pass a local file or directory with the same columns"
        ) from exc


def looks_local(source: str | Path) -> bool:
    """Whether ``source`` names a local file or directory rather than a hub dataset: a
    ``Path``, a name starting with ``.``, ``/`` or ``~``, or one ending in a data file's
    suffix (``data/x.csv``). Hub names (``owner/name``) are neither."""
    if isinstance(source, Path):
        return True
    text = str(source)
    return text.startswith((".", "/", "~", "\\")) or Path(text).suffix.lower() in _FILE_BUILDERS


def _limit(data: Any, n: int | None) -> Any:
    return data if n is None else data.select(range(min(n, len(data))))


def _build(
    data: Any,
    to_pair: Callable[[dict[str, Any]], tuple[str, str] | tuple[str, str, list[str], int]],
    name: str,
) -> CapabilityDataset:
    prompts, answers, choices, labels = [], [], [], []
    for row in data:
        pair = to_pair(row)
        prompts.append(pair[0])
        answers.append(pair[1])
        if len(pair) == 4:
            choices.append(pair[2])
            labels.append(pair[3])
    if not prompts:
        raise ValueError(f"{name}: no samples")
    return CapabilityDataset.from_pairs(
        prompts, answers, name, choices=choices or None, labels=labels or None
    )


def _require(row: dict[str, Any], *columns: str, name: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"{name}: rows lack columns {missing} (have {sorted(row)})")


def load_gsm8k(
    source: str | Path = "openai/gsm8k", split: str = "test", n: int | None = None
) -> CapabilityDataset:
    """GSM8K: ``question`` and ``answer`` (worked solution ending ``#### 42``) -> final number."""

    def pair(row: dict[str, Any]) -> tuple[str, str]:
        _require(row, "question", "answer", name="gsm8k")
        final = row["answer"].split("####")[-1].strip().replace(",", "")
        return f"Question: {row['question'].strip()}\nAnswer:", f" {final}"

    return _build(_limit(load_raw(source, split, "main"), n), pair, "gsm8k")


def _classification(
    source: str | Path,
    split: str,
    n: int | None,
    labels: tuple[str, ...],
    suffix: str,
    name: str,
    config: str | None = None,
) -> CapabilityDataset:
    def pair(row: dict[str, Any]) -> tuple[str, str, list[str], int]:
        _require(row, "text", "label", name=name)
        label = int(row["label"])
        if not 0 <= label < len(labels):
            raise ValueError(f"{name}: label {label} outside 0..{len(labels) - 1}")
        choices = [f" {lab}" for lab in labels]
        return f"{row['text'].strip()}\n{suffix}:", choices[label], choices, label

    return _build(_limit(load_raw(source, split, config), n), pair, name)


def load_emotion(
    source: str | Path = "dair-ai/emotion", split: str = "test", n: int | None = None
) -> CapabilityDataset:
    """dair-ai/emotion: ``text`` and ``label`` (0-5: sadness, joy, love, anger, fear, surprise)."""
    return _classification(source, split, n, EMOTION_LABELS, "Emotion", "emotion", "split")


def load_imdb(
    source: str | Path = "stanfordnlp/imdb", split: str = "test", n: int | None = None
) -> CapabilityDataset:
    """IMDB: ``text`` and ``label`` (0 negative, 1 positive)."""
    return _classification(source, split, n, IMDB_LABELS, "Sentiment", "imdb")


def load_metamathqa(
    source: str | Path = "meta-math/MetaMathQA", split: str = "train", n: int | None = None
) -> CapabilityDataset:
    """MetaMathQA: ``query`` and ``response`` (ending ``The answer is: X``) -> X."""
    pattern = re.compile(r"The answer is:?\s*(.+?)\s*$", re.S)

    def pair(row: dict[str, Any]) -> tuple[str, str]:
        _require(row, "query", "response", name="metamathqa")
        match = pattern.search(row["response"])
        if match is None:
            raise ValueError(
                f"metamathqa: response without 'The answer is': {row['response'][-80:]!r}"
            )
        return f"Question: {row['query'].strip()}\nAnswer:", f" {match.group(1).strip()}"

    return _build(_limit(load_raw(source, split), n), pair, "metamathqa")


def load_code25k(
    source: str | Path = "flytech/python-codes-25k",
    split: str = "train",
    n: int | None = None,
    max_answer_chars: int | None = 200,
) -> CapabilityDataset:
    """Code25K-style instruction sets: ``instruction``, optional ``input``, ``output`` (code).

    ``max_answer_chars`` keeps the start of long programs, since every answer token is a
    teacher-forced target (``None`` keeps them whole).
    """

    def pair(row: dict[str, Any]) -> tuple[str, str]:
        _require(row, "instruction", "output", name="code25k")
        prompt = row["instruction"].strip()
        if row.get("input"):
            prompt += "\n" + row["input"].strip()
        code = row["output"].strip()
        if max_answer_chars is not None:
            code = code[:max_answer_chars]
        return f"{prompt}\n```python\n", code

    return _build(_limit(load_raw(source, split), n), pair, "code25k")


_QUESTION_KEYS = ("query", "question", "text", "sentence", "input", "context")
_OPTION_KEYS = ("options", "choices", "candidates")
_ANSWER_KEYS = ("answer", "label", "gold", "target")


def load_mceval8k(
    source: str | Path = "iszhaoxin/MCEval8K",
    split: str = "test",
    n: int | None = None,
    config: str | None = None,
) -> CapabilityDataset:
    """MCEval8K-style multiple choice: a question, a list of options and the right one.

    Columns are found by name: the question in one of ``query``/``question``/``text``/
    ``sentence``/``input``/``context``, the options in ``options``/``choices``/``candidates``,
    the answer in ``answer``/``label``/``gold``/``target`` as an index, a letter or the option's
    text. The prompt lists the options as ``A. ...``; the answer is the letter (``" B"``).
    """

    def pick(row: dict[str, Any], keys: tuple[str, ...], what: str) -> Any:
        for k in keys:
            if k in row and row[k] is not None:
                return row[k]
        raise ValueError(f"mceval8k: no {what} column among {keys} (have {sorted(row)})")

    def pair(row: dict[str, Any]) -> tuple[str, str, list[str], int]:
        question = str(pick(row, _QUESTION_KEYS, "question")).strip()
        options = [str(o) for o in pick(row, _OPTION_KEYS, "options")]
        answer = pick(row, _ANSWER_KEYS, "answer")
        letters = [chr(ord("A") + i) for i in range(len(options))]
        if isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit()):
            label = int(answer)
        elif isinstance(answer, str) and answer.strip().upper() in letters:
            label = letters.index(answer.strip().upper())
        elif answer in options:
            label = options.index(answer)
        else:
            raise ValueError(f"mceval8k: answer {answer!r} matches no option of {options}")
        if not 0 <= label < len(options):
            raise ValueError(f"mceval8k: answer index {label} outside the {len(options)} options")
        listed = "\n".join(f"{letter}. {o}" for letter, o in zip(letters, options, strict=True))
        choices = [f" {letter}" for letter in letters]
        return f"{question}\n{listed}\nAnswer:", choices[label], choices, label

    return _build(_limit(load_raw(source, split, config), n), pair, "mceval8k")


_FV_EXPECTED = 'a Function Vectors task file: a JSON list of {"input": ..., "output": ...} objects'
_TREX_EXPECTED = (
    "T-REx facts as in PARAREL's data/trex_lms_vocab/P*.jsonl: one JSON object per line with "
    '"sub_label" and "obj_label"'
)
_PATTERNS_EXPECTED = (
    "PARAREL paraphrase patterns as in data/pattern_data/graphs_json/P*.jsonl: one JSON object "
    'per line with a "pattern" holding [X] and [Y] once each'
)


def _text(value: Any) -> str | None:
    """A stripped string from a string or an integer (``"5"`` and ``5`` alike), else None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def read_function_vectors(path: str | Path) -> list[tuple[str, str]]:
    """Reads a Function Vectors task file (``dataset_files/abstractive/<task>.json`` in
    ericwtodd/function_vectors) as ``(input, output)`` pairs, in file order.

    Args:
        path: The ``.json`` file: a list of ``{"input": ..., "output": ...}`` objects.

    Raises:
        FileNotFoundError: When there is no such file.
        ValueError: Naming the file and what was expected, when it is not JSON, not a list of
            such objects, or an entry's input or output is missing or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not JSON ({exc}); expected {_FV_EXPECTED}") from exc
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"{path} holds a {type(entries).__name__}"
            f"{' (empty)' if isinstance(entries, list) else ''}; expected {_FV_EXPECTED}"
        )
    pairs = []
    for i, entry in enumerate(entries):
        fields = (
            (_text(entry.get("input")), _text(entry.get("output")))
            if isinstance(entry, dict)
            else (None, None)
        )
        if fields[0] is None or fields[1] is None:
            raise ValueError(f"{path}: entry {i} is {entry!r}; expected {_FV_EXPECTED}")
        pairs.append((fields[0], fields[1]))
    return pairs


def _json_lines(path: str | Path, expected: str) -> tuple[Path, list[tuple[int, Any]]]:
    """The file's non-empty lines, parsed, with their line numbers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}, line {number}, is not a JSON object ({exc}); expected {expected}"
            ) from exc
    if not rows:
        raise ValueError(f"{path} is empty; expected {expected}")
    return path, rows


def read_trex(path: str | Path) -> list[tuple[str, str]]:
    """Reads T-REx facts in PARAREL's format (``data/trex_lms_vocab/P*.jsonl``) as
    ``(subject, object)`` pairs (``sub_label``, ``obj_label``), in file order.

    Raises:
        FileNotFoundError: When there is no such file.
        ValueError: Naming the file, the line and what was expected, for a line that is not a
            JSON object with non-empty ``sub_label`` and ``obj_label``.
    """
    path, rows = _json_lines(path, _TREX_EXPECTED)
    facts = []
    for number, row in rows:
        fields = (
            (_text(row.get("sub_label")), _text(row.get("obj_label")))
            if isinstance(row, dict)
            else (None, None)
        )
        if fields[0] is None or fields[1] is None:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}, line {number}, has {keys}; expected {_TREX_EXPECTED}")
        facts.append((fields[0], fields[1]))
    return facts


def read_pararel_patterns(path: str | Path) -> list[str]:
    """Reads PARAREL's paraphrase patterns of one relation
    (``data/pattern_data/graphs_json/P*.jsonl``), in file order (``"The capital of [X] is
    [Y] ."``).

    Raises:
        FileNotFoundError: When there is no such file.
        ValueError: Naming the file, the line and what was expected, for a line without a
            pattern that holds ``[X]`` and ``[Y]`` once each.
    """
    path, rows = _json_lines(path, _PATTERNS_EXPECTED)
    patterns = []
    for number, row in rows:
        pattern = row.get("pattern") if isinstance(row, dict) else None
        if not isinstance(pattern, str) or pattern.count("[X]") != 1 or pattern.count("[Y]") != 1:
            shown = pattern if isinstance(pattern, str) else row
            raise ValueError(f"{path}, line {number}, has {shown!r}; expected {_PATTERNS_EXPECTED}")
        patterns.append(pattern)
    return patterns


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
    from tl_capability.zoo import real

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

    Raises:
        FileNotFoundError: When ``facts_path`` is neither a file nor a shipped relation.
        ValueError: For files in the wrong format (naming the file and the format expected),
            no usable pattern, or, without ``patterns_path``, a relation the zoo has no
            templates for.
    """
    from tl_capability.zoo import real

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
    return _limit_dataset(data, n)


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
    from tl_capability import zoo

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    name, _, source = spec.partition(":")
    if name in zoo.capability_names() and not source:
        if split not in ("test", "train"):
            raise ValueError(
                f"zoo capability {name!r} has the splits 'test' and 'train', not {split!r}"
            )
        return zoo.dataset(name, n=200 if n is None else n, split=split, seed=seed)
    if name in LOADERS:
        return load(name, source or None, split=split, n=n)
    if Path(spec).is_file():
        data = CapabilityDataset.from_file(spec)
    else:
        data = CapabilityDataset.from_hf(load_raw(spec, split), name=spec)
    return data if n is None else data.select(range(min(n, len(data))))
