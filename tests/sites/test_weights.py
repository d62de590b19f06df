"""The head's and the MLPs' weights: W_U, b_U, W_out as live views."""

from types import SimpleNamespace

import pytest
import torch

from tests.sites.helpers import TOKENS, _capture
from tl_capability.sites import (
    final_norm,
    final_resid_hook_name,
    mlp_parameters,
    mlp_w_out,
    unembed,
    unembedding,
)

pytestmark = pytest.mark.core


def test_unembedding_is_the_heads_weights(model):
    w_u, b_u = unembedding(model)
    assert w_u.shape == (model.cfg.d_model, model.cfg.d_vocab)
    _, seen = _capture(model, [final_resid_hook_name(model)], TOKENS)
    x = final_norm(model, seen[final_resid_hook_name(model)].flatten(0, 1))
    with torch.no_grad():
        expected = unembed(model, x)
        torch.testing.assert_close(x @ w_u + (0 if b_u is None else b_u), expected)


def test_unembedding_without_model_level_weights_reads_the_unembed_module():
    """The fallback for models that expose W_U on their unembed module only, and no b_U."""
    w = torch.randn(4, 7)
    bare = SimpleNamespace(unembed=SimpleNamespace(W_U=w))
    w_u, b_u = unembedding(bare)
    assert w_u is w and b_u is None


def test_mlp_w_out_is_a_live_view_of_what_the_neurons_write(model):
    """Writing to it changes the MLP's output (so edits stick); its rows are the neurons."""
    w = mlp_w_out(model, 0)
    assert w.shape == (model.cfg.d_mlp, model.cfg.d_model)
    storages = {p.untyped_storage().data_ptr() for p in mlp_parameters(model, 0)}
    assert w.untyped_storage().data_ptr() in storages
    _, before = _capture(model, ["blocks.0.hook_mlp_out"], TOKENS)
    saved = w[3].clone()
    try:
        with torch.no_grad():
            w[3] += 1.0
        _, after = _capture(model, ["blocks.0.hook_mlp_out"], TOKENS)
    finally:
        with torch.no_grad():
            w[3] = saved
    assert not torch.equal(before["blocks.0.hook_mlp_out"], after["blocks.0.hook_mlp_out"])


def test_mlp_w_out_of_the_wrong_shape_is_refused(model):
    lying = SimpleNamespace(blocks=model.blocks, cfg=SimpleNamespace(d_mlp=64))
    with pytest.raises(ValueError, match=r"blocks.1.mlp.W_out has shape \(128, 64\)"):
        mlp_w_out(lying, 1)


def test_mlp_parameters_are_the_mlps_own(model):
    ours = {id(p) for p in mlp_parameters(model, 1)}
    assert ours == {id(p) for p in model.blocks[1].mlp.parameters()}
    assert ours.isdisjoint({id(p) for p in model.blocks[0].parameters()})
