"""Which hooks a model carries: the signature probes key on, position-free marks, the head's
hooks and the hook points in use."""

from weakref import WeakKeyDictionary

import pytest
import torch

from tl_capability.sites import (
    head_has_hooks,
    hook_points_in_use,
    hook_signature,
    hooks_are_position_free,
    kept_until_hooks_change,
    known_until_hooks_change,
    neuron_hook_name,
    position_free,
    record_until_hooks_change,
)

pytestmark = pytest.mark.core


def _noop(activation, hook):
    return activation


def test_the_signature_changes_with_a_module_hook_and_comes_back_without_it(model):
    before = hook_signature(model)
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: None)
    try:
        assert hook_signature(model) != before
    finally:
        handle.remove()
    assert hook_signature(model) == before


def test_a_probe_is_kept_until_the_hooks_change(model):
    memo: WeakKeyDictionary = WeakKeyDictionary()
    calls = []

    def probe() -> bool:
        calls.append(1)
        return True

    assert kept_until_hooks_change(memo, model, "k", probe)
    assert kept_until_hooks_change(memo, model, "k", probe) and len(calls) == 1
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: None)
    try:
        assert kept_until_hooks_change(memo, model, "k", probe) and len(calls) == 2
    finally:
        handle.remove()


def test_an_answer_recorded_under_some_hooks_is_known_while_they_stay(model):
    """What a caller's own pass found is kept as a probe's answer is: known while the hooks it
    was found under stay, unknown once they change, and a recorded "no" is kept as a "no"."""
    memo: WeakKeyDictionary = WeakKeyDictionary()
    assert known_until_hooks_change(memo, model, "k") is None
    record_until_hooks_change(memo, model, "k", False, hook_signature(model))
    assert known_until_hooks_change(memo, model, "k") is False
    assert not kept_until_hooks_change(memo, model, "k", lambda: True)  # no probe: kept
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: None)
    try:
        assert known_until_hooks_change(memo, model, "k") is None
    finally:
        handle.remove()
    assert known_until_hooks_change(memo, model, "k") is False
    record_until_hooks_change(memo, model, "k", True, (-1,))  # found under other hooks
    assert known_until_hooks_change(memo, model, "k") is None


def test_only_marked_hooks_are_position_free(model):
    name = neuron_hook_name(0)
    assert hooks_are_position_free(model)
    with model.hooks(fwd_hooks=[(name, _noop)]):
        assert not hooks_are_position_free(model) and hook_points_in_use(model)
    with model.hooks(fwd_hooks=[(name, position_free(lambda a, hook: a))]):
        assert hooks_are_position_free(model)
    assert not hook_points_in_use(model)


def test_position_free_refuses_what_takes_no_attributes():
    with pytest.raises(TypeError, match="wrap it in a function"):
        position_free(torch.relu)  # a builtin: no attributes, not a bound method


def test_a_hook_on_the_unembedding_is_a_head_hook(model):
    assert not head_has_hooks(model)
    with model.hooks(fwd_hooks=[("unembed.hook_in", _noop)]):
        assert head_has_hooks(model)
    with model.hooks(fwd_hooks=[(neuron_hook_name(0), _noop)]):
        assert not head_has_hooks(model)
