"""Loaders that map public hub datasets' real schemas to (prompt, answer) pairs: GSM8K, Emotion,
IMDB, MetaMathQA, Code25K (the capability-localization paper's sets) and MCEval8K-style multiple
choice (the neuron-empirical-gradient paper's).

Each takes ``source``: a hub name (needs a network; the default is the dataset's usual
repository), or a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file or directory with the
same columns, which always works offline. [`tl_capability.loaders`][tl_capability.loaders]
names them all (``LOADERS``) and re-exports them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
