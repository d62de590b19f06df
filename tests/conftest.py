import os

# Tests never touch the network: every model and dataset is built or shipped locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from tests.models import save_hf_model, tiny_model


@pytest.fixture(scope="session")
def model():
    """A 2-layer random-weight model (bridge on TL 4.x, HookedTransformer on TL 3.x)."""
    return tiny_model()


@pytest.fixture(scope="session")
def zoo_model():
    from tl_capability import zoo

    return zoo.load_model()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def bridge(request, tmp_path_factory):
    """A tiny random Hugging Face GPT-2 or grouped-query Llama booted as a TransformerBridge
    (the circuits' tests: they need TransformerLens 4.x and skip without it)."""
    from transformer_lens import TransformerBridge

    path = save_hf_model(request.param, tmp_path_factory.mktemp(request.param))
    return TransformerBridge.boot_transformers(str(path)).eval()


@pytest.fixture
def json_writes_fail(monkeypatch):
    """Makes every ``Path.write_text`` of a ``.json`` file raise ``OSError("disk full")``, to
    test that two-file saves never leave a mismatched pair; ``monkeypatch.undo()`` ends it."""
    import pathlib

    real = pathlib.Path.write_text

    def fail_json(self, *args, **kwargs):
        if ".json" in self.name:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fail_json)
    return monkeypatch
