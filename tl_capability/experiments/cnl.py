"""Capability-localization experiments (Huang et al., ICLR 2025), with random controls.

- :func:`split_overlap` (poster Table 1): locate a capability's neurons on two disjoint halves of
  its data and compare the two sets (overlap, IoU, fraction of neurons), for each σ.
- :func:`erase` (Table 3, and the cross-capability matrix of Fig. 4): zero the neurons located
  for capability A and measure every capability B, against random sets with the same number of
  neurons in every layer (several seeds; mean and 95 % interval).
- :func:`enhancement` (Table 2): repair a degraded model by fine-tuning only the located
  neurons, a random set of the same shape, or all the other neurons.

Every σ-dependent number is reported for each σ given, so they can be drawn as curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tl_capability.attribution import NeuronScores, attribute
from tl_capability.data import CapabilityDataset
from tl_capability.edits import finetune_neurons
from tl_capability.evaluate import accuracy
from tl_capability.experiments._results import Table, mean_ci
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask, select

SIGMAS = (2.0, 3.0, 6.0, 12.0)


def locate_scores(
    model: Any, datasets: Mapping[str, CapabilityDataset], **attribute_kwargs: Any
) -> dict[str, NeuronScores]:
    """Attribution scores of every capability (``attribute``'s defaults unless overridden)."""
    attribute_kwargs.setdefault("progress", False)
    return {name: attribute(model, data, **attribute_kwargs) for name, data in datasets.items()}


def split_overlap(
    model: Any,
    datasets: Mapping[str, CapabilityDataset],
    *,
    sigmas: Sequence[float] = SIGMAS,
    seed: int = 0,
    **attribute_kwargs: Any,
) -> Table:
    """Overlap and IoU of the neurons located on two disjoint random halves of each dataset.

    Returns:
        One row per (capability, σ): the two sets' sizes, the fraction of all neurons they hold
        (their mean), their overlap and IoU.
    """
    rows = []
    for name, data in datasets.items():
        first, second = data.split(0.5, seed=seed)
        scores = locate_scores(model, {"a": first, "b": second}, **attribute_kwargs)
        for sigma in sigmas:
            a, b = select(scores["a"], sigma=sigma), select(scores["b"], sigma=sigma)
            rows.append(
                {
                    "capability": name,
                    "sigma": sigma,
                    "neurons_a": len(a),
                    "neurons_b": len(b),
                    "fraction": (a.fraction + b.fraction) / 2,
                    "overlap": a.overlap(b),
                    "iou": a.iou(b),
                }
            )
    return Table("Located neurons on two disjoint halves of the data", tuple(rows))


def erase(
    model: Any,
    locate_on: Mapping[str, CapabilityDataset],
    evaluate_on: Mapping[str, CapabilityDataset],
    *,
    sigmas: Sequence[float] = SIGMAS,
    n_random: int = 5,
    scores: Mapping[str, NeuronScores] | None = None,
    mode: str = "zero",
    factor: float = 2.0,
    **attribute_kwargs: Any,
) -> Table:
    """Accuracy of every capability with each capability's located neurons zeroed (or, with
    ``mode="scale"``, amplified by ``factor``: the other half of the paper's Fig. 4).

    Args:
        model: The model (restored after every measurement).
        locate_on: Data to locate each capability's neurons on.
        evaluate_on: Held-out data of every capability to measure (may include others).
        sigmas: σ values of the selection rule.
        n_random: Random placebo sets per located set (same count per layer, seeds 0..n-1).
        scores: Precomputed attribution scores per capability (else computed here).
        mode: ``"zero"`` (erase) or ``"scale"`` (amplify by ``factor``).

    Returns:
        One row per (located capability, σ, evaluated capability): the number of neurons,
        base and erased accuracy, the drop, and the random sets' mean drop with its 95 %
        interval. Drops are in accuracy points (0-100).
    """
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    if mode not in ("zero", "scale"):
        raise ValueError(f"mode must be 'zero' or 'scale', got {mode!r}")
    hook_kwargs = {"factor": factor} if mode == "scale" else {}
    if scores is None:
        scores = locate_scores(model, locate_on, **attribute_kwargs)
    base = {name: accuracy(model, data) for name, data in evaluate_on.items()}
    rows = []
    for located in locate_on:
        for sigma in sigmas:
            mask = select(scores[located], sigma=sigma)
            placebos = [mask.random_like(seed=s) for s in range(n_random)]
            for name, data in evaluate_on.items():
                if len(mask):
                    with ablate(model, mask, mode, **hook_kwargs):
                        erased = accuracy(model, data)
                    random_drops = []
                    for placebo in placebos:
                        with ablate(model, placebo, mode, **hook_kwargs):
                            random_drops.append(100 * (base[name] - accuracy(model, data)))
                else:
                    erased, random_drops = base[name], [0.0]
                mean, half = mean_ci(random_drops)
                rows.append(
                    {
                        "located": located,
                        "sigma": sigma,
                        "neurons": len(mask),
                        "evaluated": name,
                        "base": 100 * base[name],
                        "erased": 100 * erased,
                        "drop": 100 * (base[name] - erased),
                        "random_drop": mean,
                        "random_ci95": half,
                    }
                )
    what = "erased (zeroed" if mode == "zero" else f"amplified (×{factor:g}"
    return Table(f"Accuracy with located neurons {what} at every position)", tuple(rows))


def overlap_matrix(masks: Mapping[str, NeuronMask]) -> Table:
    """Overlap and IoU between every pair of capabilities' neuron sets (CNL Fig. 4)."""
    rows = tuple(
        {"a": a, "b": b, "overlap": masks[a].overlap(masks[b]), "iou": masks[a].iou(masks[b])}
        for a in masks
        for b in masks
    )
    return Table("Overlap between capabilities' located neurons", rows)


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
) -> Table:
    """Fine-tune only the located neurons vs a random set vs all-but-located (poster Table 2).

    Protocol (chosen for a model that already solves its tasks): every MLP weight matrix is
    degraded by Gaussian noise (``noise`` times its standard deviation, seeded), then each
    set of neurons is fine-tuned alone on ``train`` (:func:`finetune_neurons`, Adam, ``lr``)
    and ``test`` accuracy is read after each number of ``epochs``. The located set has to
    repair a capability it was found for; the random set has the same size in every layer;
    all-but-located has ~50x more parameters. The model's weights are restored at the end.

    Returns:
        One row per (neuron set, epochs) with the accuracy, plus the degraded start (epochs 0).
    """
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sets = {"located": mask, "random": mask.random_like(seed=seed), "all but located": ~mask}
    rows = []
    try:
        _degrade(model, noise, seed)
        degraded = {k: v.detach().clone() for k, v in model.state_dict().items()}
        start = 100 * accuracy(model, test)
        for label, neurons in sets.items():
            model.load_state_dict(degraded)
            rows.append({"neurons": label, "count": len(neurons), "epochs": 0, "accuracy": start})
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
                    {
                        "neurons": label,
                        "count": len(neurons),
                        "epochs": target,
                        "accuracy": 100 * accuracy(model, test),
                    }
                )
    finally:
        model.load_state_dict(original)
    return Table(
        f"Enhancement: fine-tuning only some neurons of a degraded model ({test.name or 'test'})",
        tuple(rows),
    )
