"""The erase and amplify matrices (Huang et al., ICLR 2025: Table 3 and Fig. 4), with random
controls.

- [`erase`][tl_capability.experiments.erase.erase]: zero the neurons located for capability A
  and measure every capability B, against random sets with the same number of neurons in every
  layer (several seeds; mean and 95 % interval).
- [`amplify`][tl_capability.experiments.erase.amplify]: the same matrix with the located neurons
  scaled by a factor instead of zeroed (the other half of Fig. 4).

Random sets come from [`random_controls`][tl_capability.masks.random_controls] (set ``i`` seeded
``seed + i``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tl_capability.attribution import NeuronScores
from tl_capability.data import CapabilityDataset
from tl_capability.evaluate import accuracy
from tl_capability.experiments.overlap import SIGMAS, locate_scores
from tl_capability.interventions import ablate
from tl_capability.masks import random_controls, select
from tl_capability.options import check_positive_int
from tl_capability.tables import Row, Table, mean_ci


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
    """What [`erase`][tl_capability.experiments.erase.erase] measured.

    Attributes:
        rows: One row per (located capability, σ, evaluated capability).
        sigmas: The σ values, in the order given.
        n_random: Random control sets per located set.
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).
        mode: ``"zero"``: the located neurons are zeroed (scaling them is
            [`amplify`][tl_capability.experiments.erase.amplify]).
    """

    rows: tuple[EraseRow, ...]
    sigmas: tuple[float, ...]
    n_random: int
    seed: int
    mode: str = "zero"

    def not_localized(self, sigma: float, margin: float = 10.0) -> list[str]:
        """The located capabilities whose set drops every other capability by at least its own
        drop less ``margin`` points, and by more than random sets of its shape do: neurons the
        model needs for everything, not for one capability (the σ rule's sets on SmolLM2-135M
        drop every task to 0). An own drop is localization only beside these.
        """
        flagged = []
        for row in self.at(sigma):
            if row.located != row.evaluated:
                continue
            others = [
                r for r in self.at(sigma) if r.located == row.located and r.evaluated != r.located
            ]
            if breaks_everything(row.drop, [(r.drop, r.random_drop) for r in others], margin):
                flagged.append(row.located)
        return flagged


def breaks_everything(
    own: float, others: Sequence[tuple[float, float]], margin: float = 10.0
) -> bool:
    """Whether a set that drops its own capability by ``own`` points drops every other one
    (``(drop, random sets' drop)`` pairs) by at least ``own − margin`` and by more than random
    sets of its shape do, plus ``margin``: the rule of
    [`EraseResult.not_localized`][tl_capability.experiments.erase.EraseResult.not_localized]."""
    return (
        bool(others)
        and own > 0
        and all(d >= own - margin and d > rand + margin for d, rand in others)
    )


@dataclass(frozen=True)
class AmplifyResult(_Matrix, Table):
    """What [`amplify`][tl_capability.experiments.erase.amplify] measured.

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
    check_positive_int(n_random, "n_random")
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

    Returns:
        One row per (located capability, σ, evaluated capability): the number of neurons,
        base and erased accuracy, the drop, and the random sets' mean drop with its 95 %
        interval. Drops are in accuracy points (0-100).

    Raises:
        ValueError: For ``n_random < 1``.
    """
    check_positive_int(n_random, "n_random")
    if scores is None:
        scores = locate_scores(model, locate_on, **attribute_kwargs)
    cells = _matrix(model, locate_on, evaluate_on, scores, sigmas, n_random, seed, "zero", {})
    return _erase_result(cells, sigmas, n_random, seed)


def _erase_result(
    cells: list[_Cell],
    sigmas: Sequence[float],
    n_random: int,
    seed: int,
) -> EraseResult:
    return EraseResult(
        "Accuracy with located neurons erased (zeroed at every position)",
        tuple(EraseRow(*cell) for cell in cells),
        tuple(sigmas),
        n_random,
        seed,
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
    check_positive_int(n_random, "n_random")
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
