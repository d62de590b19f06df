"""The dataset of (prompt, answer) pairs, validated:
[`CapabilityDataset`][tl_capability.data.CapabilityDataset]."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch


class CapabilityDataset:
    """A validated dataset of (prompt, answer) pairs.

    Build one with [`from_pairs`][tl_capability.data.CapabilityDataset.from_pairs],
    [`from_hf`][tl_capability.data.CapabilityDataset.from_hf] or
    [`from_file`][tl_capability.data.CapabilityDataset.from_file]; named hub loaders live in
    [`tl_capability.loaders`][tl_capability.loaders], the zoo model's tasks in
    [`tl_capability.zoo`][tl_capability.zoo].

    Attributes:
        data: The underlying ``datasets.Dataset``.
        name: A label for reports (the capability's name).
    """

    def __init__(self, data: datasets.Dataset, name: str | None = None) -> None:
        for column in ("prompt", "answer"):
            if column not in data.column_names:
                raise ValueError(
                    f"a CapabilityDataset needs a {column!r} column; got {data.column_names}"
                )
        if len(data) == 0:
            raise ValueError(f"the dataset {name!r} is empty" if name else "the dataset is empty")
        for i, (p, a) in enumerate(zip(data["prompt"], data["answer"], strict=True)):
            if not isinstance(p, str) or not isinstance(a, str):
                raise ValueError(f"sample {i}: prompt and answer must be strings")
            if not a:
                raise ValueError(f"sample {i} ({p[:40]!r}): the answer is empty")
        if "label" in data.column_names and "choices" in data.column_names:
            rows = zip(data["choices"], data["label"], data["answer"], strict=True)
            for i, (c, lab, a) in enumerate(rows):
                if c is None or lab is None:
                    continue
                if not 0 <= lab < len(c):
                    raise ValueError(f"sample {i}: label {lab} is not an index into {c}")
                if c[lab] != a:
                    raise ValueError(f"sample {i}: answer {a!r} is not choices[label] = {c[lab]!r}")
        if "subject" in data.column_names:
            for i, (p, s) in enumerate(zip(data["prompt"], data["subject"], strict=True)):
                if not isinstance(s, str) or not s or s not in p:
                    raise ValueError(
                        f"sample {i} ({p!r}): the subject {s!r} is not a non-empty substring of "
                        "its prompt (a 'subject' column names the part of each prompt that "
                        "methods such as causal tracing corrupt; rename or drop a column that "
                        "means something else)"
                    )
        self.data = data
        self.name = name

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pairs(
        cls,
        prompts: Sequence[str],
        answers: Sequence[str],
        name: str | None = None,
        *,
        choices: Sequence[Sequence[str]] | None = None,
        labels: Sequence[int] | None = None,
        subjects: Sequence[str] | None = None,
    ) -> CapabilityDataset:
        """Builds a dataset from parallel lists of prompts and answers.

        Args:
            prompts: The prompts.
            answers: The answers, one per prompt (with the leading space a BPE tokenizer
                expects after the prompt).
            name: A label for reports.
            choices: Every candidate answer of each sample (multiple choice).
            labels: The index of each sample's answer in its ``choices``.
            subjects: The subject of each sample (``"France"`` in ``"The capital of France
                is"``), a substring of its prompt, kept in a ``subject`` column for methods
                that corrupt or patch the subject's tokens (causal tracing).

        Raises:
            ValueError: If the lists differ in length or are empty, or naming the first sample
                whose subject is not a substring of its prompt.
        """
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        columns: dict[str, list[Any]] = {"prompt": list(prompts), "answer": list(answers)}
        if choices is not None:
            columns["choices"] = [list(c) for c in choices]
        if labels is not None:
            columns["label"] = list(labels)
        if subjects is not None:
            columns["subject"] = list(subjects)
        for key, values in columns.items():
            if len(values) != len(prompts):
                raise ValueError(f"{len(values)} {key} for {len(prompts)} prompts")
        return cls(datasets.Dataset.from_dict(columns), name)

    @classmethod
    def from_hf(
        cls,
        data: datasets.Dataset,
        *,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        name: str | None = None,
    ) -> CapabilityDataset:
        """Wraps a ``datasets.Dataset``, renaming its prompt/answer columns if needed."""
        renames = {
            old: new
            for old, new in ((prompt_column, "prompt"), (answer_column, "answer"))
            if old != new
        }
        for old in renames:
            if old not in data.column_names:
                raise ValueError(f"column {old!r} not in {data.column_names}")
        if renames:
            data = data.rename_columns(renames)
        return cls(data, name)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        name: str | None = None,
    ) -> CapabilityDataset:
        """Reads a local ``.jsonl``/``.json`` or ``.csv`` file with prompt and answer columns."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            builder = "json"
        elif suffix == ".csv":
            builder = "csv"
        else:
            raise ValueError(f"unsupported file type {suffix!r}: use .jsonl, .json or .csv")
        data = datasets.load_dataset(builder, data_files=str(path), split="train")
        return cls.from_hf(
            data,
            prompt_column=prompt_column,
            answer_column=answer_column,
            name=name or path.stem,
        )

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.data[index]

    def __repr__(self) -> str:
        return f"CapabilityDataset(name={self.name!r}, n={len(self)})"

    @property
    def prompts(self) -> list[str]:
        """All prompts, in order."""
        return self._column("prompt")

    @property
    def answers(self) -> list[str]:
        """All answers, in order."""
        return self._column("answer")

    def _column(self, name: str) -> list[str]:
        # Read through Arrow (indices of select / shuffle applied): iterating the datasets
        # column formats one row at a time, 50x slower at 10,000 samples.
        return self.data.with_format("arrow")[name].to_pylist()

    @property
    def subjects(self) -> list[str] | None:
        """Each sample's subject (a substring of its prompt), or ``None`` when the dataset has
        no ``subject`` column."""
        if "subject" not in self.data.column_names:
            return None
        return self._column("subject")

    @property
    def is_multiple_choice(self) -> bool:
        """Whether the dataset has ``choices`` and ``label`` columns."""
        return {"choices", "label"} <= set(self.data.column_names)

    def select(self, indices: Sequence[int]) -> CapabilityDataset:
        """The samples at ``indices``, as a new dataset with the same name."""
        return CapabilityDataset(self.data.select(list(indices)), self.name)

    def shuffle(self, seed: int = 0) -> CapabilityDataset:
        """A deterministically shuffled copy."""
        return CapabilityDataset(self.data.shuffle(seed=seed), self.name)

    def split(self, fraction: float = 0.5, seed: int = 0) -> tuple[CapabilityDataset, ...]:
        """Two disjoint random parts, the first holding ``fraction`` of the samples."""
        if not 0 < fraction < 1 or len(self) < 2:
            raise ValueError("split needs 0 < fraction < 1 and at least 2 samples")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        cut = min(max(1, round(fraction * len(self))), len(self) - 1)
        return self.select(order[:cut].tolist()), self.select(order[cut:].tolist())

    def to_jsonl(self, path: str | Path) -> None:
        """Writes the dataset as JSON lines (readable by
        [`from_file`][tl_capability.data.CapabilityDataset.from_file])."""
        with open(path, "w") as f:
            for row in self.data:
                f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------- tokenization
