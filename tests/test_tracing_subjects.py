"""tracing_subjects: the subject's tokens found in each fact, and the refusal that names a fact
whose subject matches no token."""

import pytest

import tl_capability as tlc
from tests.helpers import traced_facts_fixture, traced_model_fixture  # noqa: F401 (fixtures used by name)
from tl_capability.tracing_subjects import _token_spans, subject_ranges

pytestmark = pytest.mark.core


def test_subject_tokens_are_found_with_the_bos(model, facts):
    # The character tokenizer: one token per character, after the BOS.
    assert subject_ranges(model, facts) == [(12, 15), (3, 6), (1, 4)]


def test_token_spans_without_offsets_decode_token_by_token(model):
    tokenizer = model.tokenizer

    class Slow:
        def __call__(self, text, **kwargs):
            if kwargs.get("return_offsets_mapping"):
                raise NotImplementedError
            return tokenizer(text, **kwargs)

        def decode(self, ids):
            return tokenizer.decode(ids)

    ids = tokenizer("a dog", add_special_tokens=False)["input_ids"]
    assert _token_spans(Slow(), "a dog", ids) == _token_spans(tokenizer, "a dog", ids)


def test_a_subject_that_matches_no_token_names_the_fact(model, monkeypatch):
    import tl_capability.tracing_subjects as tracing_subjects

    # A tokenizer whose tokens all have empty character spans.
    monkeypatch.setattr(
        tracing_subjects, "_token_spans", lambda tok, text, ids: (text, [(0, 0)] * len(ids))
    )
    facts = tlc.CapabilityDataset.from_pairs(["the cat is"], [" x"], subjects=["cat"])
    with pytest.raises(ValueError, match=r"fact 0 \('the cat is', subject 'cat'\): no token"):
        subject_ranges(model, facts)
