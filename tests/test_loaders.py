"""The loaders' registry and ``resolve``: names, schema errors, offline hub names and missing
files (each hub dataset's schema in test_hub_loaders.py)."""

import pytest

from tests.helpers import _jsonl
from tl_capability import hub_loaders, loaders

pytestmark = pytest.mark.core


def test_the_hub_loaders_are_loaders_and_registered_by_name():
    """The loaders of test_hub_loaders.py, reached the way users reach them."""
    for name in ("gsm8k", "emotion", "imdb", "metamathqa", "code25k", "mceval8k"):
        loader = getattr(hub_loaders, f"load_{name}")
        assert getattr(loaders, f"load_{name}") is loader
        assert loaders.LOADERS[name] is loader


def test_schema_errors_and_registry(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", [{"q": "a"}])
    with pytest.raises(ValueError, match="lack columns"):
        loaders.load_gsm8k(f)
    with pytest.raises(ValueError, match="unknown dataset"):
        loaders.load("nope")
    g = _jsonl(tmp_path / "g.jsonl", [{"question": "a?", "answer": "#### 1"}])
    assert loaders.load("gsm8k", g).answers == [" 1"]
    assert set(loaders.LOADERS) == {
        "gsm8k",
        "emotion",
        "imdb",
        "metamathqa",
        "code25k",
        "mceval8k",
        "function_vectors",
        "pararel",
    }


def test_hub_names_fail_offline_with_a_clear_error():
    """With HF_DATASETS_OFFLINE=1 a hub name is not fetched (the real code path is taken): the
    error names the dataset and says what to do without a network."""
    with pytest.raises(ConnectionError, match=r"'openai/gsm8k' from the Hugging Face Hub .*local"):
        loaders.load_gsm8k("openai/gsm8k")
    with pytest.raises(ConnectionError, match=r"'someone/prompts' from the Hugging Face Hub"):
        loaders.resolve("someone/prompts", n=2)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_resolve_refuses_a_sample_count_that_is_not_positive(n):
    """n=0 used to mean 200 samples for zoo capabilities."""
    with pytest.raises(ValueError, match="n must be a positive integer"):
        loaders.resolve("addition", n=n)


def test_resolve_refuses_an_unknown_zoo_split():
    """Any split but 'test' used to give training samples silently."""
    with pytest.raises(ValueError, match="validation"):
        loaders.resolve("addition", split="validation", n=4)
    assert len(loaders.resolve("addition", split="train", n=4)) == 4


@pytest.mark.parametrize(
    "spec", ["./missing.jsonl", "data/missing.csv", "emotion:./missing.jsonl", "../x/"]
)
def test_missing_local_files_are_reported_as_missing(tmp_path, monkeypatch, spec):
    """A mistyped path used to be looked up on the Hub ("couldn't reach ...")."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        loaders.resolve(spec, n=2)
