"""The rank-one edit at the located layer, and its bit-exact undo."""

import torch
from transformer_lens.utilities import get_act_name

from tests.experiments.helpers import _same, _state
from tl_capability.data import CapabilityDataset, tokenize
from tl_capability.evaluate import answer_probability
from tl_capability.experiments.rome_edit import rome_edit
from tl_capability.sites import run_until


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
