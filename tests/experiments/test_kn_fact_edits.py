"""Fact edits: suppress, amplify and edit against manual interventions and undo."""

import math

import pytest
import torch

from tl_capability import (
    CapabilityDataset,
    ablate,
    answer_probability,
    attribute,
    select,
    zoo,
)
from tl_capability.masks import random_controls


def test_fact_edits_match_manual_interventions_and_undo(zoo_model):
    from tl_capability.edits import edit_knowledge
    from tl_capability.experiments import FactEditResult, fact_edits

    facts = {e: zoo.fact_dataset(e) for e, _ in zoo.ENTITIES[:2]}
    first, second = facts
    masks = {
        n: select(attribute(zoo_model, d, "grad_x_act", progress=False), top_k=6)
        for n, d in facts.items()
    }
    masks[second] = select(torch.zeros(4, 512), top_k=0)  # an empty set: a row of NaNs
    result = fact_edits(zoo_model, masks, facts, n_random=2, seed=3)
    assert isinstance(result, FactEditResult) and len(result.rows) == 2
    row, empty = result.rows
    data = facts[first]

    def probability(d=data) -> float:
        return 100 * answer_probability(zoo_model, d).mean().item()

    with ablate(zoo_model, masks[first]):
        suppressed = probability()
    with ablate(zoo_model, masks[first], "scale", factor=2.0):
        amplified = probability()
    randoms = []
    for control in random_controls(masks[first], 2, seed=3):
        with ablate(zoo_model, control):
            randoms.append(probability())
    new = facts[second].answers[0]
    renamed = CapabilityDataset.from_pairs(data.prompts, [new] * len(data))
    before = {k: v.clone() for k, v in zoo_model.state_dict().items()}
    handle = edit_knowledge(zoo_model, masks[first], data.answers[0], new)
    edited = probability(renamed)
    handle.undo()
    assert (row.neurons, row.new_answer, row.undone) == (6, new, True)
    assert row.p_clean == pytest.approx(probability(), abs=1e-4)
    assert row.p_suppressed == pytest.approx(suppressed, abs=1e-4)
    assert row.p_amplified == pytest.approx(amplified, abs=1e-4)
    assert row.p_suppressed_random == pytest.approx(sum(randoms) / 2, abs=1e-4)
    assert row.p_new_before == pytest.approx(probability(renamed), abs=1e-4)
    assert row.p_new_after == pytest.approx(edited, abs=1e-4)
    assert all(torch.equal(v, zoo_model.state_dict()[k]) for k, v in before.items())
    assert empty.neurons == 0 and math.isnan(empty.p_suppressed)
    with pytest.raises(ValueError, match="at least two facts"):
        fact_edits(zoo_model, masks, {first: data})
    with pytest.raises(ValueError, match="no knowledge neurons"):
        fact_edits(zoo_model, {first: masks[first]}, facts)
