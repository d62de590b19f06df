"""Enhancement (Huang et al., ICLR 2025, poster Table 2): repair a degraded model by fine-tuning
only the located neurons, against a random set of the same shape and all the other neurons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tl_capability.data import CapabilityDataset
from tl_capability.edits import finetune_neurons
from tl_capability.evaluate import accuracy
from tl_capability.masks import NeuronMask, random_controls
from tl_capability.tables import Row, Table


@dataclass(frozen=True)
class EnhancementRow(Row):
    """Test accuracy of one neuron set after some epochs of fine-tuning.

    Attributes:
        neurons: ``"located"``, ``"random"`` or ``"all but located"``.
        count: Number of neurons fine-tuned.
        epochs: Epochs of fine-tuning so far (0: the degraded start).
        accuracy: Test accuracy, in percent.
    """

    neurons: str
    count: int
    epochs: int
    accuracy: float


@dataclass(frozen=True)
class EnhancementResult(Table):
    """What [`enhancement`][tl_capability.experiments.enhancement.enhancement] measured.

    Attributes:
        rows: One row per (neuron set, epochs), the degraded start (epochs 0) first.
        dataset: Name of the test data (``"test"`` when it has none).
        located: The located set fine-tuned.
        random: The random control set (same count per layer, drawn with ``seed``).
        noise: Noise level of the degradation.
        seed: Seed of the noise, the random set and the fine-tuning.
    """

    rows: tuple[EnhancementRow, ...]
    dataset: str
    located: NeuronMask
    random: NeuronMask
    noise: float
    seed: int


def _degrade(model: Any, noise: float, seed: int) -> None:
    """Adds Gaussian noise (``noise`` × each tensor's std) to every MLP weight, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            for p in block.mlp.parameters():
                if p.dim() >= 2:
                    e = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
                    p.add_(noise * p.std() * e)


def enhancement(
    model: Any,
    train: CapabilityDataset,
    test: CapabilityDataset,
    mask: NeuronMask,
    *,
    epochs: Sequence[int] = (1, 5, 10),
    noise: float = 0.5,
    lr: float = 1e-3,
    seed: int = 0,
) -> EnhancementResult:
    """Fine-tune only the located neurons vs a random set vs all-but-located (poster Table 2).

    Protocol (chosen for a model that already solves its tasks): every MLP weight matrix is
    degraded by Gaussian noise (``noise`` times its standard deviation, seeded), then each
    set of neurons is fine-tuned alone on ``train``
    ([`finetune_neurons`][tl_capability.edits.finetune_neurons], Adam, ``lr``) and ``test`` accuracy
    is read after each number of ``epochs``. The located set has to repair a capability it was found
    for; the random set has the same size in every layer (``random_controls(mask, 1, seed=seed)``);
    all-but-located has ~50x more parameters. The model's weights are restored at the end.

    Returns:
        One row per (neuron set, epochs) with the accuracy, plus the degraded start (epochs 0).
    """
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    (random_set,) = random_controls(mask, 1, seed=seed)
    sets = {"located": mask, "random": random_set, "all but located": ~mask}
    rows = []
    try:
        _degrade(model, noise, seed)
        degraded = {k: v.detach().clone() for k, v in model.state_dict().items()}
        start = 100 * accuracy(model, test)
        for label, neurons in sets.items():
            model.load_state_dict(degraded)
            rows.append(EnhancementRow(label, len(neurons), 0, start))
            done = 0
            for target in sorted(epochs):
                finetune_neurons(
                    model,
                    neurons,
                    train,
                    epochs=target - done,
                    lr=lr,
                    seed=seed + done,
                    progress=False,
                )
                done = target
                rows.append(
                    EnhancementRow(label, len(neurons), target, 100 * accuracy(model, test))
                )
    finally:
        model.load_state_dict(original)
    dataset = test.name or "test"
    return EnhancementResult(
        f"Enhancement: fine-tuning only some neurons of a degraded model ({dataset})",
        tuple(rows),
        dataset,
        mask,
        random_set,
        noise,
        seed,
    )
