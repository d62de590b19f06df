import os

# Tests never touch the network: every model and dataset is built or shipped locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from tests.models import tiny_model


@pytest.fixture(scope="session")
def model():
    """A 2-layer random-weight model (bridge on TL 4.x, HookedTransformer on TL 3.x)."""
    return tiny_model()


@pytest.fixture(scope="session")
def zoo_model():
    from tl_capability import zoo

    return zoo.load_model()
