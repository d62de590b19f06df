"""The zoo model: a small GPT-2 the project trains itself, with six known capabilities.

It ships inside the package (``tl_capability/zoo/model/``, a Hugging Face directory with a
character-level tokenizer), so every tutorial, test and demo runs offline. Its tasks are in
:mod:`tl_capability.zoo.tasks`, its training script in :mod:`tl_capability.zoo.train`, and its
card in ``docs/zoo-model.md``.

Example:
    >>> from tl_capability import zoo, accuracy
    >>> model = zoo.load_model()
    >>> data = zoo.dataset("addition", n=100)
    >>> accuracy(model, data) > 0.95
    True
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from tl_capability.data import CapabilityDataset
from tl_capability.sites import transformer_lens_has
from tl_capability.zoo.tasks import ENTITIES, TASKS, fact_prompts

MODEL_DIR = Path(__file__).parent / "model"

__all__ = [
    "ENTITIES",
    "MODEL_DIR",
    "TASKS",
    "capability_names",
    "dataset",
    "fact_dataset",
    "fact_prompts",
    "import_backend",
    "load_model",
    "training_info",
]


def capability_names() -> list[str]:
    """The zoo model's capabilities, in a fixed order."""
    return list(TASKS)


def dataset(name: str, n: int = 200, split: str = "test", seed: int = 0) -> CapabilityDataset:
    """``n`` distinct samples of one capability.

    Args:
        name: One of :func:`capability_names`.
        n: Number of samples.
        split: ``"test"`` (never trained on) or ``"train"``; the two never share a prompt.
        seed: Samples are a deterministic function of (name, split, seed).

    Raises:
        ValueError: For an unknown capability or split, or more samples than the split holds.
    """
    if name not in TASKS:
        raise ValueError(f"unknown capability {name!r}; the zoo model has {capability_names()}")
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


def training_info() -> dict[str, Any]:
    """How the shipped weights were trained and their measured test accuracies."""
    return json.loads((MODEL_DIR / "training.json").read_text())


def import_backend(kind: str = "auto") -> None:
    """Imports the TransformerLens model class :func:`load_model` will use.

    TransformerLens 4 imports its bridge machinery (and ``transformers``' modelling code) on
    first use, a few seconds that are not the zoo model's; call this first to time them apart.
    """
    if kind in ("auto", "bridge") and transformer_lens_has("TransformerBridge"):
        from transformer_lens import TransformerBridge  # noqa: F401
    else:
        from transformer_lens import HookedTransformer  # noqa: F401


def load_model(kind: str = "auto", device: str | None = None) -> Any:
    """Loads the zoo model offline, in eval mode, with its tokenizer.

    Args:
        kind: ``"bridge"`` for a TransformerLens 4.x ``TransformerBridge``, ``"hooked"`` for a
            TransformerLens 3.x ``HookedTransformer``, ``"auto"`` for whichever is installed
            (the bridge when both are).
        device: Where to put it (default: CPU).

    Returns:
        The model, in eval mode.
    """
    if not (MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the zoo model's weights are missing from {MODEL_DIR}; "
            "regenerate them with `python -m tl_capability.zoo.train`"
        )
    if kind == "auto":
        kind = "bridge" if transformer_lens_has("TransformerBridge") else "hooked"
    if kind == "bridge":
        from transformer_lens import TransformerBridge

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = TransformerBridge.boot_transformers(str(MODEL_DIR), device=device)
    elif kind == "hooked":
        model = _load_hooked(device)
    else:
        raise ValueError(f"kind must be 'auto', 'bridge' or 'hooked', got {kind!r}")
    model.eval()
    return model


def _load_hooked(device: str | None) -> Any:
    """Builds a TL 3.x HookedTransformer from the Hugging Face files, without the hub."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    except ImportError as e:  # pragma: no cover - depends on the installed TL
        raise ImportError("kind='hooked' needs TransformerLens 3.x (HookedTransformer)") from e
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_heads=c.n_head,
        d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        model_name="tl-capability-zoo",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
        device=device or "cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model


def addition_pairs(n: int = 50, seed: int = 0) -> tuple[CapabilityDataset, CapabilityDataset]:
    """``n`` pairs of addition problems that share their first operand (the main part) and
    differ in the second (the replaceable part), as two aligned datasets, for
    :func:`tl_capability.experiments.decoupling`."""
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
