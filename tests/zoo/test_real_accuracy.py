"""The accuracy tables of the real tasks and facts (docs/real-data.md), on a stand-in model whose
right answers are chosen by hand: the table is what ``answer_correct`` marks, per task format
and per template, and counts the facts known by any, most and all templates."""

import pytest
import torch

import tl_capability.evaluate as evaluate
from tl_capability.zoo import real
from tl_capability.zoo.real_accuracy import accuracy_table, markdown_tables

pytestmark = pytest.mark.core

TASK, RELATION = "singular-plural", "P37"


@pytest.fixture
def table(monkeypatch):
    """The table of one task (format ``f``: its first ``f % 5`` of 4 samples right) and one
    relation's first 3 facts (fact 0 known by all 5 templates, fact 1 by 3, fact 2 by 1)."""
    right = set()
    for f in range(len(real.task_formats(TASK))):
        right.update(real.task_dataset(TASK, n=4, fmt=f).prompts[: f % 5])
    facts = real.fact_dataset(RELATION, n_facts=3)
    known = {0: 5, 1: 3, 2: 1}
    rows = [facts[i] for i in range(len(facts))]
    right.update(r["prompt"] for r in rows if r["template"] < known[r["fact"]])
    calls = []

    def answer_correct(model, data, batch_size):
        calls.append((model, batch_size))
        return torch.tensor([p in right for p in data.prompts])

    monkeypatch.setattr(evaluate, "answer_correct", answer_correct)
    model = object()
    out = accuracy_table(model, n=4, n_facts=3, tasks=[TASK], relations=[RELATION], batch_size=3)
    assert calls and all(c == (model, 3) for c in calls)
    return out


def test_the_table_is_what_answer_correct_marks(table):
    n_formats = len(real.task_formats(TASK))
    assert table["tasks"] == {TASK: [(f % 5) / 4 for f in range(n_formats)]}
    # Template t is right for the facts that know more than t templates: 3, 2, 2, 1, 1 of 3.
    templates = [3 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3]
    counts = {"facts": 3, "known_any": 3, "known_most": 2, "known_all": 1}
    assert table["relations"] == {RELATION: {"templates": templates, **counts}}


def test_the_markdown_shows_each_accuracy_and_count(table):
    text = markdown_tables(table)
    tables = text.split("\n\n")
    assert len(tables) == 4
    # Format 0 (labelled few-shot, in bold), 1 ('x -> y'), 2 ('Q:/A:'), 3 ('input:/output:'),
    # then the two zero-shot ones, each in its kind's column.
    assert f"| {TASK} | 0.25 | 0.75 | 0.50 | **0.00** | 1.00 | 0.00 |" in tables[0].splitlines()
    template_rows = [line for line in tables[2].splitlines() if line.startswith(f"| {RELATION} |")]
    assert len(template_rows) == len(real.relation_templates(RELATION)) == 5
    assert template_rows[0].endswith("| 1.00 |") and template_rows[-1].endswith("| 0.33 |")
    assert f"| {RELATION} | 3 | 3 | 2 | 1 |" in tables[3].splitlines()
