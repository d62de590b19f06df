"""What the demo runs on: its sizes ([`DemoSizes`][tl_capability.demo.DemoSizes],
[`REAL_SIZES`][tl_capability.demo.REAL_SIZES]) and the datasets of every stage, for a zoo model
(its six capabilities) or a pretrained one (real tasks and facts, only what it answers
correctly). [`tl_capability.demo`][tl_capability.demo] runs the stages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import tl_capability.zoo as zoo
from tl_capability.data import CapabilityDataset
from tl_capability.evaluate import answer_correct, correct_subset
from tl_capability.zoo import real


@dataclass(frozen=True)
class DemoSizes:
    """How many samples each stage uses (the defaults finish in a few minutes on 2 cores)."""

    locate: int = 100
    evaluate: int = 150
    n_random: int = 3
    facts: int = 20
    probe: int = 200
    neg_samples: int = 20
    n_random_kn: int = 10
    pairs: int = 50
    enhance_train: int = 200
    epochs: tuple[int, ...] = (1, 3, 5)
    sigmas: tuple[float, ...] = (2.0, 3.0, 6.0, 12.0)
    tasks: int = 3
    steps: int = 20
    noise: float = 1.0
    trace_samples: int = 10


REAL_SIZES = DemoSizes(
    locate=24,
    evaluate=40,
    facts=6,
    probe=60,
    neg_samples=8,
    pairs=0,
    enhance_train=24,
    epochs=(1, 3),
    sigmas=(2.0, 6.0),
    steps=10,
    noise=0.3,
    trace_samples=5,
)
"""The demo's sizes on the real model (30 layers): the papers' stages on fewer samples, IG
with 10 steps; 30 minutes on 2 CPU cores (the figures in `docs/findings.md`)."""


@dataclass(frozen=True)
class _Suite:
    """What the demo measures a model on."""

    label: str
    train: dict[str, CapabilityDataset]
    test: dict[str, CapabilityDataset]
    facts: dict[str, CapabilityDataset]
    neg: CapabilityDataset
    linear: CapabilityDataset
    probe: tuple[CapabilityDataset, CapabilityDataset]
    pairs: tuple[CapabilityDataset, CapabilityDataset] | None
    enhance: tuple[str, CapabilityDataset]
    notes: tuple[str, ...] = ()


def _zoo_suite(name: str, sizes: DemoSizes) -> _Suite:
    names = zoo.capability_names()
    return _Suite(
        label=f"the zoo model {name!r}",
        train={n: zoo.dataset(n, n=sizes.locate, split="train", seed=1) for n in names},
        test={n: zoo.dataset(n, n=sizes.evaluate, split="test", seed=2) for n in names},
        facts={e: _with_subject(zoo.fact_dataset(e), e) for e, _ in zoo.ENTITIES[: sizes.facts]},
        neg=zoo.dataset("sentiment", n=sizes.neg_samples, seed=3),
        linear=zoo.dataset("addition", n=sizes.neg_samples, seed=3),
        probe=(
            zoo.dataset("choice", n=sizes.probe, split="train", seed=4),
            zoo.dataset("choice", n=sizes.probe, split="test", seed=4),
        ),
        pairs=zoo.addition_pairs(sizes.pairs) if sizes.pairs else None,
        enhance=("addition", zoo.dataset("addition", n=sizes.enhance_train, split="train", seed=5)),
    )


def _with_subject(data: CapabilityDataset, entity: str) -> CapabilityDataset:
    """A zoo fact's paraphrases with their subject marked (causal tracing noises it)."""
    return CapabilityDataset.from_pairs(
        data.prompts, data.answers, data.name, subjects=[entity] * len(data)
    )


def _kept(model: Any, data: CapabilityDataset, n: int, what: str, notes: list[str]) -> Any:
    """The first ``n`` samples the model answers correctly, noted in the report."""
    kept, count = correct_subset(model, data)
    notes.append(f"{what}: {count} of {len(data)} answered correctly, {min(n, count)} kept")
    return kept.select(range(min(n, count)))


def _choice(data: CapabilityDataset, seed: int) -> CapabilityDataset:
    """Two-way multiple choice from a task: the answer against another sample's answer."""
    rng = random.Random(seed)
    answers = data.answers
    choices, labels = [], []
    for i, answer in enumerate(answers):
        other = next(a for a in answers[i + 1 :] + answers[:i] if a != answer)
        label = rng.randrange(2)
        choices.append([other, answer] if label else [answer, other])
        labels.append(label)
    return CapabilityDataset.from_pairs(
        data.prompts, answers, data.name, choices=choices, labels=labels
    )


def _available(task: str, split: str, n: int) -> int:
    """``n``, or all of the split's inputs when it holds fewer."""
    return min(n, len(real.task_pairs(task, split)))


def _real_suite(model: Any, name: str, sizes: DemoSizes) -> _Suite:
    notes: list[str] = []
    tasks = real.task_names()[: sizes.tasks]
    train = {
        t: _kept(
            model,
            real.task_dataset(t, _available(t, "train", 3 * sizes.locate), "train", seed=1),
            sizes.locate,
            f"{t} (train)",
            notes,
        )
        for t in tasks
    }
    test = {
        t: _kept(
            model,
            real.task_dataset(t, _available(t, "test", 2 * sizes.evaluate), "test", seed=2),
            sizes.evaluate,
            f"{t} (test)",
            notes,
        )
        for t in tasks
    }
    facts: dict[str, CapabilityDataset] = {}
    for relation in real.relation_names():
        for fact in real.facts(relation, 3 * sizes.facts, model=model):
            if len(facts) == sizes.facts:
                break
            correct = answer_correct(model, fact).nonzero()[:, 0].tolist()
            if len(correct) >= 2:  # fidelity compares paraphrases: two at least
                facts[f"{relation}: {fact.name}"] = fact.select(correct)
    notes.append(
        f"facts: the first {len(facts)} whose answer the model gives for at least two "
        "paraphrases, those paraphrases kept"
    )
    first, second = tasks[0], tasks[min(1, len(tasks) - 1)]
    probe = real.task_dataset(first, _available(first, "test", 2 * sizes.probe), "test", seed=4)
    half = len(probe) // 2
    return _Suite(
        label=f"the pretrained model {name!r}",
        train=train,
        test=test,
        facts=facts,
        neg=test[first].select(range(min(sizes.neg_samples, len(test[first])))),
        linear=test[second].select(range(min(sizes.neg_samples, len(test[second])))),
        probe=(
            _choice(probe.select(range(half)), 4),
            _choice(probe.select(range(half, 2 * half)), 5),
        ),
        pairs=None,
        enhance=(first, train[first]),
        notes=tuple(notes),
    )
