"""Knowledge-neuron fidelity, for every localizer, against manual overlaps."""

from dataclasses import replace
from itertools import combinations

import pytest
import torch

from tests.experiments.helpers import TRACE, by_hand_overlap, needs_bridge
from tl_capability import (
    attribute,
    zoo,
)
from tl_capability.circuits import knowledge_circuit
from tl_capability.data import tokenize
from tl_capability.experiments import (
    fidelity,
    mean_ci,
)
from tl_capability.experiments.kn_locators import corrupt_subjects
from tl_capability.tracing import causal_trace


def test_fidelity_matches_manual_pairwise_overlap(zoo_model):
    from tl_capability import coarse_masks, refine
    from tl_capability.experiments import FidelityResult, fidelity

    facts = {entity: zoo.fact_dataset(entity) for entity, _ in zoo.ENTITIES[:3]}
    result = fidelity(zoo_model, facts, steps=4)
    assert isinstance(result, FidelityResult)
    rows = {row.fact: row for row in result.rows}
    assert set(rows) == {*facts, "mean", "different facts"}
    firsts = []
    for entity, data in facts.items():
        masks = coarse_masks(
            attribute(zoo_model, data, steps=4, per_sample=True, progress=False), 0.2
        )
        firsts.append(masks[0])
        pairs = [by_hand_overlap(a, b) for a, b in combinations(masks, 2)]
        row = rows[entity]
        assert row.paraphrases == len(data)
        assert row.coarse_per_prompt == pytest.approx(sum(len(m) for m in masks) / len(masks))
        assert row.overlap == pytest.approx(sum(o for o, _ in pairs) / len(pairs))
        assert row.iou == pytest.approx(sum(i for _, i in pairs) / len(pairs))
        assert result.masks[entity] == refine(masks, 0.7)
        assert row.refined == len(result.masks[entity])
    overlaps = [rows[e].overlap for e in facts]
    assert (rows["mean"].overlap, rows["mean"].ci95) == pytest.approx(mean_ci(overlaps))
    assert result.mean_overlap == rows["mean"].overlap
    different = [by_hand_overlap(a, b)[0] for a, b in combinations(firsts, 2)]
    assert (rows["different facts"].overlap, rows["different facts"].ci95) == pytest.approx(
        mean_ci(different)
    )
    assert [r.fact for r in result.summary] == ["mean", "different facts"]
    with pytest.raises(ValueError, match="two paraphrases"):
        fidelity(zoo_model, {"x": facts[entity].select([0])})


def test_fidelity_masks_are_the_knowledge_neurons(zoo_model):
    from tl_capability.experiments import fidelity, knowledge_neurons

    facts = {entity: zoo.fact_dataset(entity) for entity, _ in zoo.ENTITIES[:2]}
    assert fidelity(zoo_model, facts, steps=2).masks == knowledge_neurons(zoo_model, facts, steps=2)


def test_rome_fidelity_compares_the_located_layers(zoo_model, facts):
    result = fidelity(zoo_model, facts, method="rome", **TRACE)
    assert result.method == "rome"
    rows = {r.fact: r for r in result.rows}
    for name, data in facts.items():
        trace = causal_trace(zoo_model, data, "mlp", **TRACE)
        same = [float(a == b) for a, b in combinations(trace.located, 2)]
        assert rows[name].overlap == pytest.approx(sum(same) / len(same))
        assert rows[name].iou == rows[name].overlap  # whole layers: IoU is overlap
        assert result.located[name] == trace.masks
        assert rows[name].coarse_per_prompt == zoo_model.cfg.d_mlp
        peak = result.masks[name].tensor.any(1).nonzero().flatten().tolist()
        assert peak == [trace.aie_peak]
        if len(set(trace.located)) == 1:  # every paraphrase locates the same layer
            assert rows[name].overlap == 1


def test_rome_fidelity_is_one_for_one_layer_and_zero_across(zoo_model, facts):
    name = next(iter(facts))
    trace = causal_trace(zoo_model, facts[name], "mlp", **TRACE)
    a = trace.mask(0)
    other = trace.mask(0).tensor.roll(1, 0)
    assert a.overlap(trace.mask(0)) == a.iou(trace.mask(0)) == 1
    assert a.overlap(replace(a, tensor=other)) == 0


@needs_bridge
def test_kc_fidelity_compares_circuit_masks(zoo_model, facts):
    bad = corrupt_subjects(zoo_model, facts)
    for name, data in facts.items():
        assert [len(s.prompt) for s in tokenize(zoo_model, bad[name])] == [
            len(s.prompt) for s in tokenize(zoo_model, data)
        ]
        assert name not in bad[name].prompts[0] and bad[name].answers[0] != data.answers[0]
    result = fidelity(zoo_model, facts, method="kc", n_edges=20)
    rows = {r.fact: r for r in result.rows}
    for name, data in facts.items():
        masks = result.located[name]
        first = knowledge_circuit(zoo_model, data.select([0]), bad[name].select([0]), n=20).mask
        assert torch.equal(masks[0].heads, first.heads) and torch.equal(masks[0].mlps, first.mlps)
        pairs = list(combinations(masks, 2))
        assert rows[name].overlap == pytest.approx(sum(a.overlap(b) for a, b in pairs) / 6)
        assert rows[name].iou == pytest.approx(sum(a.iou(b) for a, b in pairs) / 6)
    firsts = [result.located[n][0] for n in facts]
    assert rows["different facts"].overlap == pytest.approx(firsts[0].overlap(firsts[1]))
