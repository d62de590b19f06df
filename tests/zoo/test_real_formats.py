"""Prompt formats of the real tasks and facts."""

import pytest

from tl_capability.zoo import real

pytestmark = pytest.mark.core


def test_at_least_five_formats_per_task_and_templates_per_relation():
    for task in real.task_names():
        formats = real.task_formats(task)
        assert len(formats) >= 5
        assert len({f.template for f in formats}) == len(formats)
        assert any(f.shots == 0 for f in formats) and any(f.shots > 0 for f in formats)
    for relation in real.relation_names():
        templates = real.relation_templates(relation)
        assert len(templates) >= 5 and len(set(templates)) == len(templates)
        assert real.causal_templates(templates) == templates


def test_answers_get_the_space_the_format_puts_before_them():
    for task in real.task_names():
        for fmt in range(len(real.task_formats(task))):
            data = real.task_dataset(task, n=5, fmt=fmt)
            for prompt, answer in zip(data.prompts, data.answers, strict=True):
                assert not prompt.endswith(" ") and not answer.startswith("  ")
                # A space before the answer, unless the format opens a quote for it.
                assert answer.startswith(" ") != prompt.endswith('"')
    fmt = real.PromptFormat("([X]:[Y])")
    assert fmt.query("a") == "(a:" and fmt.answer("b") == "b" and fmt.example("a", "b") == "(a:b)"
