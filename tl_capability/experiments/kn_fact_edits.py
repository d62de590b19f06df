"""Single facts' knowledge neurons suppressed, amplified and edited (with undo).

[`fact_edits`][tl_capability.experiments.kn_fact_edits.fact_edits]: each intervention beside
random sets of the same shape (from [`random_controls`][tl_capability.masks.random_controls],
set ``i`` seeded ``seed + i``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tl_capability.data import CapabilityDataset
from tl_capability.edits import edit_knowledge
from tl_capability.evaluate import answer_probability
from tl_capability.masks import NeuronMask, random_controls
from tl_capability.tables import Row, Table, mean_ci


@dataclass(frozen=True)
class FactEditRow(Row):
    """One fact's knowledge neurons intervened on, against random sets of the same shape.

    Attributes:
        fact: The fact's name.
        neurons: Size of its refined set.
        p_clean: Mean P(answer) over its paraphrases, in percent.
        p_suppressed: The same with the set zeroed.
        p_suppressed_random: Mean over the random sets zeroed.
        p_amplified: The same with the set doubled.
        p_amplified_random: Mean over the random sets doubled.
        new_answer: The object the edit writes in (another fact's answer).
        p_new_before: Mean P(new answer) before the edit, in percent.
        p_new_after: Mean P(new answer) after it.
        p_new_after_random: Mean over the same edit in the random sets.
        undone: Whether undoing the edit restored every weight bit for bit.
    """

    fact: str
    neurons: int
    p_clean: float
    p_suppressed: float
    p_suppressed_random: float
    p_amplified: float
    p_amplified_random: float
    new_answer: str
    p_new_before: float
    p_new_after: float
    p_new_after_random: float
    undone: bool


@dataclass(frozen=True)
class FactEditResult(Table):
    """Suppress, amplify and edit of single facts (see
    [`fact_edits`][tl_capability.experiments.kn_fact_edits.fact_edits])."""

    rows: tuple[FactEditRow, ...]


def _mean_probability(model: Any, data: CapabilityDataset, hooks: list | None = None) -> float:
    chosen = (lambda b: hooks) if hooks else None
    return 100 * answer_probability(model, data, hooks=chosen).mean().item()


def _edited(
    model: Any, mask: NeuronMask, old: str, renamed: CapabilityDataset
) -> tuple[float, bool]:
    """Mean P(new answer) with the fact edited in ``mask``'s value slots, and whether undoing
    the edit restored every weight bit for bit."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    handle = edit_knowledge(model, mask, old, renamed.answers[0])
    try:
        p = _mean_probability(model, renamed)
    finally:
        handle.undo()
    after = model.state_dict()
    return p, all(torch.equal(v, after[k]) for k, v in before.items())


def fact_edits(
    model: Any,
    masks: Mapping[str, NeuronMask],
    facts: Mapping[str, CapabilityDataset],
    *,
    n_random: int = 3,
    seed: int = 0,
    factor: float = 2.0,
) -> FactEditResult:
    """Dai et al.'s interventions on single facts, each beside random sets of the same shape.

    Each fact's set is zeroed (suppress) and scaled by ``factor`` (amplify) while P(answer) is
    read on its paraphrases; then
    [`edit_knowledge`][tl_capability.edits.edit_knowledge] rewrites the answer to the next fact's
    answer (facts in a ring) and P(new answer) is read, then the edit is undone. Random sets are
    [`random_controls`][tl_capability.masks.random_controls] of each located set.

    Args:
        model: The model (restored after every measurement).
        masks: Each fact's knowledge neurons (e.g. ``fidelity(...).masks``).
        facts: Each fact's paraphrases (one answer per fact), the keys of ``masks``.
        n_random: Random sets per fact.
        seed: Seed of the random sets.
        factor: The amplify factor.

    Raises:
        ValueError: For fewer than two facts, or a fact without a set.
    """
    names = list(facts)
    if len(names) < 2:
        raise ValueError("fact_edits needs at least two facts (an edit writes another's answer)")
    missing = [n for n in names if n not in masks]
    if missing:
        raise ValueError(f"no knowledge neurons given for {missing}")
    rows = []
    for i, name in enumerate(names):
        data, mask = facts[name], masks[name]
        new = facts[names[(i + 1) % len(names)]].answers[0]
        renamed = CapabilityDataset.from_pairs(data.prompts, [new] * len(data), name)
        if not len(mask):  # refine kept no neuron: nothing to intervene on
            nan = float("nan")
            p = _mean_probability(model, data)
            rows.append(FactEditRow(name, 0, p, nan, nan, nan, nan, new, nan, nan, nan, True))
            continue
        controls = random_controls(mask, n_random, seed=seed)
        p_new, undone = _edited(model, mask, data.answers[0], renamed)
        random_new = mean_ci([_edited(model, c, data.answers[0], renamed)[0] for c in controls])

        def intervene(m: NeuronMask, mode: str, d: CapabilityDataset = data) -> float:
            kwargs = {"factor": factor} if mode == "scale" else {}
            return _mean_probability(model, d, m.hooks(mode, **kwargs))

        rows.append(
            FactEditRow(
                fact=name,
                neurons=len(mask),
                p_clean=_mean_probability(model, data),
                p_suppressed=intervene(mask, "zero"),
                p_suppressed_random=mean_ci([intervene(c, "zero") for c in controls])[0],
                p_amplified=intervene(mask, "scale"),
                p_amplified_random=mean_ci([intervene(c, "scale") for c in controls])[0],
                new_answer=new,
                p_new_before=_mean_probability(model, renamed),
                p_new_after=p_new,
                p_new_after_random=random_new[0],
                undone=undone,
            )
        )
    return FactEditResult(
        f"Suppress (zero), amplify (×{factor:g}) and edit of single facts' knowledge neurons, "
        f"against {n_random} random sets of the same shape (P in percent, over paraphrases)",
        tuple(rows),
    )
