"""The zoo: small language models the project trains itself, with six known capabilities.

Three models ship inside the package (``tl_capability/zoo/models/<name>/``, each a Hugging Face
directory with a character-level tokenizer), so every tutorial, test and demo runs offline:
``"gpt2"`` (the default), ``"gpt2-dropout"`` (the same GPT-2 trained with dropout 0.1) and
``"llama"`` (a Llama-style model: gated SiLU MLP, RMSNorm, rotary positions). All are trained on
the same tasks ([`tl_capability.zoo.tasks`][tl_capability.zoo.tasks]) by
[`tl_capability.zoo.train`][tl_capability.zoo.train]; their card is ``docs/zoo-model.md``.

Example:
    >>> from tl_capability import zoo, accuracy
    >>> zoo.model_names()
    ['gpt2', 'gpt2-dropout', 'llama']
    >>> model = zoo.load_model()  # the default, "gpt2"
    >>> data = zoo.dataset("addition", n=100)
    >>> accuracy(model, data) > 0.95
    True
"""

from __future__ import annotations

import random

from tl_capability.data import CapabilityDataset
from tl_capability.zoo.loading import (
    DEFAULT_MODEL,
    MODEL_DIR,
    MODELS_DIR,
    _load_dir,  # noqa: F401  (tl_capability.models loads zoo-format directories with it)
    import_backend,
    load_model,
    model_dir,
    model_names,
    real_model_names,
    real_model_path,
    training_info,
)
from tl_capability.zoo.tasks import ENTITIES, TASKS, fact_prompts

__all__ = [
    "DEFAULT_MODEL",
    "ENTITIES",
    "MODELS_DIR",
    "MODEL_DIR",
    "TASKS",
    "capability_names",
    "dataset",
    "fact_dataset",
    "fact_prompts",
    "import_backend",
    "load_model",
    "model_dir",
    "model_names",
    "real_model_names",
    "real_model_path",
    "training_info",
]


def capability_names() -> list[str]:
    """The zoo models' capabilities (every zoo model has all of them), in a fixed order."""
    return list(TASKS)


def dataset(name: str, n: int = 200, split: str = "test", seed: int = 0) -> CapabilityDataset:
    """``n`` distinct samples of one capability.

    Args:
        name: One of [`capability_names`][tl_capability.zoo.capability_names].
        n: Number of samples.
        split: ``"test"`` (never trained on) or ``"train"``; the two never share a prompt.
        seed: Samples are a deterministic function of (name, split, seed).

    Raises:
        ValueError: For an unknown capability or split, or more samples than the split holds.
    """
    if name not in TASKS:
        raise ValueError(f"unknown capability {name!r}; the zoo models have {capability_names()}")
    examples = TASKS[name].sample(n, split, seed)
    if not examples:
        raise ValueError("n must be at least 1")
    mc = examples[0].choices is not None
    return CapabilityDataset.from_pairs(
        [e.prompt for e in examples],
        [e.answer for e in examples],
        name=name,
        choices=[list(e.choices or ()) for e in examples] if mc else None,
        labels=[e.label for e in examples] if mc else None,
    )


def fact_dataset(entity: str) -> CapabilityDataset:
    """Every paraphrase of one entity's fact (both splits) as a dataset named after it, for
    knowledge-neuron experiments."""
    if entity not in dict(ENTITIES):
        raise ValueError(f"unknown entity {entity!r}; see zoo.ENTITIES")
    examples = fact_prompts(entity)
    return CapabilityDataset.from_pairs(
        [e.prompt for e in examples], [e.answer for e in examples], name=entity
    )


def addition_pairs(n: int = 50, seed: int = 0) -> tuple[CapabilityDataset, CapabilityDataset]:
    """``n`` pairs of addition problems that share their first operand (the main part) and
    differ in the second (the replaceable part), as two aligned datasets, for
    [`tl_capability.experiments.decoupling`][tl_capability.experiments.kn_decoupling.decoupling]."""
    rng = random.Random(seed)
    rows: tuple[list[tuple[str, str]], list[tuple[str, str]]] = ([], [])
    for _ in range(n):
        a, b, c = rng.randrange(100), *rng.sample(range(100), 2)
        rows[0].append((f"{a}+{b}=", str(a + b)))
        rows[1].append((f"{a}+{c}=", str(a + c)))
    return tuple(  # type: ignore[return-value]
        CapabilityDataset.from_pairs(
            [p for p, _ in r], [q for _, q in r], f"addition pairs {i + 1}"
        )
        for i, r in enumerate(rows)
    )


# Real data for pretrained models (Function Vectors tasks, PARAREL facts): tl_capability.zoo.real.
from tl_capability.zoo import real  # noqa: E402
from tl_capability.zoo.real import relation_names, task_dataset, task_names  # noqa: E402

__all__ += ["real", "relation_names", "task_dataset", "task_names"]
