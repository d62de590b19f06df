"""Fidelity and reliability over the three localization methods (KN, ROME, KC) on the zoo's
GPT-2, with its facts given subjects; the ROME rank-one edit and its exact undo."""

from dataclasses import replace
from itertools import combinations

import pytest
import torch
from transformer_lens.utilities import get_act_name

from tests.models import HAS_BRIDGE
from tl_capability import zoo
from tl_capability.circuits import faithfulness, knowledge_circuit
from tl_capability.data import CapabilityDataset, tokenize
from tl_capability.evaluate import answer_probability
from tl_capability.experiments import fidelity, reliability
from tl_capability.experiments.kn_locators import corrupt_subjects
from tl_capability.experiments.rome_edit import rome_edit
from tl_capability.sites import run_until
from tl_capability.tracing import causal_trace

needs_bridge = pytest.mark.skipif(not HAS_BRIDGE, reason="circuits run on the bridge")
TRACE = {"samples": 3, "window": 1}  # window 1: the default for 4 layers


def _facts(n=2, start=0):
    out = {}
    for entity, _ in zoo.ENTITIES[start : start + n]:
        data = zoo.fact_dataset(entity)
        out[entity] = CapabilityDataset.from_pairs(
            data.prompts, data.answers, entity, subjects=[entity] * len(data)
        )
    return out


@pytest.fixture(scope="module")
def facts():
    return _facts()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


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


def test_the_default_window_is_a_quarter_of_the_layers(zoo_model, facts):
    from tl_capability.experiments.kn_locators import trace_window

    assert trace_window(zoo_model) == 1
    data = {name: facts[name] for name in list(facts)[:1]}
    assert fidelity(zoo_model, data, method="rome", samples=3).rows == (
        fidelity(zoo_model, data, method="rome", **TRACE).rows
    )


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


def test_rome_edit_writes_the_value_and_is_undone_bit_exactly(zoo_model, facts):
    name, other = list(facts)
    data = facts[name]
    new = facts[other].answers[0]
    request = CapabilityDataset.from_pairs(data.prompts[:1], [new], subjects=[name])
    before, state = answer_probability(zoo_model, request).item(), _state(zoo_model)
    tokens = torch.tensor([tokenize(zoo_model, request)[0].prompt])
    hook = get_act_name("mlp_out", 0)
    old = run_until(zoo_model, hook, tokens, [])[0]
    keys = run_until(zoo_model, "blocks.0.mlp.hook_post", tokens, [])[0]
    handle, edit = rome_edit(zoo_model, request, 0, steps=10)
    try:
        assert edit.position == len(name)  # BOS, then one token per character: its last
        assert edit.loss[1] < edit.loss[0]
        out = run_until(zoo_model, hook, tokens, [])[0]
        torch.testing.assert_close(out[edit.position], old[edit.position] + edit.delta)
        # k δᵀ / kᵀk: every position moves along δ by its key's projection on k
        share = keys @ edit.key / (edit.key @ edit.key)
        torch.testing.assert_close(out - old, share[:, None] * edit.delta, atol=1e-4, rtol=1e-4)
        assert answer_probability(zoo_model, request).item() > before
        assert not _same(zoo_model, state)
    finally:
        handle.undo()
    assert _same(zoo_model, state)


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


def test_unknown_methods_and_missing_subjects_are_refused(zoo_model, facts):
    with pytest.raises(ValueError, match="method must be one of 'kn', 'rome', 'kc', got 'acdc'"):
        fidelity(zoo_model, facts, method="acdc")
    with pytest.raises(ValueError, match="method must be one of 'kn', 'rome', 'kc'"):
        reliability(zoo_model, None, facts, method="acdc")
    plain = {e: zoo.fact_dataset(e) for e in facts}
    for method in ("rome", "kc"):
        with pytest.raises(ValueError, match=r"fact 'kofet' has no subjects: method"):
            fidelity(zoo_model, plain, method=method)
        with pytest.raises(ValueError, match=r"fact 'kofet' has no subjects"):
            reliability(zoo_model, datasets=plain, method=method)


def test_a_fact_no_subject_can_corrupt_is_named(zoo_model, facts):
    name = next(iter(facts))
    data = facts[name]
    short = CapabilityDataset.from_pairs(
        [p.replace(name, "xy") for p in data.prompts], ["cairo"] * len(data), subjects=["xy"] * 4
    )
    with pytest.raises(ValueError, match=f"fact '{name}': no other fact's subject"):
        corrupt_subjects(zoo_model, {name: data, "short": short})
