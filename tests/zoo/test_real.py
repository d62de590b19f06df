"""The zoo's real data as shipped: licences, READMEs, answers a character tokenizer keeps whole."""

import pytest

from tests.zoo.helpers import SHIPPED_TASKS
from tl_capability.data import CapabilityDataset, check_answer_tokens
from tl_capability.evaluate import answer_correct, correct_subset
from tl_capability.zoo import real

pytestmark = pytest.mark.core


def test_every_task_and_relation_ships_with_licences_and_readmes():
    assert set(real.task_names()) == SHIPPED_TASKS
    for task in real.task_names():
        assert (real.FV_DIR / f"{task}.json").is_file()
    for relation in real.relation_names():
        assert (real.PARAREL_DIR / "trex" / f"{relation}.jsonl").is_file()
        assert (real.PARAREL_DIR / "patterns" / f"{relation}.jsonl").is_file()
    for folder in (real.FV_DIR, real.PARAREL_DIR):
        assert "MIT License" in (folder / "LICENSE").read_text()
        assert "cite" in (folder / "README.md").read_text().lower()
    size = sum(f.stat().st_size for f in real.DATA_DIR.rglob("*") if f.is_file())
    assert size < 2_000_000


def test_shipped_data_has_no_split_answers_for_a_character_tokenizer():
    from tests.models import char_tokenizer

    tok = char_tokenizer()
    check_answer_tokens(tok, real.task_dataset("present-past", n=20))
    assert len(real.fact_dataset("P1376", n_facts=3, model=tok)) == 15


def test_correct_subset_keeps_what_the_model_answers(zoo_model):
    from tl_capability import zoo

    data = zoo.dataset("addition", n=60)
    correct = answer_correct(zoo_model, data)
    kept, n = correct_subset(zoo_model, data)
    assert n == int(correct.sum()) == len(kept) and kept.name == "addition"
    assert kept.prompts == [p for p, c in zip(data.prompts, correct.tolist(), strict=True) if c]
    wrong = CapabilityDataset.from_pairs(["1+1="], ["7"], name="wrong")
    with pytest.raises(ValueError, match="none of the 1 samples of wrong"):
        correct_subset(zoo_model, wrong)
