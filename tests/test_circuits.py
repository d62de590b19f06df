"""Knowledge circuits: EAP scores against a per-edge reference, real edge patching, selection,
pruning, faithfulness and errors, on tiny Hugging Face bridges (GPT-2, grouped-query
Llama)."""

from dataclasses import replace

import pytest
import torch
from transformer_lens.utilities import get_act_name

from tests.helpers import CLEAN, CORRUPTED
from tests.models import HAS_BRIDGE, save_hf_model, tiny_model
from tl_capability import _circuit_graph as cg
from tl_capability.circuits import (
    faithfulness,
    knowledge_circuit,
)
from tl_capability.data import CapabilityDataset, tokenize

pytestmark = pytest.mark.skipif(not HAS_BRIDGE, reason="needs the TransformerLens bridge")


def _tokens(model, dataset):
    samples = tokenize(model, dataset)
    width = max(len(s.prompt) for s in samples)
    tokens = torch.zeros(len(samples), width, dtype=torch.long)
    for r, s in enumerate(samples):
        tokens[r, : len(s.prompt)] = torch.tensor(s.prompt)
    last = torch.tensor([len(s.prompt) - 1 for s in samples])
    return tokens, last, torch.tensor([s.answer[0] for s in samples])


def _reference(model, metric="logit_diff", first_input=None):
    """Per edge: the clean-run gradient of the metric w.r.t. the child's input (one backward
    pass per child input), dotted with the parent's output difference (from two cached runs)."""
    graph = cg.Graph.of(model)
    tokens, last, answer = _tokens(model, CLEAN)
    bad_tokens, _, other = _tokens(model, CORRUPTED)
    rows = torch.arange(len(last))

    def measure(logits):
        at = logits[rows, last]
        if metric == "logprob":
            return at.log_softmax(-1)[rows, answer].mean()
        return (at[rows, answer] - at[rows, other]).mean()

    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        outs = []
        for toks in (tokens, bad_tokens):
            _, cache = model.run_with_cache(toks)
            out = [cache[get_act_name("resid_pre", 0)]]
            for layer in range(graph.n_layers):
                w_o = model.blocks[layer].attn.W_O
                z = cache[get_act_name("z", layer)]
                out += [z[:, :, h] @ w_o[h] for h in range(graph.n_heads)]
                out.append(cache[get_act_name("mlp_out", layer)])
            outs.append(torch.stack(out, 2))
        diff = outs[1] - outs[0]
        input_hook = [(get_act_name("resid_pre", 0), lambda x, hook: first_input.detach())]
        scores = torch.zeros(graph.n_parents, graph.n_children)
        for name, first, k in cg.input_hook_points(model, graph):
            for j in range(k):
                delta = torch.zeros(*tokens.shape, model.cfg.d_model, requires_grad=True)

                def add(x, hook, j=j, delta=delta):
                    if x.dim() == 3:
                        return x + delta
                    return torch.cat(
                        [x[:, :, :j], (x[:, :, j] + delta)[:, :, None], x[:, :, j + 1 :]], 2
                    )

                hooks = [(name, add)] + (input_hook if first_input is not None else [])
                with model.hooks(fwd_hooks=hooks):
                    measure(model(tokens)).backward()
                n = int(graph.upstream[first + j])
                for u in range(n):
                    scores[u, first + j] = (diff[:, :, u] * delta.grad).sum()
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)
    return scores, outs


@pytest.mark.parametrize("metric", ["logit_diff", "logprob"])
def test_eap_scores_equal_a_per_edge_reference(bridge, metric):
    result = knowledge_circuit(bridge, CLEAN, CORRUPTED, metric=metric, batch_size=2)
    expected, _ = _reference(bridge, metric)
    torch.testing.assert_close(result.scores, expected, rtol=1e-4, atol=1e-6)
    assert result.scores.abs().max() > 1e-3  # not vacuous
    assert not bridge.cfg.use_split_qkv_input and not bridge.cfg.use_hook_mlp_in


def test_eap_ig_with_one_step_is_the_gradient_at_the_corrupted_input(bridge):
    result = knowledge_circuit(bridge, CLEAN, CORRUPTED, "eap-ig", steps=1)
    _, outs = _reference(bridge)
    expected, _ = _reference(bridge, first_input=outs[1][:, :, 0])
    torch.testing.assert_close(result.scores, expected, rtol=1e-4, atol=1e-6)


def test_eap_ig_averages_its_steps(bridge):
    two = knowledge_circuit(bridge, CLEAN, CORRUPTED, "eap-ig", steps=2)
    one = knowledge_circuit(bridge, CLEAN, CORRUPTED, "eap-ig", steps=1)
    assert two.steps == 2 and not torch.allclose(one.scores, two.scores)


def test_patching_one_edge_agrees_with_its_score_to_first_order(tmp_path):
    """Near-linear: each corrupted subject character's embedding is its clean one's plus 1 %
    noise, so patching an edge for real moves the metric by its EAP score to first order."""
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_transformers(str(save_hf_model("gpt2", tmp_path))).eval()
    bad = CapabilityDataset.from_pairs(["ubc is", "dvfg is", "hiw is"], ["p", "q", "r"])
    ids = model.tokenizer.convert_tokens_to_ids
    weight = next(model.embed.parameters())
    torch.manual_seed(0)
    with torch.no_grad():
        for new, old in zip("uvw", "aej", strict=True):
            weight[ids(new)] = weight[ids(old)] * (1 + 0.01 * torch.randn_like(weight[0]))
    result = knowledge_circuit(model, CLEAN, bad)
    everything = result.graph.valid
    for parent, child, score in result.edges(5):
        u, c = result.parent_names.index(parent), result.child_names.index(child)
        without = everything.clone()
        without[u, c] = False
        patched = faithfulness(model, CLEAN, bad, replace(result, chosen=without), 0)
        assert patched.circuit - patched.clean == pytest.approx(score, rel=0.01)


def test_the_full_circuit_is_the_model_and_the_empty_one_the_corrupted_run(bridge):
    result = knowledge_circuit(bridge, CLEAN, CORRUPTED, batch_size=2)
    full = faithfulness(bridge, CLEAN, CORRUPTED, result.select(threshold=0.0), n_random=0)
    empty = faithfulness(bridge, CLEAN, CORRUPTED, result.select(n=0), n_random=0)
    assert full.circuit == pytest.approx(full.clean, abs=1e-5)
    assert empty.circuit == pytest.approx(empty.corrupted, abs=1e-5)
    assert full.clean == pytest.approx(result.clean_metric, abs=1e-5)
    assert full.corrupted == pytest.approx(result.corrupted_metric, abs=1e-5)
    assert full.normalized == pytest.approx(1, abs=1e-3)


def test_random_circuits_are_seeded_and_of_the_circuits_size(bridge):
    circuit = knowledge_circuit(bridge, CLEAN, CORRUPTED, n=10)
    a = faithfulness(bridge, CLEAN, CORRUPTED, circuit, n_random=3, seed=1)
    b = faithfulness(bridge, CLEAN, CORRUPTED, circuit, n_random=3, seed=1)
    assert a == b and len(a.random) == 3 and a.n_edges == circuit.n_edges


def test_edges_are_the_largest_scores_and_named_as_eap_ig(bridge):
    result = knowledge_circuit(bridge, CLEAN, CORRUPTED)
    top = result.edges(6)
    assert len(top) == 6
    assert [abs(s) for *_, s in top] == sorted((abs(s) for *_, s in top), reverse=True)
    valid = result.scores[result.graph.valid].abs()
    assert abs(top[0][2]) == pytest.approx(float(valid.max()))
    assert result.score(*top[0][:2]) == top[0][2]
    assert isinstance(result.score("m0", "a1.h2<q>"), float)
    kv = "a1.h3<k>" if result.graph.n_kv_heads == result.graph.n_heads else "a1.g1<k>"
    assert kv in result.child_names
    with pytest.raises(KeyError, match="does not feed"):
        result.score("m1", "a0.h0<q>")
    with pytest.raises(KeyError, match="no node"):
        result.score("m9", "logits")


def test_pruning_keeps_only_edges_on_a_path_from_input_to_logits():
    graph = cg.Graph(n_layers=2, n_heads=2, n_kv_heads=2)
    chosen = torch.zeros(graph.n_parents, graph.n_children, dtype=torch.bool)
    kept = [(0, graph.q(0)), (graph.head(0, 0), graph.mlp_in(1)), (graph.mlp(1), graph.logits)]
    dangling = [(graph.head(0, 1), graph.mlp_in(1)), (0, graph.q(1) + 1)]
    for u, c in kept + dangling:
        chosen[u, c] = True
    pruned = graph.prune(chosen)
    assert sorted(map(tuple, pruned.nonzero().tolist())) == sorted(kept)


def test_grouped_key_value_inputs_feed_their_group():
    graph = cg.Graph(n_layers=1, n_heads=4, n_kv_heads=2)
    assert graph.feeds[graph.k(0) + 1] == [graph.head(0, 2), graph.head(0, 3)]
    assert graph.child_names[graph.v(0)] == "a0.g0<v>"
    chosen = torch.zeros(graph.n_parents, graph.n_children, dtype=torch.bool)
    chosen[0, graph.k(0) + 1] = chosen[graph.head(0, 3), graph.logits] = True
    assert graph.prune(chosen).sum() == 2


def test_corrupted_prompts_of_another_length_are_refused_by_pair(bridge):
    bad = CapabilityDataset.from_pairs(["abc is", "dxxfg is", "hiq is"], ["p", "q", "r"])
    with pytest.raises(ValueError, match=r"pair 1: .*'defg is' has \d+, 'dxxfg is' has"):
        knowledge_circuit(bridge, CLEAN, bad)


def test_unknown_method_and_bad_selection_are_refused(bridge):
    with pytest.raises(ValueError, match="method must be one of 'eap', 'eap-ig'"):
        knowledge_circuit(bridge, CLEAN, CORRUPTED, "acdc")
    result = knowledge_circuit(bridge, CLEAN, CORRUPTED)
    with pytest.raises(ValueError, match="not both"):
        result.select(n=3, threshold=0.1)
    with pytest.raises(ValueError, match="choose the circuit first"):
        result.mask  # noqa: B018


def test_a_model_without_split_head_inputs_is_refused_with_what_it_needs():
    model = tiny_model()  # boot_native: its attention has no hook before the q/k/v projections
    with pytest.raises(ValueError, match="split q/k/v inputs .*hook_q_input"):
        knowledge_circuit(model, CLEAN, CORRUPTED)
    assert not getattr(model.cfg, "use_split_qkv_input", False)


def test_hooks_and_settings_are_removed_after_an_exception(bridge, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(torch.autograd, "grad", fail)
    with pytest.raises(RuntimeError, match="boom"):
        knowledge_circuit(bridge, CLEAN, CORRUPTED)
    monkeypatch.undo()
    assert not any(hp._forward_hooks or hp._backward_hooks for hp in bridge.hook_dict.values())
    assert not bridge.cfg.use_split_qkv_input and not bridge.cfg.use_hook_mlp_in
