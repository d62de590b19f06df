import pytest
import torch

from tl_capability import CapabilityDataset, accuracy, attribute, empirical_neg
from tl_capability.data import batches, tokenize
from tl_capability.head import answer_logits, head_is_separable
from tl_capability.sites import neuron_hook_name

from .models import tiny_model

pytestmark = pytest.mark.core

DATA = CapabilityDataset.from_pairs(["ab", "hello", "1+2=", "q"], ["c", "zz", "3", "rst"])


def _batch(model):
    return next(iter(batches(model, tokenize(model, DATA), 8)))


def _full(model, batch, hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        return model(batch.tokens)[batch.target_row, batch.target_pos]


def _zero(act, hook):
    return act * 0


def test_answer_logits_equal_the_full_pass(model):
    batch = _batch(model)
    hooks = [(neuron_hook_name(0), _zero)]
    for fwd in ([], hooks):
        with torch.no_grad():
            got = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos, fwd)
        torch.testing.assert_close(got, _full(model, batch, fwd), rtol=1e-5, atol=1e-5)
    assert head_is_separable(model)
    # The hooks were removed: the model's logits are its own again.
    torch.testing.assert_close(_full(model, batch), _full(model, batch), rtol=0, atol=0)


def test_answer_logits_carry_gradients(model):
    batch = _batch(model)
    gate = torch.ones(model.cfg.d_mlp, requires_grad=True)
    fwd = [(neuron_hook_name(1), lambda act, hook: act * gate)]
    # autograd.grad, not backward: the shared model's parameters must not collect gradients.
    logits = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos, fwd)
    (mine,) = torch.autograd.grad(logits.sum(), gate)
    with model.hooks(fwd_hooks=fwd):
        full = model(batch.tokens)[batch.target_row, batch.target_pos]
    (theirs,) = torch.autograd.grad(full.sum(), gate)
    assert float(mine.abs().max()) > 0
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_soft_capped_model_takes_the_full_pass_and_attribution_refuses_it():
    capped = tiny_model(soft_cap=2.0)
    assert not head_is_separable(capped)
    batch = _batch(capped)
    full = _full(capped, batch)
    assert float(full.abs().max()) <= 2.0  # the cap is really applied
    with torch.no_grad():
        got = answer_logits(capped, batch.tokens, batch.target_row, batch.target_pos)
    torch.testing.assert_close(got, full, rtol=0, atol=0)
    assert 0 <= accuracy(capped, DATA) <= 1
    with pytest.raises(ValueError, match="soft-cap"):
        attribute(capped, DATA, steps=2, progress=False)
    with pytest.raises(ValueError, match="soft-cap"):
        empirical_neg(capped, DATA, [(0, 0)], progress=False)
    # Activations read no logits: still allowed.
    attribute(capped, DATA, method="activation", progress=False)


def test_a_hook_on_the_head_is_seen_and_forgotten(model):
    batch = _batch(model)
    assert head_is_separable(model)

    def last_only(x, hook):  # depends on the sequence: the rows-only head cannot reproduce it
        x = x.clone()
        x[:, -1] = 0
        return x

    name = "ln_final.hook_normalized"
    handle_model = model.hooks(fwd_hooks=[(name, last_only)])
    with handle_model:
        assert not head_is_separable(model)
        with torch.no_grad():
            got = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos)
        torch.testing.assert_close(got, _full(model, batch), rtol=0, atol=0)
        with pytest.raises(ValueError, match="ln_final"):
            attribute(model, DATA, steps=2, progress=False)
    assert head_is_separable(model)


def test_probe_keeps_the_training_flag():
    fresh = tiny_model(seed=3)
    fresh.train()
    assert head_is_separable(fresh)
    assert fresh.training
