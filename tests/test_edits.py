"""Weight edits with exact undo, and masked fine-tuning."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_capability import CapabilityDataset
from tl_capability.edits import edit_knowledge, erase_weights, finetune_neurons
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask

pytestmark = pytest.mark.core

TOKENS = torch.tensor([[0, 5, 6, 7, 8], [0, 9, 10, 11, 12]])


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _mask(model):
    return NeuronMask.from_indices([(0, 3), (0, 7), (1, 11)], model.cfg.n_layers, model.cfg.d_mlp)


def test_erase_equals_zero_ablation_and_undoes_bit_exactly(model):
    before = _state(model)
    mask = _mask(model)
    with torch.no_grad():
        clean = model(TOKENS)
        with ablate(model, mask):
            ablated = model(TOKENS)
        handle = erase_weights(model, mask)
        erased = model(TOKENS)
    assert (model.blocks[0].mlp.W_out[[3, 7]] == 0).all()
    torch.testing.assert_close(erased, ablated, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(erased, clean)
    handle.undo()
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(RuntimeError, match="already undone"):
        handle.undo()


def test_edit_is_a_context_manager_and_moves_the_answer(model):
    before = _state(model)
    everything = NeuronMask(torch.ones(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool))
    tok = model.tokenizer
    old, new = (
        tok("a", add_special_tokens=False)["input_ids"][0],
        tok("z", add_special_tokens=False)["input_ids"][0],
    )
    with torch.no_grad():
        clean = model(TOKENS)[:, -1].log_softmax(-1)
        with edit_knowledge(model, everything, "a", "z") as handle:
            edited = model(TOKENS)[:, -1].log_softmax(-1)
            assert handle.active
    gain_new = (edited[:, new] - clean[:, new]).mean()
    gain_old = (edited[:, old] - clean[:, old]).mean()
    assert gain_new > gain_old
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_edits_refuse_foreign_and_pre_site_masks(model):
    with pytest.raises(ValueError, match="layers"):
        erase_weights(model, NeuronMask.empty(5, model.cfg.d_mlp))
    with pytest.raises(ValueError, match="site 'post'"):
        erase_weights(model, NeuronMask.empty(model.cfg.n_layers, model.cfg.d_mlp, site="pre"))


def test_finetune_changes_only_the_masked_neurons(model):
    before = _state(model)
    mask = _mask(model)
    ds = CapabilityDataset.from_pairs(["ab", "cd", "ef", "gh"], ["x", "y", "x", "y"])
    try:
        losses = finetune_neurons(model, mask, ds, epochs=3, lr=1e-2, batch_size=2, progress=False)
        assert len(losses) == 6 and losses[-1] < losses[0]
        after = _state(model)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed, "nothing was trained"
        for layer in range(model.cfg.n_layers):
            mlp = model.blocks[layer].mlp
            others = ~mask.tensor[layer]
            for name in ("W_in", "W_out", "b_in"):
                w = getattr(mlp, name)
                axis = 0 if name == "W_out" else -1
                ref = _view(before, model, layer, name)
                if axis == 0:
                    assert torch.equal(w[others], ref[others])
                else:
                    assert torch.equal(w[..., others], ref[..., others])
            if mask.tensor[layer].any():
                assert not torch.equal(
                    mlp.W_out[mask.tensor[layer]],
                    _view(before, model, layer, "W_out")[mask.tensor[layer]],
                )
        assert not model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.load_state_dict(before)


def _view(state, model, layer, name):
    """The pre-training value of blocks[layer].mlp.<name>, read through a scratch copy."""
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    value = getattr(model.blocks[layer].mlp, name).detach().clone()
    model.load_state_dict(current)
    return value


def test_out_of_order_undo_is_refused_and_changes_nothing(model):
    """Undoing the first of two overlapping erasures used to leave the shared rows zeroed."""
    before = _state(model)
    try:
        first = erase_weights(model, _mask(model))
        second = erase_weights(
            model, NeuronMask.from_indices([(0, 3), (1, 2)], model.cfg.n_layers, model.cfg.d_mlp)
        )
        edited = _state(model)
        with pytest.raises(ValueError, match="undo 'erase 2 neurons' first"):
            first.undo()
        assert first.active and all(torch.equal(edited[k], v) for k, v in _state(model).items())
        second.undo()
        first.undo()
        assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    finally:
        model.load_state_dict(before)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 7)), max_size=4), max_size=4),
    st.data(),
)
def test_random_edit_and_undo_orders_end_at_the_original_weights(model, neuron_sets, data):
    """Every allowed undo order restores the weights bit-exactly; a refused one changes
    nothing."""
    before = _state(model)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    live = []
    try:
        for i, pairs in enumerate(neuron_sets):
            mask = NeuronMask.from_indices(pairs, n_layers, d_mlp)
            if data.draw(st.booleans(), label=f"knowledge edit {i}"):
                live.append(edit_knowledge(model, mask, "a", "z"))
            else:
                live.append(erase_weights(model, mask))
        # Try the live edits in a random order, pass after pass: only the latest may go.
        order = data.draw(st.permutations(range(len(live))), label="undo order")
        while live:
            for handle in [live[i] for i in order if i < len(live)]:
                state = _state(model)
                if handle is not live[-1]:
                    with pytest.raises(ValueError, match="first"):
                        handle.undo()
                    assert handle.active
                    assert all(torch.equal(state[k], v) for k, v in _state(model).items())
                else:
                    live.pop().undo()
        assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    finally:
        for handle in reversed(live):
            handle.undo()
        model.load_state_dict(before)


@pytest.mark.parametrize("top_level", [True, False])
def test_weight_edits_refuse_training_mode(model, top_level):
    before = _state(model)
    (model if top_level else model.blocks[1].mlp).train()
    try:
        with pytest.raises(ValueError, match="model.eval()"):
            erase_weights(model, _mask(model))
        with pytest.raises(ValueError, match="model.eval()"):
            edit_knowledge(model, _mask(model), "a", "z")
    finally:
        model.eval()
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
