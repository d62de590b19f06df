"""Capability-localization experiments (Huang et al., ICLR 2025), with random controls.

- [`split_overlap`][tl_capability.experiments.overlap.split_overlap] (poster Table 1): locate a
  capability's neurons on two disjoint halves of its data and compare the two sets (overlap, IoU,
  fraction of neurons), for each σ.
- [`overlap_matrix`][tl_capability.experiments.overlap.overlap_matrix]: overlap and IoU between
  every pair of capabilities' sets.
- The erase and amplify matrices (Table 3, Fig. 4) are in
  [`tl_capability.experiments.erase`][tl_capability.experiments.erase], enhancement (Table 2) in
  [`tl_capability.experiments.enhancement`][tl_capability.experiments.enhancement], and all of
  them that need no training, in one result, in
  [`tl_capability.experiments.suite`][tl_capability.experiments.suite].

Every σ-dependent number is reported for each σ given, so they can be drawn as curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tl_capability.attribution import NeuronScores, attribute
from tl_capability.data import CapabilityDataset
from tl_capability.masks import NeuronMask, select
from tl_capability.tables import Row, Table

SIGMAS = (2.0, 3.0, 6.0, 12.0)


@dataclass(frozen=True)
class SplitOverlapRow(Row):
    """The sets located on two halves of one capability's data, at one σ.

    Attributes:
        capability: The capability's name.
        sigma: σ of the selection rule.
        neurons_a: Size of the set located on the first half.
        neurons_b: Size of the set located on the second half.
        fraction: Mean fraction (0-1) of all the model's neurons the two sets hold.
        overlap: The CNL overlap of the two sets
            ([`NeuronMask.overlap`][tl_capability.masks.NeuronMask.overlap]).
        iou: Their intersection over union.
    """

    capability: str
    sigma: float
    neurons_a: int
    neurons_b: int
    fraction: float
    overlap: float
    iou: float


@dataclass(frozen=True)
class SplitOverlapResult(Table):
    """What [`split_overlap`][tl_capability.experiments.overlap.split_overlap] measured.

    Attributes:
        rows: One row per (capability, σ).
        sigmas: The σ values, in the order given.
        seed: Seed of the split into halves.
    """

    rows: tuple[SplitOverlapRow, ...]
    sigmas: tuple[float, ...]
    seed: int


@dataclass(frozen=True)
class OverlapRow(Row):
    """Two capabilities' sets compared.

    Attributes:
        a: The first capability.
        b: The second capability.
        overlap: The CNL overlap of their sets.
        iou: Their intersection over union.
    """

    a: str
    b: str
    overlap: float
    iou: float


@dataclass(frozen=True)
class OverlapMatrixResult(Table):
    """What [`overlap_matrix`][tl_capability.experiments.overlap.overlap_matrix] measured.

    Attributes:
        rows: One row per ordered pair of capabilities (``a`` major).
        names: The capabilities, in order.
    """

    rows: tuple[OverlapRow, ...]
    names: tuple[str, ...]


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
) -> SplitOverlapResult:
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
                SplitOverlapRow(
                    capability=name,
                    sigma=sigma,
                    neurons_a=len(a),
                    neurons_b=len(b),
                    fraction=(a.fraction + b.fraction) / 2,
                    overlap=a.overlap(b),
                    iou=a.iou(b),
                )
            )
    return SplitOverlapResult(
        "Located neurons on two disjoint halves of the data", tuple(rows), tuple(sigmas), seed
    )


def overlap_matrix(masks: Mapping[str, NeuronMask]) -> OverlapMatrixResult:
    """Overlap and IoU between every pair of capabilities' neuron sets (CNL Fig. 4)."""
    rows = tuple(
        OverlapRow(a, b, masks[a].overlap(masks[b]), masks[a].iou(masks[b]))
        for a in masks
        for b in masks
    )
    return OverlapMatrixResult("Overlap between capabilities' located neurons", rows, tuple(masks))
