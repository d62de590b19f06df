"""What a model supports: the generation, the key/value cache path and its probe."""

import pytest
import torch

from tests.sites.helpers import TOKENS, _filled_cache, _Probed
from tl_capability.sites import (
    is_bridge,
    kv_cache_forward,
    supports_kv_cache,
)

pytestmark = pytest.mark.core


def test_is_bridge_tells_the_generations_apart(model):
    assert is_bridge(model) == (type(model).__name__ == "TransformerBridge")


def test_supports_kv_cache_is_decided_by_the_cache_a_hugging_face_decoder_fills():
    yes = _Probed(_filled_cache())
    assert supports_kv_cache(yes)
    assert yes.calls[0] == {"use_cache": True, "return_type": "logits_and_cache"}
    assert not supports_kv_cache(_Probed(None))
    assert not supports_kv_cache(_Probed(TypeError("unexpected keyword argument 'use_cache'")))
    assert not supports_kv_cache(_Probed(NotImplementedError("no cache")))


def test_a_cache_left_empty_or_inexact_is_refused_with_a_warning():
    """transformer-lens 4.3 under transformers 5.24+ leaves the cache it is handed empty (its
    attention reads ``past_key_values``; the blocks pass ``cache``): cached rows would see no
    prefix, so such a model takes the general path, and says why."""
    from transformers import DynamicCache

    with pytest.warns(UserWarning, match="does not reproduce its full forward pass"):
        assert not supports_kv_cache(_Probed(DynamicCache()))

    class _Inexact(_Probed):
        def _output(self, tokens, kwargs, width):
            out = super()._output(tokens, kwargs, width)
            return out + 1.0 if "past_key_values" in kwargs else out

    with pytest.warns(UserWarning, match="does not reproduce its full forward pass"):
        assert not supports_kv_cache(_Inexact(_filled_cache()))


def test_supports_kv_cache_lets_real_failures_through():
    """The probe used to swallow RuntimeError (out of memory included), ValueError and
    AttributeError, silently choosing the slow path for a model that cannot run."""
    for error in (RuntimeError("CUDA out of memory"), ValueError("bad"), AttributeError("x")):
        with pytest.raises(type(error)):
            supports_kv_cache(_Probed(error))


def test_supports_kv_cache_without_a_run_for_models_that_are_not_hugging_face_decoders(model):
    """HookedTransformer, native bridges (a TransformerLens model inside), encoder-decoders and
    masked LMs are decided from their structure: the model is never called."""
    from transformers import DynamicCache

    native = _Probed(DynamicCache(), original_model=torch.nn.Linear(2, 2))
    encoder_decoder = _Probed(DynamicCache())
    encoder_decoder.cfg.is_encoder_decoder = True
    masked = _Probed(DynamicCache())
    masked.cfg.architecture = "BertForMaskedLM"
    for probed in (native, encoder_decoder, masked):
        assert not supports_kv_cache(probed)
        assert probed.calls == []

    calls = []

    def count(tokens, hook):
        calls.append(1)

    with model.hooks(fwd_hooks=[("hook_embed", count)]):
        assert not supports_kv_cache(model)  # the tiny model: HookedTransformer or native
    assert calls == []


def test_kv_cache_forward_returns_the_logits_and_the_filled_cache(hf_bridge):
    assert supports_kv_cache(hf_bridge)
    with torch.no_grad():
        logits, cache = kv_cache_forward(hf_bridge, TOKENS)
        torch.testing.assert_close(logits, hf_bridge(TOKENS))
    assert type(cache).__name__ == "DynamicCache"
    assert cache.layers[0].keys.shape[-2] == TOKENS.shape[1]


@pytest.mark.parametrize("bent", [None, 0, 1, 3, 4])
def test_stacked_shifts_share_sequences_and_still_find_a_bent_layer(bent):
    """``MlpShifts(stacked=True)``: five layers in two four-position sequences, each layer
    shifted at one position before those of the layers below it; a causal model passes, and
    a tanh after any one layer's MLP fails."""
    from tests.models import tiny_model
    from tl_capability.sites import MlpShifts, resid_post_hook_name, run_until

    model = tiny_model(n_layers=5)
    shifts = MlpShifts(model, 4, first=1, stacked=True)
    assert shifts.n_sequences == 2
    assert [shifts.place(layer) for layer in range(5)] == [(1, 3), (1, 2), (1, 1), (1, 0), (2, 3)]
    tokens = torch.tensor([[5, 6, 7, 8]] * 3)
    seen = {}
    grabs = [
        (resid_post_hook_name(layer), lambda r, hook, layer=layer: seen.setdefault(layer, r))
        for layer in range(4)
    ]
    if bent is not None:
        model.hook_dict[f"blocks.{bent}.hook_mlp_out"].add_hook(lambda o, hook: torch.tanh(o))
    try:
        with torch.no_grad():
            seen[4] = run_until(model, resid_post_hook_name(4), tokens, shifts.hooks() + grabs)
    finally:
        model.reset_hooks()
    assert shifts.add_linearly(seen, clean=0) is (bent is None)


def test_the_linearity_test_tells_a_linear_mlp_output_from_a_bent_one():
    """``MlpShifts``: a pass shifting layer l's post-activations in sequence 1 + l moves block
    l's output by ``δ W_out`` exactly, also beside a huge residual, until a tanh bends the last
    MLP's output; an answer a caller records is kept as the probe's, until the hooks change."""
    from tests.models import tiny_model
    from tl_capability.sites import (
        MlpShifts,
        hook_signature,
        mlp_linearity_known,
        record_mlp_linearity,
        resid_post_hook_name,
        run_until,
    )

    model = tiny_model()
    n = model.cfg.n_layers
    tokens = torch.zeros(n + 1, 3, dtype=torch.long)

    def linear() -> bool:
        shifts, seen = MlpShifts(model, 3, first=1), {}
        grabs = [
            (resid_post_hook_name(layer), lambda r, hook, layer=layer: seen.setdefault(layer, r))
            for layer in range(n - 1)
        ]
        with torch.no_grad():
            seen[n - 1] = run_until(
                model, resid_post_hook_name(n - 1), tokens, shifts.hooks() + grabs
            )
        return shifts.add_linearly(seen, clean=0)

    assert linear()
    # a residual carrying 2·10^4 in one dimension (SmolLM2's first position does) is still
    # linear: the change there drowns in the two outputs' rounding, which the test allows for
    big = torch.zeros(model.cfg.d_model)
    big[0] = 2e4
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda r, hook: r + big)]):
        assert linear()
    hook = model.hook_dict[f"blocks.{n - 1}.hook_mlp_out"]
    hook.add_hook(lambda out, hook: torch.tanh(out))
    try:
        assert not linear()
    finally:
        hook.remove_hooks()
    assert mlp_linearity_known(model) is None
    record_mlp_linearity(model, False, hook_signature(model))
    assert mlp_linearity_known(model) is False
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: None)
    try:
        assert mlp_linearity_known(model) is None
    finally:
        handle.remove()
