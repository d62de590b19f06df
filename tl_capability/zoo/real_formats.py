"""Where the zoo's real data lives, and the prompt formats real tasks and facts are written in.

Templates use PARAREL's notation: ``[X]`` is the input (subject), ``[Y]`` the answer, which must
end the template (punctuation after it aside).
See [`tl_capability.zoo.real`][tl_capability.zoo.real].
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
