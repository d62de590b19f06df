"""Decoupling of knowledge neurons (the CNL poster, Fig. 2).

[`decoupling`][tl_capability.experiments.kn_decoupling.decoupling]: the coincidence rate between
the knowledge neurons of paired samples that share their main part and differ in a replaceable
part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tl_capability.attribution import attribute
from tl_capability.data import CapabilityDataset
from tl_capability.masks import coarse_masks
from tl_capability.tables import Row, Table


@dataclass(frozen=True)
class DecouplingRow(Row):
    """One coincidence rate.

    Attributes:
        rate: ``"C(1,2)"``, ``"C(1,1)"`` or ``"C(2,2)"``.
        value: The rate, normalised by all neurons (as in the poster).
        neurons: The intersection's size (mean over pairs for ``C(1,2)``).
        relative: The intersection relative to the mean size of the sets involved.
    """

    rate: str
    value: float
    neurons: float
    relative: float


@dataclass(frozen=True)
class DecouplingResult(Table):
    """What [`decoupling`][tl_capability.experiments.kn_decoupling.decoupling] measured: rows
    ``C(1,2)``, ``C(1,1)``, ``C(2,2)``."""

    rows: tuple[DecouplingRow, ...]


def decoupling(
    model: Any,
    first: CapabilityDataset,
    second: CapabilityDataset,
    *,
    fraction_of_max: float = 0.2,
    **attribute_kwargs: Any,
) -> DecouplingResult:
    """Coincidence rates of knowledge neurons between paired samples (CNL poster, Fig. 2).

    ``first[k]`` and ``second[k]`` share their main part and differ in a replaceable part.
    Every sample's coarse knowledge neurons ``A(x)`` (``s > t · max s``) are located, then, with
    ``L · J`` the number of neurons, as in the poster:

    - ``C(1,2) = 1/(n·L·J) Σ_k |A(x_k¹) ∩ A(x_k²)|`` (paired samples),
    - ``C(t,t) = 1/(L·J) |∩_k A(x_kᵗ)|`` (everything the samples of one group share).

    Because the poster's normalisation by all neurons makes the rates depend on how many
    neurons the coarse rule keeps, each row also gives the rate relative to the mean set size.

    Returns:
        Rows ``C(1,2)``, ``C(1,1)``, ``C(2,2)``: the rate, the intersection size, and the rate
        relative to the mean size of the sets involved.
    """
    if len(first) != len(second) or not len(first):
        raise ValueError(
            f"decoupling needs two aligned non-empty datasets, got {len(first)} "
            f"and {len(second)} samples"
        )
    attribute_kwargs.setdefault("progress", False)
    a = [
        m.tensor
        for m in coarse_masks(
            attribute(model, first, per_sample=True, **attribute_kwargs), fraction_of_max
        )
    ]
    b = [
        m.tensor
        for m in coarse_masks(
            attribute(model, second, per_sample=True, **attribute_kwargs), fraction_of_max
        )
    ]
    total = a[0].numel()
    size = sum(float(m.sum()) for m in a + b) / (len(a) + len(b))
    paired = sum(float((x & y).sum()) for x, y in zip(a, b, strict=True)) / len(a)
    rows = [DecouplingRow("C(1,2)", paired / total, paired, paired / max(size, 1e-9))]
    for label, group in (("C(1,1)", a), ("C(2,2)", b)):
        shared = float(torch.stack(group).all(0).sum())
        own = sum(float(m.sum()) for m in group) / len(group)
        rows.append(DecouplingRow(label, shared / total, shared, shared / max(own, 1e-9)))
    return DecouplingResult("Decoupling: coincidence rates of knowledge neurons", tuple(rows))
