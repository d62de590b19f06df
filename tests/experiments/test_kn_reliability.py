"""Reliability (IPP) for every localizer, against manual interventions."""

from dataclasses import replace

import pytest
import torch

from tests.experiments.helpers import TRACE, _same, _state, needs_bridge
from tl_capability import (
    ablate,
    answer_probability,
    attribute,
    select,
    zoo,
)
from tl_capability.circuits import faithfulness
from tl_capability.experiments import fidelity, reliability
from tl_capability.experiments.kn_locators import corrupt_subjects
from tl_capability.masks import random_controls
from tl_capability.tracing import causal_trace


def test_reliability_matches_manual_suppression(zoo_model):
    from tl_capability.experiments import ReliabilityResult, reliability

    data = {"sentiment": zoo.dataset("sentiment", n=16, seed=5)}
    mask = select(attribute(zoo_model, data["sentiment"], "grad_x_act", progress=False), top_k=8)
    empty = select(torch.zeros(4, 512), top_k=0)
    result = reliability(
        zoo_model, {"sentiment": mask, "none": empty}, data | {"none": data["sentiment"]},
        n_random=3, seed=5,
    )  # fmt: skip
    assert isinstance(result, ReliabilityResult) and (result.n_random, result.seed) == (3, 5)
    row = result.rows[0]

    def probability() -> float:
        return answer_probability(zoo_model, data["sentiment"]).mean().item()

    base = probability()
    with ablate(zoo_model, mask):
        located = base - probability()
    randoms = []
    for control in random_controls(mask, 3, seed=5):
        with ablate(zoo_model, control):
            randoms.append(base - probability())
    assert row.base_prob == pytest.approx(base)
    assert row.located_effect == pytest.approx(located, abs=1e-6)
    assert row.best_random_effect == pytest.approx(max(randoms), abs=1e-6)
    assert row.mean_random_effect == pytest.approx(sum(randoms) / 3, abs=1e-6)
    assert row.beats_best_random == (located > max(randoms))
    assert result.rows[1].beats_best_random is False  # an empty set never wins
    assert result.ipp == result.rows[-1]["beats_best_random"] == row.beats_best_random / 2
    with pytest.raises(ValueError, match="no dataset"):
        reliability(zoo_model, {"other": mask}, data)


def test_rome_reliability_edits_the_located_layer_against_random_layers(zoo_model, facts):
    state = _state(zoo_model)
    result = reliability(
        zoo_model, datasets=facts, method="rome", n_random=2, seed=3, edit_steps=5, **TRACE
    )
    assert _same(zoo_model, state)
    assert result.method == "rome" and [r.item for r in result.rows] == [*facts, "IPP"]
    for name, data in facts.items():
        assert result.located[name] == causal_trace(zoo_model, data, "mlp", **TRACE).aie_peak
        assert result.new_answers[name] != data.answers[0]
    for row in result.rows[:-1]:
        assert row.best_random_effect >= row.mean_random_effect
        assert row.beats_best_random == (row.located_effect > row.best_random_effect)
    wins = [r.beats_best_random for r in result.rows[:-1]]
    assert result.ipp == sum(wins) / len(wins)
    layers = fidelity(zoo_model, facts, method="rome", **TRACE).masks
    again = reliability(zoo_model, layers, facts, method="rome", n_random=2, seed=3, edit_steps=5)
    assert again.rows == result.rows  # the located layers given as masks: the same edits


@needs_bridge
def test_kc_reliability_ablates_the_circuit_against_random_edge_sets(zoo_model, facts):
    result = reliability(zoo_model, datasets=facts, method="kc", n_random=3, n_edges=20)
    bad = corrupt_subjects(zoo_model, facts)
    for row in result.rows[:-1]:
        circuit = result.located[row.item]
        data = facts[row.item]
        assert row.neurons == circuit.n_edges
        removed = replace(circuit, chosen=circuit.graph.valid & ~circuit.chosen)
        patched = faithfulness(zoo_model, data, bad[row.item], removed, n_random=0)
        assert row.base_prob == pytest.approx(patched.clean, abs=1e-4)
        assert row.located_effect == pytest.approx(patched.clean - patched.circuit, abs=1e-4)
        assert row.beats_best_random == (row.located_effect > row.best_random_effect)
    assert 0 <= result.ipp <= 1
