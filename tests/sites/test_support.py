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
