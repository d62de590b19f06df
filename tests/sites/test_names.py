"""Hook names, eval-mode checks, the device, and passes that stop at a hook point."""

from types import SimpleNamespace

import pytest
import torch

from tests.sites.helpers import TOKENS, _capture
from tl_capability import neuron_site, require_eval
from tl_capability.sites import (
    HookNotReached,
    StopForward,
    final_norm,
    final_resid_hook_name,
    model_device,
    neuron_hook_name,
    resid_pre_hook_name,
    run_until,
    unembed,
    unembed_input_hook,
)

pytestmark = pytest.mark.core


def test_training_mode_is_refused(model):
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            require_eval(model)
    finally:
        model.eval()
    require_eval(model)


def test_a_submodule_in_training_mode_is_refused(model):
    """Only the top-level flag used to be read: a block left in training mode (dropout on)
    passed."""
    model.blocks[1].mlp.train()
    try:
        with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
            require_eval(model)
    finally:
        model.eval()
    require_eval(model)


def test_model_device_is_the_first_parameters_device(model):
    assert model_device(model) == torch.device("cpu")
    # A CPU fixture alone cannot tell this from "always CPU": meta parameters can.
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


def test_fixture_model_matches_the_installed_transformer_lens(model):
    """CI runs the core tests a second time under TL 3.x; make sure that run really does.

    The model's class must be the one of the TransformerLens that is imported (its
    distribution's major version), and that version the one CI asked for, when it asks.
    """
    import importlib.metadata
    import os

    major = importlib.metadata.version("transformer_lens").split(".")[0]
    assert type(model).__name__ == {"3": "HookedTransformer", "4": "TransformerBridge"}[major]
    asked = os.environ.get("TLC_EXPECT_TL")
    if asked:
        assert major == asked


def test_neuron_hook_name_is_the_sites_hook(model):
    for site in ("post", "pre"):
        names = neuron_site(model, site).hook_names
        assert names == tuple(neuron_hook_name(layer, site) for layer in range(len(names)))
    assert neuron_hook_name(1) == "blocks.1.mlp.hook_post"
    with pytest.raises(ValueError, match="site must be one of 'post', 'pre', got 'gate'"):
        neuron_hook_name(0, "gate")


def test_residual_hooks_are_the_stream_between_blocks_and_before_the_head(model):
    """resid_pre of block 1 is what block 0 wrote; final_norm, unembed of the last block's
    output are the model's logits."""
    last = final_resid_hook_name(model)
    assert last == f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    names = [resid_pre_hook_name(1), "blocks.0.hook_resid_post", last]
    logits, seen = _capture(model, names, TOKENS)
    torch.testing.assert_close(seen[resid_pre_hook_name(1)], seen["blocks.0.hook_resid_post"])
    resid = seen[last].flatten(0, 1)
    with torch.no_grad():
        ours = unembed(model, final_norm(model, resid))
    torch.testing.assert_close(ours, logits.flatten(0, 1), rtol=1e-5, atol=1e-5)
    assert unembed_input_hook(model) is None  # a causal LM: ln_final of the final residual


def test_unembed_input_hook_of_a_masked_lm_is_the_unembeddings_input():
    """BERT-style bridges are read at unembed.hook_in, when they have it."""
    cfg = SimpleNamespace(architecture="BertForMaskedLM")
    assert unembed_input_hook(SimpleNamespace(cfg=cfg, hook_dict={"unembed.hook_in": 0})) == (
        "unembed.hook_in"
    )
    assert unembed_input_hook(SimpleNamespace(cfg=cfg, hook_dict={})) is None


def test_run_until_names_a_hook_point_the_pass_never_reached(model):
    def stop(act, hook):
        raise StopForward

    tokens = torch.tensor([[0, 1, 2]])
    last = final_resid_hook_name(model)
    early = [(resid_pre_hook_name(0), stop)]
    with pytest.raises(HookNotReached, match=last):
        run_until(model, last, tokens, early)
    assert run_until(model, last, tokens, []).shape[:2] == (1, 3)
