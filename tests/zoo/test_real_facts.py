"""PARAREL facts: every fact and paraphrase, subjects, patterns."""

import pytest

from tl_capability import loaders
from tl_capability.zoo import real

pytestmark = pytest.mark.core


def test_fact_dataset_has_every_fact_and_paraphrase_with_its_subject():
    data = real.fact_dataset("P36", n_facts=4)
    n_templates = len(real.relation_templates("P36"))
    assert len(data) == 4 * n_templates and data.name == "P36"
    assert {"subject", "fact", "template"} <= set(data.data.column_names)
    for row in data:
        assert row["subject"] in row["prompt"] and row["answer"].startswith(" ")
        assert "[X]" not in row["prompt"] and "[Y]" not in row["prompt"]
    per_fact = real.facts("P36", n=4)
    assert [d.name for d in per_fact] == list(dict.fromkeys(data.subjects))
    for d in per_fact:
        assert len(d) == n_templates and len(set(d.prompts)) == n_templates
        assert set(d.subjects) == {d.name} and len(set(d.answers)) == 1
    two = real.fact_dataset("P36", n_facts=3, templates=[0, real.relation_templates("P36")[2]])
    assert len(two) == 6 and set(two.data["template"]) == {0, 2}
    with pytest.raises(ValueError, match="unknown relation"):
        real.fact_dataset("P999")
    with pytest.raises(ValueError, match="templates"):
        real.fact_dataset("P36", templates=[42])


def test_subjects_with_two_objects_are_dropped():
    facts = [("Europe", "French"), ("Europe", "German"), ("Haiti", "French"), ("Haiti", "French")]
    assert real.unique_facts(facts) == [("Haiti", "French")]
    subjects = [s for s, _ in real.relation_facts("P37")]
    assert len(subjects) == len(set(subjects))


def test_pararel_patterns_whose_answer_is_not_last_are_skipped():
    patterns = real.pararel_patterns("P36")
    usable = real.causal_templates(patterns)
    assert 0 < len(usable) < len(patterns)
    assert "[Y] is the capital of [X]." in patterns and "[Y] is the capital of [X]." not in usable
    data = loaders.load_pararel(
        real.PARAREL_DIR / "trex" / "P36.jsonl",
        real.PARAREL_DIR / "patterns" / "P36.jsonl",
        n_facts=3,
    )
    assert len(data) == 3 * len(usable)
    assert data[0] == {
        "prompt": "The capital of Cook County is",
        "answer": " Chicago",
        "subject": "Cook County",
        "fact": 0,
        "template": 0,
    }
    assert "Cook County's capital," in data.prompts  # "[X]'s capital, [Y]."
