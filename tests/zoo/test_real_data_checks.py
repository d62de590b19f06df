"""Dataset checks real data relies on: subjects validated, answers split by a BPE tokenizer."""

import warnings
from types import SimpleNamespace

import pytest

from tl_capability.data import CapabilityDataset, answer_token_mismatches, check_answer_tokens

pytestmark = pytest.mark.core


def test_subjects_are_validated_and_survive_every_copy(tmp_path):
    prompts = ["The capital of France is", "Rome is in"]
    data = CapabilityDataset.from_pairs(prompts, [" Paris", " Italy"], subjects=["France", "Rome"])
    assert data.subjects == ["France", "Rome"]
    assert CapabilityDataset.from_pairs(prompts, [" a", " b"]).subjects is None
    with pytest.raises(ValueError, match=r"sample 1 \('Rome is in'\).*'Paris'"):
        CapabilityDataset.from_pairs(prompts, [" a", " b"], subjects=["France", "Paris"])
    with pytest.raises(ValueError, match="sample 0"):
        CapabilityDataset.from_pairs(prompts, [" a", " b"], subjects=["", "Rome"])
    with pytest.raises(ValueError, match="1 subject for 2 prompts"):
        CapabilityDataset.from_pairs(prompts, [" a", " b"], subjects=["France"])
    assert data.select([1]).subjects == ["Rome"]
    assert sorted(data.shuffle(3).subjects) == ["France", "Rome"]
    first, second = data.split(0.5)
    assert first.subjects + second.subjects in (["France", "Rome"], ["Rome", "France"])
    data.to_jsonl(tmp_path / "d.jsonl")
    back = CapabilityDataset.from_file(tmp_path / "d.jsonl")
    assert back.subjects == ["France", "Rome"] and back.prompts == prompts


def test_answers_split_across_the_prompt_boundary_are_named(bpe):
    ok = CapabilityDataset.from_pairs(["hello", "say hello"], [" world", " world"], name="greet")
    assert answer_token_mismatches(bpe, ok) == []
    check_answer_tokens(bpe, ok)
    model = SimpleNamespace(cfg=SimpleNamespace(), tokenizer=bpe)
    check_answer_tokens(model, ok)
    bad = CapabilityDataset.from_pairs(["hello", "hel"], [" world", "lo"], name="greet")
    assert answer_token_mismatches(bpe, bad) == [1]
    with pytest.raises(ValueError, match=r"sample 1 \(prompt 'hel', answer 'lo'\) of greet"):
        check_answer_tokens(model, bad)


def test_tokenize_warns_of_an_answer_split_across_the_prompt_boundary(bpe):
    from tl_capability.data import tokenize

    model = SimpleNamespace(cfg=SimpleNamespace(n_ctx=64), tokenizer=bpe)
    bad = CapabilityDataset.from_pairs(["hello", "hel"], [" world", "lo"], name="greet")
    with pytest.warns(UserWarning, match=r"sample 1 \(prompt 'hel', answer 'lo'\) of greet"):
        tokenize(model, bad)
    ok = CapabilityDataset.from_pairs(["hello", "say hello"], [" world", " world"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize(model, ok)


def test_a_user_pararel_file_with_a_split_answer_is_refused_naming_the_fact(bpe, tmp_path):
    from tl_capability import loaders

    facts = tmp_path / "P99.jsonl"
    facts.write_text('{"sub_label": "Anna", "obj_label": " world"}\n')
    facts.write_text(facts.read_text() + '{"sub_label": "Bo", "obj_label": "lo"}\n')
    patterns = tmp_path / "patterns.jsonl"
    patterns.write_text('{"pattern": "[X] said hel[Y]"}\n')
    model = SimpleNamespace(cfg=SimpleNamespace(n_ctx=64), tokenizer=bpe)
    assert len(loaders.load_pararel(facts, patterns)) == 2  # no model: not checked
    with pytest.raises(ValueError, match=r"sample 1 \(prompt 'Bo said hel', answer 'lo'\)"):
        loaders.load_pararel(facts, patterns, model=model)
