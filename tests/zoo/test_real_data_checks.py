"""Dataset checks real data relies on: subjects validated, answers split by a BPE tokenizer."""

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
