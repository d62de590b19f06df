"""Every capability-localization experiment that needs no training, for any model and
datasets, in one [`LocalizationResult`][tl_capability.experiments.suite.LocalizationResult]
(what [`tl_capability.report.add_localization`][tl_capability.report.add_localization]
renders)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tl_capability.attribution import NeuronScores
from tl_capability.data import CapabilityDataset
from tl_capability.evaluate import accuracy
from tl_capability.experiments.erase import (
    AmplifyResult,
    EraseResult,
    _amplify_result,
    _erase_result,
    _matrix,
)
from tl_capability.experiments.overlap import (
    SIGMAS,
    OverlapMatrixResult,
    SplitOverlapResult,
    locate_scores,
    overlap_matrix,
    split_overlap,
)
from tl_capability.masks import NeuronMask, select
from tl_capability.options import check_positive_int
from tl_capability.tables import Row, Table


@dataclass(frozen=True)
class AccuracyRow(Row):
    """One capability's accuracy.

    Attributes:
        capability: The capability's name.
        accuracy: Exact-match accuracy, in percent.
    """

    capability: str
    accuracy: float


@dataclass(frozen=True)
class AccuracyResult(Table):
    """Accuracy of every evaluated capability (the first table of a localization report)."""

    rows: tuple[AccuracyRow, ...]


@dataclass(frozen=True)
class LocalizationResult:
    """What [`localization_suite`][tl_capability.experiments.suite.localization_suite] measured
    (rendered by
    [`tl_capability.report.add_localization`][tl_capability.report.add_localization]).

    Attributes:
        accuracy: Accuracy of every evaluated capability.
        scores: Attribution scores of every located capability.
        masks: Each located capability's set at the first σ.
        halves: [`split_overlap`][tl_capability.experiments.overlap.split_overlap] at every σ.
        erased: [`erase`][tl_capability.experiments.erase.erase] at every σ.
        amplified: [`amplify`][tl_capability.experiments.erase.amplify] at the first σ.
        overlaps: [`overlap_matrix`][tl_capability.experiments.overlap.overlap_matrix] of ``masks``.
    """

    accuracy: AccuracyResult
    scores: dict[str, NeuronScores] = field(compare=False)
    masks: dict[str, NeuronMask]
    halves: SplitOverlapResult
    erased: EraseResult
    amplified: AmplifyResult
    overlaps: OverlapMatrixResult

    @property
    def sigma(self) -> float:
        """The first σ: the one of ``masks``, the neuron map and the matrices' figures."""
        return self.erased.sigmas[0]


def localization_suite(
    model: Any,
    locate_on: Mapping[str, CapabilityDataset],
    evaluate_on: Mapping[str, CapabilityDataset],
    *,
    sigmas: Sequence[float] = SIGMAS,
    n_random: int = 3,
    seed: int = 0,
    factor: float = 2.0,
    stage: Callable[[str], None] = lambda name: None,
    **attribute_kwargs: Any,
) -> LocalizationResult:
    """The capability-localization experiments for any model and datasets, in one result.

    Accuracy per capability; each capability's scores and its set at the first σ;
    [`split_overlap`][tl_capability.experiments.overlap.split_overlap] at every σ;
    [`erase`][tl_capability.experiments.erase.erase] with ``n_random`` random controls at every σ;
    [`amplify`][tl_capability.experiments.erase.amplify] (×``factor``, one random control) at the
    first σ; and [`overlap_matrix`][tl_capability.experiments.overlap.overlap_matrix] of the sets.
    Each capability is attributed once (the erase and amplify matrices reuse the scores) and every
    base accuracy is measured once. Render it with
    [`tl_capability.report.add_localization`][tl_capability.report.add_localization].

    Args:
        model: The model (restored after every measurement).
        locate_on: Data to locate each capability's neurons on.
        evaluate_on: Held-out data of every capability to measure.
        sigmas: σ values of the selection rule (the first one for the sets and the matrices'
            figures).
        n_random: Random control sets per located set in the erase matrix.
        seed: Seed of the random controls and of the split into halves.
        factor: The amplify factor.
        stage: Called with each step's name as it starts (``"accuracy"``, ``"locate"``,
            ``"split overlap"``, ``"erase"``, ``"amplify"``), for progress bars.
        **attribute_kwargs: Passed to [`attribute`][tl_capability.attribution.attribute].
    """
    sigmas = tuple(sigmas)
    if not sigmas:
        raise ValueError("sigmas is empty")
    check_positive_int(n_random, "n_random")
    stage("accuracy")
    base = {name: accuracy(model, data) for name, data in evaluate_on.items()}
    acc = AccuracyResult(
        "Accuracy (exact match)", tuple(AccuracyRow(n, 100 * a) for n, a in base.items())
    )
    stage("locate")
    scores = locate_scores(model, locate_on, **attribute_kwargs)
    masks = {n: select(scores[n], sigma=sigmas[0]) for n in locate_on}
    stage("split overlap")
    halves = split_overlap(model, locate_on, sigmas=sigmas, seed=seed, **attribute_kwargs)
    stage("erase")
    cells = _matrix(model, locate_on, evaluate_on, scores, sigmas, n_random, seed, "zero", {}, base)
    erased = _erase_result(cells, sigmas, n_random, seed)
    stage("amplify")
    cells = _matrix(
        model, locate_on, evaluate_on, scores, sigmas[:1], 1, seed, "scale",
        {"factor": factor}, base,
    )  # fmt: skip
    amplified = _amplify_result(cells, sigmas[:1], 1, seed, factor)
    return LocalizationResult(acc, scores, masks, halves, erased, amplified, overlap_matrix(masks))
