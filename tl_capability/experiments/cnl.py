"""Capability-localization experiments (Huang et al., ICLR 2025), with random controls.

- [`split_overlap`][tl_capability.experiments.cnl.split_overlap] (poster Table 1): locate a
capability's neurons on two disjoint halves of
  its data and compare the two sets (overlap, IoU, fraction of neurons), for each σ.
- [`erase`][tl_capability.experiments.cnl.erase] (Table 3, and the cross-capability matrix of Fig.
4): zero the neurons located
  for capability A and measure every capability B, against random sets with the same number of
  neurons in every layer (several seeds; mean and 95 % interval).
- [`amplify`][tl_capability.experiments.cnl.amplify] (the other half of Fig. 4): the same matrix
with the located neurons scaled
  by a factor instead of zeroed.
- [`overlap_matrix`][tl_capability.experiments.cnl.overlap_matrix]: overlap and IoU between every
pair of capabilities' sets. - [`enhancement`][tl_capability.experiments.cnl.enhancement] (Table 2):
repair a degraded model by fine-tuning only the located
  neurons, a random set of the same shape, or all the other neurons.
- [`localization`][tl_capability.experiments.cnl.localization]: all of the above that need no
training, for any model and datasets,
  in one [`LocalizationResult`][tl_capability.experiments.cnl.LocalizationResult] (what
  [`tl_capability.report.add_localization`][tl_capability.report.add_localization] renders).

Every σ-dependent number is reported for each σ given, so they can be drawn as curves. Random
sets come from [`random_controls`][tl_capability.masks.random_controls] (set ``i`` seeded
``seed + i``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tl_capability.attribution import NeuronScores, attribute
from tl_capability.data import CapabilityDataset
from tl_capability.edits import finetune_neurons
from tl_capability.evaluate import accuracy
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask, random_controls, select
from tl_capability.tables import Row, Table, mean_ci

SIGMAS = (2.0, 3.0, 6.0, 12.0)


# ---------------------------------------------------------------------- result types


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
    """What [`split_overlap`][tl_capability.experiments.cnl.split_overlap] measured.

    Attributes:
        rows: One row per (capability, σ).
        sigmas: The σ values, in the order given.
        seed: Seed of the split into halves.
    """

    rows: tuple[SplitOverlapRow, ...]
    sigmas: tuple[float, ...]
    seed: int


@dataclass(frozen=True)
class EraseRow(Row):
    """One cell of the erase matrix.

    Attributes:
        located: The capability whose located neurons were zeroed.
        sigma: σ of the selection rule.
        neurons: Size of the located set.
        evaluated: The capability measured.
        base: Accuracy with nothing erased (percent).
        erased: Accuracy with the located set erased (percent).
        drop: ``base - erased`` (points).
        random_drop: Mean drop over the random control sets.
        random_ci95: Half-width of that mean's 95 % interval
            ([`mean_ci`][tl_capability.tables.mean_ci]).
    """

    located: str
    sigma: float
    neurons: int
    evaluated: str
    base: float
    erased: float
    drop: float
    random_drop: float
    random_ci95: float


@dataclass(frozen=True)
class AmplifyRow(Row):
    """One cell of the amplify matrix.

    Attributes:
        located: The capability whose located neurons were scaled.
        sigma: σ of the selection rule.
        neurons: Size of the located set.
        evaluated: The capability measured.
        base: Accuracy with nothing changed (percent).
        amplified: Accuracy with the located set scaled by the factor (percent).
        drop: ``base - amplified`` (points; negative: a gain).
        random_drop: Mean drop over the random control sets, scaled alike.
        random_ci95: Half-width of that mean's 95 % interval
            ([`mean_ci`][tl_capability.tables.mean_ci]).
    """

    located: str
    sigma: float
    neurons: int
    evaluated: str
    base: float
    amplified: float
    drop: float
    random_drop: float
    random_ci95: float


class _Matrix:
    """Lookups shared by the erase and amplify matrices (rows with located / evaluated / σ)."""

    rows: tuple[Any, ...]

    @property
    def located(self) -> list[str]:
        """The located capabilities (matrix rows), in order."""
        return list(dict.fromkeys(r.located for r in self.rows))

    @property
    def evaluated(self) -> list[str]:
        """The evaluated capabilities (matrix columns), in order."""
        return list(dict.fromkeys(r.evaluated for r in self.rows))

    def at(self, sigma: float) -> tuple[Any, ...]:
        """The rows at one σ."""
        return tuple(r for r in self.rows if r.sigma == sigma)

    def cell(self, located: str, evaluated: str, sigma: float) -> Any:
        """The row of one (located, evaluated, σ) cell; ``KeyError`` when there is none."""
        for r in self.rows:
            if (r.located, r.evaluated, r.sigma) == (located, evaluated, sigma):
                return r
        raise KeyError((located, evaluated, sigma))


@dataclass(frozen=True)
class EraseResult(_Matrix, Table):
    """What [`erase`][tl_capability.experiments.cnl.erase] measured.

    Attributes:
        rows: One row per (located capability, σ, evaluated capability).
        sigmas: The σ values, in the order given.
        n_random: Random control sets per located set.
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).
        mode: ``"zero"``; ``"scale"`` only from the deprecated ``erase(mode="scale")``.
        factor: The scale factor of ``mode="scale"`` (else ``None``).
    """

    rows: tuple[EraseRow, ...]
    sigmas: tuple[float, ...]
    n_random: int
    seed: int
    mode: str = "zero"
    factor: float | None = None


@dataclass(frozen=True)
class AmplifyResult(_Matrix, Table):
    """What [`amplify`][tl_capability.experiments.cnl.amplify] measured.

    Attributes:
        rows: One row per (located capability, σ, evaluated capability).
        sigmas: The σ values, in the order given.
        n_random: Random control sets per located set.
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).
        factor: The scale factor applied to the located neurons.
    """

    rows: tuple[AmplifyRow, ...]
    sigmas: tuple[float, ...]
    n_random: int
    seed: int
    factor: float


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
    """What [`overlap_matrix`][tl_capability.experiments.cnl.overlap_matrix] measured.

    Attributes:
        rows: One row per ordered pair of capabilities (``a`` major).
        names: The capabilities, in order.
    """

    rows: tuple[OverlapRow, ...]
    names: tuple[str, ...]


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
    """What [`enhancement`][tl_capability.experiments.cnl.enhancement] measured.

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


@dataclass(frozen=True)
class LocalizationResult:
    """What [`localization`][tl_capability.experiments.cnl.localization] measured (rendered by
    [`tl_capability.report.add_localization`][tl_capability.report.add_localization]).

    Attributes:
        accuracy: Accuracy of every evaluated capability.
        scores: Attribution scores of every located capability.
        masks: Each located capability's set at the first σ.
        halves: [`split_overlap`][tl_capability.experiments.cnl.split_overlap] at every σ.
        erased: [`erase`][tl_capability.experiments.cnl.erase] at every σ.
        amplified: [`amplify`][tl_capability.experiments.cnl.amplify] at the first σ.
        overlaps: [`overlap_matrix`][tl_capability.experiments.cnl.overlap_matrix] of ``masks``.
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


# ---------------------------------------------------------------------- experiments


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


_Cell = tuple[str, float, int, str, float, float, float, float, float]


def _matrix(
    model: Any,
    locate_on: Mapping[str, CapabilityDataset],
    evaluate_on: Mapping[str, CapabilityDataset],
    scores: Mapping[str, NeuronScores],
    sigmas: Sequence[float],
    n_random: int,
    seed: int,
    mode: str,
    hook_kwargs: Mapping[str, Any],
    base: Mapping[str, float] | None = None,
) -> list[_Cell]:
    """Every (located, σ, evaluated) cell: located, σ, neurons, evaluated, base %, after %,
    drop, random mean drop and its 95 % half-width."""
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    if base is None:
        base = {name: accuracy(model, data) for name, data in evaluate_on.items()}
    cells = []
    for located in locate_on:
        for sigma in sigmas:
            mask = select(scores[located], sigma=sigma)
            controls = random_controls(mask, n_random, seed=seed)
            for name, data in evaluate_on.items():
                if len(mask):
                    with ablate(model, mask, mode, **hook_kwargs):
                        after = accuracy(model, data)
                    random_drops = []
                    for control in controls:
                        with ablate(model, control, mode, **hook_kwargs):
                            random_drops.append(100 * (base[name] - accuracy(model, data)))
                else:
                    after, random_drops = base[name], [0.0]
                mean, half = mean_ci(random_drops)
                cells.append(
                    (
                        located,
                        sigma,
                        len(mask),
                        name,
                        100 * base[name],
                        100 * after,
                        100 * (base[name] - after),
                        mean,
                        half,
                    )
                )
    return cells


def erase(
    model: Any,
    locate_on: Mapping[str, CapabilityDataset],
    evaluate_on: Mapping[str, CapabilityDataset],
    *,
    sigmas: Sequence[float] = SIGMAS,
    n_random: int = 5,
    seed: int = 0,
    scores: Mapping[str, NeuronScores] | None = None,
    mode: str = "zero",
    factor: float = 2.0,
    **attribute_kwargs: Any,
) -> EraseResult:
    """Accuracy of every capability with each capability's located neurons zeroed.

    Args:
        model: The model (restored after every measurement).
        locate_on: Data to locate each capability's neurons on.
        evaluate_on: Held-out data of every capability to measure (may include others).
        sigmas: σ values of the selection rule.
        n_random: Random placebo sets per located set (same count per layer; from
            [`random_controls`][tl_capability.masks.random_controls]).
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).
        scores: Precomputed attribution scores per capability (else computed here).
        mode: ``"zero"``. ``"scale"`` (amplify by ``factor``) is deprecated: use
            [`amplify`][tl_capability.experiments.cnl.amplify].
        factor: The scale factor of the deprecated ``mode="scale"``.

    Returns:
        One row per (located capability, σ, evaluated capability): the number of neurons,
        base and erased accuracy, the drop, and the random sets' mean drop with its 95 %
        interval. Drops are in accuracy points (0-100).

    Raises:
        ValueError: For ``n_random < 1`` or a mode other than ``"zero"`` / ``"scale"``.
    """
    if mode not in ("zero", "scale"):
        raise ValueError(f"mode must be 'zero' (or the deprecated 'scale'), got {mode!r}")
    if mode == "scale":
        warnings.warn(
            "erase(mode='scale') is deprecated and will be removed in the next version: use "
            "tl_capability.experiments.amplify(model, locate_on, evaluate_on, factor=...)",
            DeprecationWarning,
            stacklevel=2,
        )
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    if scores is None:
        scores = locate_scores(model, locate_on, **attribute_kwargs)
    hook_kwargs = {"factor": factor} if mode == "scale" else {}
    cells = _matrix(
        model, locate_on, evaluate_on, scores, sigmas, n_random, seed, mode, hook_kwargs
    )
    return _erase_result(cells, sigmas, n_random, seed, mode, factor)


def _erase_result(
    cells: list[_Cell],
    sigmas: Sequence[float],
    n_random: int,
    seed: int,
    mode: str = "zero",
    factor: float = 2.0,
) -> EraseResult:
    what = "erased (zeroed" if mode == "zero" else f"amplified (×{factor:g}"
    return EraseResult(
        f"Accuracy with located neurons {what} at every position)",
        tuple(EraseRow(*cell) for cell in cells),
        tuple(sigmas),
        n_random,
        seed,
        mode,
        factor if mode == "scale" else None,
    )


def amplify(
    model: Any,
    locate_on: Mapping[str, CapabilityDataset],
    evaluate_on: Mapping[str, CapabilityDataset],
    *,
    factor: float = 2.0,
    sigmas: Sequence[float] = SIGMAS,
    n_random: int = 5,
    seed: int = 0,
    scores: Mapping[str, NeuronScores] | None = None,
    **attribute_kwargs: Any,
) -> AmplifyResult:
    """Accuracy of every capability with each capability's located neurons scaled by
    ``factor`` at every position (the other half of the CNL paper's Fig. 4).

    Args:
        model: The model (restored after every measurement).
        locate_on: Data to locate each capability's neurons on.
        evaluate_on: Held-out data of every capability to measure (may include others).
        factor: What the located neurons' activations are multiplied by.
        sigmas: σ values of the selection rule.
        n_random: Random placebo sets per located set (same count per layer; from
            [`random_controls`][tl_capability.masks.random_controls]), scaled alike.
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).
        scores: Precomputed attribution scores per capability (else computed here).

    Returns:
        One row per (located capability, σ, evaluated capability): the number of neurons,
        base and amplified accuracy, the drop (negative: a gain), and the random sets' mean
        drop with its 95 % interval, in accuracy points.

    Raises:
        ValueError: For ``n_random < 1``.
    """
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    if scores is None:
        scores = locate_scores(model, locate_on, **attribute_kwargs)
    cells = _matrix(
        model, locate_on, evaluate_on, scores, sigmas, n_random, seed, "scale", {"factor": factor}
    )
    return _amplify_result(cells, sigmas, n_random, seed, factor)


def _amplify_result(
    cells: list[_Cell], sigmas: Sequence[float], n_random: int, seed: int, factor: float
) -> AmplifyResult:
    return AmplifyResult(
        f"Accuracy with located neurons amplified (×{factor:g} at every position)",
        tuple(AmplifyRow(*cell) for cell in cells),
        tuple(sigmas),
        n_random,
        seed,
        factor,
    )


def overlap_matrix(masks: Mapping[str, NeuronMask]) -> OverlapMatrixResult:
    """Overlap and IoU between every pair of capabilities' neuron sets (CNL Fig. 4)."""
    rows = tuple(
        OverlapRow(a, b, masks[a].overlap(masks[b]), masks[a].iou(masks[b]))
        for a in masks
        for b in masks
    )
    return OverlapMatrixResult("Overlap between capabilities' located neurons", rows, tuple(masks))


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


def localization(
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
    [`split_overlap`][tl_capability.experiments.cnl.split_overlap] at every σ;
    [`erase`][tl_capability.experiments.cnl.erase] with ``n_random`` random controls at every σ;
    [`amplify`][tl_capability.experiments.cnl.amplify] (×``factor``, one random control) at the
    first σ; and [`overlap_matrix`][tl_capability.experiments.cnl.overlap_matrix] of the sets. Each
    capability is attributed once (the erase and amplify matrices reuse the scores) and every base
    accuracy is measured once. Render it with
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
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
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
