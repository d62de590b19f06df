"""Real tasks and real facts for pretrained models: Function Vectors tasks and PARAREL facts.

This module gathers them: the formats live in `real_formats`, the tasks in `real_tasks`, the
facts in `real_facts` and the accuracy tables in `real_accuracy`.

The zoo's own capabilities ([`tl_capability.zoo.tasks`][tl_capability.zoo.tasks]) suit the zoo
models; a pretrained model needs natural-language data. Two public, MIT-licensed sets ship (in
part) inside the package, under ``tl_capability/zoo/data/`` with their licences and a README
each; ``docs/real-data.md`` gives their sources and SmolLM2-135M's accuracies.

- **Function Vectors tasks** (Todd et al., ICLR 2024): word-level tasks as ``(input, output)``
  pairs (``present-past``: ``walk`` -> ``walked``).
  [`task_dataset`][tl_capability.zoo.real.task_dataset] writes them as prompts in one of several
  deliberately different formats ([`task_formats`][tl_capability.zoo.real.task_formats]):
  zero-shot templates ("The past tense of walk is") and few-shot layouts ("walk -> walked"
  lines) whose demonstrations come from the train split only. Inputs are split into test and
  train by a hash of the input, so a word keeps its split in the full set
  ([`load_function_vectors`][tl_capability.loaders.load_function_vectors]).
- **PARAREL facts** (Elazar et al., TACL 2021): T-REx triples of a relation (``P36``, capital)
  with paraphrased templates, the knowledge-neuron papers' setting.
  [`fact_dataset`][tl_capability.zoo.real.fact_dataset] writes every (fact, paraphrase) pair,
  with the subject (a substring of the prompt) in a ``subject`` column;
  [`facts`][tl_capability.zoo.real.facts] gives one dataset per fact, named after its subject.

Templates use PARAREL's notation: ``[X]`` is the input (subject), ``[Y]`` the answer, which must
end the template (punctuation after it aside). The prompt is the text before ``[Y]``; the answer
gets a leading space when the template has one before ``[Y]``, as BPE tokenizers expect.

Example:
    >>> from tl_capability.zoo import real
    >>> data = real.task_dataset("present-past", n=3, fmt=real.ARROW)
    >>> len(data.prompts[0].splitlines()), data.answers[0].startswith(" ")
    (4, True)
    >>> per_fact = real.facts("P36", n=2)
    >>> per_fact[0].name == per_fact[0].subjects[0]
    True
"""

from tl_capability.zoo.real_accuracy import accuracy_table, markdown_tables
from tl_capability.zoo.real_facts import (
    RELATIONS,
    fact_dataset,
    facts,
    facts_dataset_from_pairs,
    group_by_fact,
    pararel_patterns,
    relation_facts,
    relation_names,
    relation_templates,
    unique_facts,
)
from tl_capability.zoo.real_formats import (
    ARROW,
    DATA_DIR,
    DEFAULT_SHOTS,
    FV_DIR,
    GENERIC_FORMATS,
    INPUT_OUTPUT,
    PARAREL_DIR,
    QUESTION_ANSWER,
    TEST_FRACTION,
    PromptFormat,
    causal_templates,
)
from tl_capability.zoo.real_tasks import (
    dataset_from_pairs,
    in_test_split,
    split_pairs,
    task_dataset,
    task_formats,
    task_names,
    task_pairs,
)

__all__ = [
    "ARROW",
    "DATA_DIR",
    "DEFAULT_SHOTS",
    "FV_DIR",
    "GENERIC_FORMATS",
    "INPUT_OUTPUT",
    "PARAREL_DIR",
    "QUESTION_ANSWER",
    "RELATIONS",
    "TEST_FRACTION",
    "PromptFormat",
    "accuracy_table",
    "causal_templates",
    "dataset_from_pairs",
    "fact_dataset",
    "facts",
    "facts_dataset_from_pairs",
    "group_by_fact",
    "in_test_split",
    "markdown_tables",
    "pararel_patterns",
    "relation_facts",
    "relation_names",
    "relation_templates",
    "split_pairs",
    "task_dataset",
    "task_formats",
    "task_names",
    "task_pairs",
    "unique_facts",
]
