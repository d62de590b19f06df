"""Fixtures shared by the tests of this folder."""

import pytest

from tests.models import HAS_BRIDGE, save_hf_model


@pytest.fixture(scope="module")
def hf_bridge(tmp_path_factory):
    if not HAS_BRIDGE:
        pytest.skip("needs TransformerLens 4.x")
    from transformer_lens import TransformerBridge

    directory = save_hf_model("gpt2", tmp_path_factory.mktemp("gpt2"))
    return TransformerBridge.boot_transformers(str(directory)).eval()
