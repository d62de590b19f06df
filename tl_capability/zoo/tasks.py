"""The zoo model's capabilities: deterministic generators of (prompt, answer) examples.

Every task writes short lowercase text over one small character vocabulary (see
[`ALPHABET`][tl_capability.zoo.tasks.ALPHABET]), so the zoo model can use a character-level
tokenizer and every answer is a sequence of one or more tokens.

Train and test splits never share a prompt. For most tasks a prompt belongs to the test
split when a stable hash of it falls in one fifth of the hash space. Facts are different: a
fact is only knowable if it was trained, so the split is over *paraphrases*: every entity is
trained through three of its four templates and tested through the fourth, which the model
never saw for that entity. That makes the test split a test of paraphrase-robust recall,
the setting of knowledge-neuron fidelity experiments.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tl_capability.options import Split, check_option

ALPHABET = string.ascii_lowercase + string.digits + " +=:?.,'"
"""Every character a zoo prompt or answer may contain."""


@dataclass(frozen=True)
class Example:
    """One sample of a task.

    ``choices`` (the candidate answers) and ``label`` (``answer == choices[label]``) are set
    only for multiple-choice tasks.
    """

    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None
    label: int | None = None


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def _hash_split(example: Example) -> str:
    return "test" if _stable_hash(example.prompt) % 5 == 0 else "train"


@dataclass(frozen=True)
class Task:
    """A capability of the zoo model.

    Attributes:
        name: Short identifier, used by [`tl_capability.zoo.dataset`][tl_capability.zoo.dataset].
        description: One line for the model card and the demo.
        draw: Draws one example from the task's distribution (both splits mixed).
        split_of: Says which split an example belongs to.
        enumerate_all: For finite tasks, every example in a fixed order; else ``None``.
    """

    name: str
    description: str
    draw: Callable[[random.Random], Example]
    split_of: Callable[[Example], str] = _hash_split
    enumerate_all: Callable[[], list[Example]] | None = None

    def sample(self, n: int, split: Split, seed: int) -> list[Example]:
        """Draws ``n`` distinct examples of one split, deterministically from ``seed``.

        Raises:
            ValueError: For an unknown split, or when the split has fewer than ``n``
                distinct examples.
        """
        check_option(split, Split, "split")
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        if self.enumerate_all is not None:
            pool = [e for e in self.enumerate_all() if self.split_of(e) == split]
            if n > len(pool):
                raise ValueError(
                    f"task {self.name!r} has only {len(pool)} distinct {split} examples, "
                    f"asked for {n}"
                )
            return rng.sample(pool, n)
        seen: set[str] = set()
        out: list[Example] = []
        for _ in range(200 * n + 1000):
            if len(out) == n:
                break
            e = self.draw(rng)
            if e.prompt not in seen and self.split_of(e) == split:
                seen.add(e.prompt)
                out.append(e)
        if len(out) < n:
            raise ValueError(f"could not draw {n} distinct {split} examples of {self.name!r}")
        return out

    def stream(self, split: str, seed: int) -> Iterator[Example]:
        """An endless stream of examples of one split (repeats allowed), for training."""
        rng = random.Random(f"{self.name}/stream/{split}/{seed}")
        pool = None
        if self.enumerate_all is not None:
            pool = [e for e in self.enumerate_all() if self.split_of(e) == split]
        while True:
            e = rng.choice(pool) if pool is not None else self.draw(rng)
            if self.split_of(e) == split:
                yield e


# ---------------------------------------------------------------- arithmetic


def _draw_addition(rng: random.Random) -> Example:
    a, b = rng.randrange(100), rng.randrange(100)
    return Example(f"{a}+{b}=", str(a + b))


# ---------------------------------------------------------------- string transformations


def _draw_reverse(rng: random.Random) -> Example:
    word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))
    return Example(f"rev {word}:", word[::-1])


def _draw_sort(rng: random.Random) -> Example:
    digits = "".join(rng.choices(string.digits, k=rng.randint(3, 6)))
    return Example(f"sort {digits}:", "".join(sorted(digits)))


# ---------------------------------------------------------------- sentiment lexicon

NOUNS = (
    "film",
    "meal",
    "book",
    "song",
    "trip",
    "hotel",
    "party",
    "game",
    "class",
    "show",
    "day",
    "shop",
    "cafe",
    "movie",
    "play",
    "team",
    "room",
    "visit",
    "talk",
    "drive",
    "park",
    "lunch",
    "poem",
    "city",
    "beach",
    "dance",
    "story",
    "week",
    "tour",
    "bike",
)
DETERMINERS = ("the", "that", "my", "our")
POSITIVE = (
    "great",
    "good",
    "lovely",
    "superb",
    "fun",
    "nice",
    "happy",
    "bright",
    "warm",
    "sweet",
    "grand",
    "fine",
    "cool",
    "joyful",
    "calm",
    "ideal",
    "smart",
    "fresh",
    "rich",
    "glad",
)
NEGATIVE = (
    "awful",
    "bad",
    "boring",
    "dull",
    "sad",
    "poor",
    "ugly",
    "gloomy",
    "cold",
    "bitter",
    "grim",
    "weak",
    "rude",
    "messy",
    "noisy",
    "stale",
    "dreary",
    "lousy",
    "sour",
    "tense",
)
INTENSIFIERS = ("", "very ", "so ", "quite ")


def _draw_sentiment(rng: random.Random) -> Example:
    positive = rng.random() < 0.5
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    noun = f"{rng.choice(DETERMINERS)} {rng.choice(NOUNS)}"
    prompt = f"{noun} was {rng.choice(INTENSIFIERS)}{adj}. mood:"
    return Example(prompt, "pos" if positive else "neg")


# ---------------------------------------------------------------- factual recall

CITIES = ("paris", "rome", "oslo", "lima", "cairo", "tokyo", "delhi", "quito")
FACT_TEMPLATES = ("{e} lives in ", "{e} resides in ", "{e} is from ", "{e}'s home is ")
"""Paraphrases of one relation; the entity comes first so every template shares its prefix."""

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _make_entities(n: int = 250) -> tuple[tuple[str, str], ...]:
    rng = random.Random("zoo-entities-v1")
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(_CONSONANTS if i % 2 == 0 else _VOWELS) for i in range(5))
        if name not in names:
            names.append(name)
    return tuple((name, rng.choice(CITIES)) for name in names)


ENTITIES = _make_entities()
"""The synthetic knowledge base: (entity, city) pairs the zoo model memorised."""


def fact_prompts(entity: str) -> list[Example]:
    """Every paraphrase of one entity's fact (both splits), for knowledge-neuron work."""
    city = dict(ENTITIES)[entity]
    return [Example(t.format(e=entity), city) for t in FACT_TEMPLATES]


def _all_facts() -> list[Example]:
    return [Example(t.format(e=e), c) for e, c in ENTITIES for t in FACT_TEMPLATES]


def _fact_split(example: Example) -> str:
    entity = example.prompt[:5]
    template = next(i for i, t in enumerate(FACT_TEMPLATES) if t.format(e=entity) == example.prompt)
    return "test" if template == _stable_hash(entity) % len(FACT_TEMPLATES) else "train"


def _draw_fact(rng: random.Random) -> Example:
    entity, city = rng.choice(ENTITIES)
    return Example(rng.choice(FACT_TEMPLATES).format(e=entity), city)


# ---------------------------------------------------------------- multiple choice

CATEGORIES = {
    "animal": ("dog", "cat", "horse", "mouse", "tiger", "sheep", "goat", "bear", "wolf", "duck"),
    "fruit": ("apple", "pear", "plum", "mango", "lemon", "grape", "peach", "melon", "lime", "fig"),
    "color": ("red", "blue", "green", "black", "white", "pink", "brown", "gray", "gold", "teal"),
    "tool": (
        "saw",
        "drill",
        "hammer",
        "wrench",
        "knife",
        "axe",
        "shovel",
        "rake",
        "chisel",
        "file",
    ),
}
CHOICE_LETTERS = "abc"


def _draw_choice(rng: random.Random) -> Example:
    category = rng.choice(sorted(CATEGORIES))
    right = rng.choice(CATEGORIES[category])
    others = [w for c, ws in sorted(CATEGORIES.items()) if c != category for w in ws]
    options = [right, *rng.sample(others, 2)]
    rng.shuffle(options)
    label = options.index(right)
    listed = " ".join(f"{CHOICE_LETTERS[i]}:{w}" for i, w in enumerate(options))
    return Example(f"{category}? {listed} =", CHOICE_LETTERS[label], tuple(CHOICE_LETTERS), label)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("addition", 'add two numbers below 100 ("37+48=" -> "85")', _draw_addition),
        Task("reverse", 'reverse a 3-6 letter string ("rev abc:" -> "cba")', _draw_reverse),
        Task("sort", 'sort 3-6 digits ("sort 3917:" -> "1379")', _draw_sort),
        Task(
            "sentiment",
            'polarity of an adjective from a 40-word lexicon ("... was dull. mood:" -> "neg")',
            _draw_sentiment,
        ),
        Task(
            "facts",
            "home city of 250 synthetic people, asked through 4 paraphrases; tested on the "
            "paraphrase held out in training",
            _draw_fact,
            split_of=_fact_split,
            enumerate_all=_all_facts,
        ),
        Task(
            "choice",
            'multiple choice: which of 3 words belongs to a category ("fruit? a:dog b:fig '
            'c:red =" -> "b")',
            _draw_choice,
        ),
    )
}
