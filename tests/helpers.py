"""Data and helpers shared by the top-level test files (the folders have their own)."""

import json

import pytest

from tests.models import tiny_model
from tl_capability import CapabilityDataset, attribute, causal_trace

# localization and rankings: a target of two samples and one control.
TARGET = CapabilityDataset.from_pairs(["12+34=", "rev abc:"], ["46", "cba"], name="t")
OTHER = CapabilityDataset.from_pairs(["the day was", "q"], [" fun", "xy"], name="o")


def _all(model, data):
    """The scores every ranked method starts from, computed in full by ``attribute``."""
    return attribute(
        model, data, "ig", steps=8, metric="logprob", positions="all", progress=False
    ).values


# circuits: clean prompts and corrupted ones of the same token lengths.
CLEAN = CapabilityDataset.from_pairs(["abc is", "defg is", "hij is"], ["x", "y", "z"])
CORRUPTED = CapabilityDataset.from_pairs(["xbc is", "dxfg is", "hiq is"], ["p", "q", "r"])

# tracing: three facts with their subjects, traced on a 4-layer model.
PROMPTS = ["the cat of bob is", "a dog of ann was", "bob sat"]
SUBJECTS = ["bob", "dog", "bob"]
KINDS = (None, "mlp", "attn")


def traced_model():
    return tiny_model(n_layers=4, seed=1)


def traced_facts():
    return CapabilityDataset.from_pairs(PROMPTS, [" x", " y", " z"], subjects=SUBJECTS)


def traces_of(model, facts):
    """A causal trace of each kind: states, MLPs, attention."""
    return {kind: causal_trace(model, facts, kind=kind, samples=3) for kind in KINDS}


# loaders and hub_loaders: small local files that imitate each dataset's real schema.
def _jsonl(path, rows):
    """``rows`` written to ``path`` as JSON lines."""
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# The tracing tests' module-scoped fixtures, one definition each: a test module imports them
# (pytest registers an imported fixture under its ``name``).
@pytest.fixture(scope="module", name="model")
def traced_model_fixture():
    return traced_model()


@pytest.fixture(scope="module", name="facts")
def traced_facts_fixture():
    return traced_facts()


@pytest.fixture(scope="module", name="traces")
def traces_fixture(model, facts):
    return traces_of(model, facts)
