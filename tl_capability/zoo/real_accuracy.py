"""A model's accuracy on every shipped real task and fact set, as tables (``docs/real-data.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tl_capability.zoo.real_facts import fact_dataset, relation_names, relation_templates
from tl_capability.zoo.real_formats import GENERIC_FORMATS
from tl_capability.zoo.real_tasks import task_dataset, task_formats, task_names


def accuracy_table(
    model: Any,
    *,
    n: int = 100,
    n_facts: int = 100,
    tasks: Sequence[str] | None = None,
    relations: Sequence[str] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """A model's exact-match accuracy on the shipped tasks and facts (``docs/real-data.md``).

    Args:
        model: A TransformerLens model in eval mode.
        n: Test samples per task and format.
        n_facts: Facts per relation (the first ones), each with every template.
        tasks: The tasks to measure (default: all).
        relations: The relations to measure (default: all).
        batch_size: Samples per forward pass.

    Returns:
        ``{"tasks": {task: [accuracy of each format]}, "relations": {relation: {"templates":
        [accuracy of each template], "facts": number of facts, "known_any": facts answered by
        at least one template, "known_most": by more than half, "known_all": by all}}}``.
    """
    from tl_capability.evaluate import answer_correct

    out: dict[str, Any] = {"tasks": {}, "relations": {}}
    for task in task_names() if tasks is None else tasks:
        out["tasks"][task] = [
            answer_correct(model, task_dataset(task, n=n, fmt=f), batch_size=batch_size)
            .float()
            .mean()
            .item()
            for f in range(len(task_formats(task)))
        ]
    for relation in relation_names() if relations is None else relations:
        data = fact_dataset(relation, n_facts=n_facts)
        correct = answer_correct(model, data, batch_size=batch_size).tolist()
        by_template: dict[int, list[bool]] = {}
        by_fact: dict[int, list[bool]] = {}
        rows = zip(data._column("template"), data._column("fact"), correct, strict=True)
        for template, fact, ok in rows:
            by_template.setdefault(template, []).append(ok)
            by_fact.setdefault(fact, []).append(ok)
        out["relations"][relation] = {
            "templates": [sum(v) / len(v) for _, v in sorted(by_template.items())],
            "facts": len(by_fact),
            "known_any": sum(any(v) for v in by_fact.values()),
            "known_most": sum(sum(v) > len(v) / 2 for v in by_fact.values()),
            "known_all": sum(all(v) for v in by_fact.values()),
        }
    return out


def markdown_tables(table: dict[str, Any]) -> str:
    """The tables of [`accuracy_table`][tl_capability.zoo.real.accuracy_table] in Markdown: one
    column per kind of format (each task's format 0 in bold), the task's own templates, and the
    relations' templates with the facts known."""
    kinds = [f.name for f in GENERIC_FORMATS] + ["labelled few-shot", "zero-shot 1", "zero-shot 2"]
    lines = ["| task | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    own = ["| task | labelled few-shot | zero-shot 1 | zero-shot 2 |", "|---|---|---|---|"]
    for task, accs in table["tasks"].items():
        cells, texts, zero = [""] * len(kinds), [""] * 3, 0
        for i, (form, acc) in enumerate(zip(task_formats(task), accs, strict=True)):
            if form in GENERIC_FORMATS:
                k = GENERIC_FORMATS.index(form)
            elif form.shots:
                k = len(GENERIC_FORMATS)
            else:
                k, zero = len(GENERIC_FORMATS) + 1 + zero, zero + 1
            cells[k] = f"**{acc:.2f}**" if i == 0 else f"{acc:.2f}"
            if k >= len(GENERIC_FORMATS):
                texts[k - len(GENERIC_FORMATS)] = "`" + form.template.replace("\n", "\\n") + "`"
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
        own.append(f"| {task} | " + " | ".join(texts) + " |")
    rel = ["| relation | template | accuracy |", "|---|---|---:|"]
    known = [
        "| relation | facts | known by any template | by most | by all |",
        "|---|---:|---:|---:|---:|",
    ]
    for relation, row in table["relations"].items():
        for t, acc in zip(relation_templates(relation), row["templates"], strict=True):
            rel.append(f"| {relation} | `{t}` | {acc:.2f} |")
        known.append(
            f"| {relation} | {row['facts']} | {row['known_any']} | {row['known_most']} | "
            f"{row['known_all']} |"
        )
    return "\n\n".join("\n".join(t) for t in (lines, own, rel, known))
