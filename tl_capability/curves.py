"""Erase curves: what erasing the top-``k`` neurons of a ranking costs, as a function of ``k``.

Capability localization (Huang et al., ICLR 2025) erases one located set per σ and reads the
drop of its own capability and of the others
([`tl_capability.experiments.erase`][tl_capability.experiments.erase.erase]). An erase curve
asks the same question at every budget: [`erase_curve`][tl_capability.curves.erase_curve]
zeroes the ``k`` best-ranked neurons for a grid of ``k`` and measures, at each, the own
capability's drop, every other capability's drop, and the own drop for random sets with the same
number of neurons in every layer (several seeds; mean and Student-t 95 % interval). Any method
gives a ranking (scores, or an explicit order for iterative or learned methods), so methods
compare at equal size.
[`EraseCurve.budget`][tl_capability.curves.EraseCurve.budget] picks the smallest set that reaches a
target own drop while keeping the worst other drop under a tolerance.

Drops are in accuracy points (0-100): baseline minus erased accuracy, times 100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability.attribution import neuron_order
from tl_capability.data import CapabilityDataset, tokenize
from tl_capability.evaluate import accuracy
from tl_capability.interventions import ablate, mask_hooks
from tl_capability.masks import NeuronMask, random_controls
from tl_capability.options import check_positive_int
from tl_capability.sites import neuron_site, require_eval
from tl_capability.tables import Table, mean_ci

#: Default grid of sizes, as fractions of all the model's neurons.
FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.10)
"""The default sizes of an erase curve, as fractions of the model's neurons."""


@dataclass(frozen=True, eq=False)
class EraseCurve:
    """Accuracy drops against the number of neurons erased, for one ranking and capability.

    Attributes:
        name: The ranking's label (the attribution method, by default).
        target: The capability the ranking was made for.
        sizes: Numbers of neurons erased, ascending.
        shape: ``(n_layers, d_mlp)`` of the model.
        baseline: Accuracy (0-1) of the target and of every other capability, nothing erased.
        own_drop: The target's drop at each size.
        other_drops: Each other capability's drop at each size.
        random_drop: The target's mean drop over random sets of the same per-layer shape.
        random_ci: Half-width of that mean's 95 % interval (Student t; 0 for one seed).
        random_runs: ``random_runs[i]`` lists the drop of every random seed at ``sizes[i]``.
        order: The erase order used, ``(layer, index)`` per row: size ``k`` erases the first
            ``k`` rows.
        site: The neuron site (``"post"`` or ``"pre"``).
    """

    name: str
    target: str
    sizes: list[int]
    shape: tuple[int, int]
    baseline: dict[str, float]
    own_drop: list[float]
    other_drops: dict[str, list[float]]
    random_drop: list[float]
    random_ci: list[float]
    random_runs: list[list[float]]
    order: Int[Tensor, "neuron 2"]
    site: str = "post"

    @property
    def n_neurons(self) -> int:
        """Number of neurons of the model (all layers)."""
        return self.shape[0] * self.shape[1]

    @property
    def fractions(self) -> list[float]:
        """Each size as a fraction of all the model's neurons."""
        return [k / self.n_neurons for k in self.sizes]

    @property
    def worst_other(self) -> list[float]:
        """The largest other-capability drop at each size (0.0 without other capabilities)."""
        return [
            max((d[i] for d in self.other_drops.values()), default=0.0)
            for i in range(len(self.sizes))
        ]

    def mask_at(self, k: int) -> NeuronMask:
        """The set of the first ``k`` neurons of the order (any ``k`` up to its length)."""
        return _prefix(self.order, k, self.shape, self.site, self.name)

    def budget(self, target_drop: float, tolerance: float = 10.0) -> int | None:
        """The smallest size whose own drop is at least ``target_drop`` points while the worst
        other drop is at most ``tolerance`` points; ``None`` when no size qualifies."""
        worst = self.worst_other
        for i, k in enumerate(self.sizes):
            if self.own_drop[i] >= target_drop and worst[i] <= tolerance:
                return k
        return None

    def to_table(self) -> Table:
        """One row per size: fraction (%), own drop, random mean and interval, other drops."""
        worst = self.worst_other
        rows = []
        for i, k in enumerate(self.sizes):
            row = {
                "neurons": k,
                "percent": 100 * k / self.n_neurons,
                "own_drop": self.own_drop[i],
                "random_drop": self.random_drop[i],
                "random_ci95": self.random_ci[i],
                "worst_other": worst[i],
            }
            rows.append(row | {f"drop_{n}": d[i] for n, d in self.other_drops.items()})
        return Table(f"Erase curve of {self.target} ({self.name})", tuple(rows))

    def to_frame(self) -> Any:
        """The rows of [`to_table`][tl_capability.curves.EraseCurve.to_table] as a
        ``pandas.DataFrame``."""
        return self.to_table().to_frame()

    def to_markdown(self) -> str:
        """The rows of [`to_table`][tl_capability.curves.EraseCurve.to_table] as a markdown
        table."""
        return self.to_table().to_markdown()


def erase_order(ranking: Any, n_layers: int, d_mlp: int) -> Int[Tensor, "neuron 2"]:
    """The ``(layer, index)`` erase order of a ranking.

    Args:
        ranking: Float ``[layer, d_mlp]`` scores or
            [`NeuronScores`][tl_capability.attribution.NeuronScores] (highest first, ties by flat
            index), or an integer ``[n, 2]`` tensor of ``(layer, index)`` pairs already in erase
            order.
        n_layers: The model's layers.
        d_mlp: The model's neurons per layer.

    Raises:
        ValueError: For a shape that does not fit the model, non-finite scores, or an explicit
            order with out-of-range or repeated neurons.
    """
    values = ranking if isinstance(ranking, Tensor) else getattr(ranking, "values", None)
    if not isinstance(values, Tensor):
        raise ValueError(f"a ranking is a tensor or NeuronScores, got {type(ranking).__name__}")
    values = values.detach().cpu()
    if values.is_floating_point():
        if tuple(values.shape) != (n_layers, d_mlp):
            raise ValueError(
                f"scores of shape {tuple(values.shape)} for a model of {n_layers} layers x "
                f"{d_mlp} neurons"
            )
        if not torch.isfinite(values).all():
            raise ValueError("the scores contain NaN or infinite values")
        return neuron_order(values)
    if values.dtype == torch.bool or values.dim() != 2 or values.shape[1] != 2:
        raise ValueError(
            f"an explicit order is an integer [n, 2] tensor, got {values.dtype} "
            f"{tuple(values.shape)}"
        )
    if len(values) == 0:
        raise ValueError("the explicit order is empty")
    order = values.long()
    mask = NeuronMask.from_indices(order, n_layers, d_mlp)  # checks the range
    if len(mask) != len(order):
        raise ValueError("the explicit order lists a neuron more than once")
    return order


def _prefix(
    order: Int[Tensor, "neuron 2"], k: int, shape: tuple[int, int], site: str, ranking: str
) -> NeuronMask:
    """The set of the first ``k`` neurons of ``order``."""
    if not 0 <= k <= len(order):
        raise ValueError(f"k must be in 0..{len(order)}, got {k}")
    selection = {"rule": "erase_order", "ranking": ranking, "k": k}
    return NeuronMask.from_indices(order[:k], *shape, site=site, selection=selection)


def _sizes(sizes: Sequence[int] | None, available: int, n_neurons: int) -> list[int]:
    """The sizes to measure, ascending and distinct, each in ``1..available``."""
    if sizes is None:
        grid = {max(1, round(f * n_neurons)) for f in FRACTIONS}
        return sorted(k for k in grid if k <= available) or [available]
    if isinstance(sizes, (str, bytes, Mapping)) or not hasattr(sizes, "__len__"):
        raise ValueError(f"sizes must be a sequence of positive integers, got {sizes!r}")
    if len(sizes) == 0:
        raise ValueError("sizes is empty")
    where = "of the model" if available == n_neurons else "in the explicit order"
    out = set()
    for k in sizes:
        check_positive_int(k, "every size")
        if int(k) > available:
            raise ValueError(f"size {k} is more than the {available} neurons {where}")
        out.add(int(k))
    return sorted(out)


def erase_curve(
    model: Any,
    ranking: Any,
    target: CapabilityDataset,
    others: Mapping[str, CapabilityDataset] | None = None,
    *,
    sizes: Sequence[int] | None = None,
    n_random: int = 3,
    seed: int = 0,
    mode: str = "zero",
    batch_size: int = 64,
    progress: bool = True,
    name: str | None = None,
    **hook_kwargs: Any,
) -> EraseCurve:
    """Erases the top-``k`` neurons of ``ranking`` for each ``k`` and measures every capability.

    Example:
        >>> curve = erase_curve(model, scores, data["addition"], data)
        >>> curve.budget(target_drop=50, tolerance=5)   # smallest set that does the job

    Args:
        model: A TransformerLens model in eval mode (restored after every measurement, also
            after an exception).
        ranking: What to erase first: ``[layer, d_mlp]`` float scores or NeuronScores
            (highest first, ties by flat index), or an integer ``[n, 2]`` tensor of
            ``(layer, index)`` pairs in erase order (iterative or learned methods).
        target: The capability the ranking was made for (its name labels the curve).
        others: Other capabilities to measure at every size; an entry that is ``target``
            itself is skipped.
        sizes: Numbers of neurons to erase; by default 0.25 % to 10 % of all neurons
            ([`FRACTIONS`][tl_capability.curves.FRACTIONS], rounded, at least 1).
        n_random: Random sets per size with the same count per layer
            ([`random_controls`][tl_capability.masks.random_controls], seeds ``seed + i``),
            measured on the target; 0 skips them (the random fields are then NaN).
        seed: Seed of the random sets.
        mode: The intervention (``"zero"`` erases); ``hook_kwargs`` go to
            [`ablate`][tl_capability.interventions.ablate] (``factor``, ``means``, ...).
        batch_size: Samples per forward pass.
        progress: Show a progress bar over sizes.
        name: The curve's label (default: the scores' method, else ``"ranking"``).

    Raises:
        ValueError: For a model in training mode, a ranking that does not fit the model,
            NaN scores, a size above the number of ranked neurons, a negative ``n_random``, an
            other capability named like the target, or a sample longer than the context.
    """
    require_eval(model)
    site = getattr(ranking, "params", {}).get("site") or "post"
    resolved = neuron_site(model, site, check_width=False)
    order = erase_order(ranking, resolved.n_layers, resolved.d_mlp)
    sizes = _sizes(sizes, len(order), resolved.n_neurons)
    check_positive_int(n_random, "n_random", minimum=0)
    mask_hooks(NeuronMask.empty(resolved.n_layers, resolved.d_mlp, site=site), mode, **hook_kwargs)
    own = target.name or "target"
    others = {k: v for k, v in (others or {}).items() if v is not target}
    if own in others:
        raise ValueError(f"another dataset in others is also named {own!r}")
    # Tokenize once: every size re-measures the same samples.
    samples = {n: tokenize(model, d) for n, d in {own: target, **others}.items()}

    def acc(data_name: str) -> float:
        return accuracy(model, samples[data_name], batch_size=batch_size, progress=False)

    baseline = {n: acc(n) for n in samples}

    def drop(data_name: str, mask: NeuronMask) -> float:
        with ablate(model, mask, mode, **hook_kwargs):
            return 100 * (baseline[data_name] - acc(data_name))

    label = name or getattr(ranking, "method", None) or "ranking"
    shape = (resolved.n_layers, resolved.d_mlp)
    own_drop, random_drop, random_ci, random_runs = [], [], [], []
    other_drops: dict[str, list[float]] = {n: [] for n in others}
    for k in tqdm(sizes, disable=not progress, desc=f"erase curve {label} / {own}"):
        mask = _prefix(order, k, shape, site, label)
        own_drop.append(drop(own, mask))
        for other in others:
            other_drops[other].append(drop(other, mask))
        runs = [drop(own, control) for control in random_controls(mask, n_random, seed=seed)]
        mean, half = mean_ci(runs) if runs else (float("nan"), float("nan"))
        random_runs.append(runs)
        random_drop.append(mean)
        random_ci.append(half)
    return EraseCurve(
        label, own, sizes, shape, baseline, own_drop, other_drops,
        random_drop, random_ci, random_runs, order, site,
    )  # fmt: skip
