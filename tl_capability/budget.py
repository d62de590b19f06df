"""``locate``'s budget rule: the held-out split it checks on, and the smallest prefix of a
ranking that meets the goal.

[`holdout`][tl_capability.budget.holdout] splits every dataset into a part to rank on and a part
to check on; [`budget_mask`][tl_capability.budget.budget_mask] walks a ranking's prefixes from a
few neurons up, each size about √2 times the last, and keeps the first whose zero ablation drops
the target by ``target_drop`` points while no control drops by more than ``tolerance``.
The grid starts at 0.01 % of the model's neurons because on SmolLM2-135M the goal holds only
at a few hundredths of a per cent (docs/findings.md): ten sizes from ``max_fraction / 10`` up,
the rule before it, never tried them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability.curves import _prefix
from tl_capability.data import CapabilityDataset, tokenize
from tl_capability.evaluate import accuracy
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask, random_controls
from tl_capability.options import check_fraction as _check_share  # holdout: a parameter
from tl_capability.options import check_positive_int, check_range
from tl_capability.sites import model_name, neuron_site

__all__ = [
    "SMALLEST_FRACTION",
    "budget_figure",
    "budget_mask",
    "budget_sizes",
    "holdout",
    "warn_not_reached",
]

SMALLEST_FRACTION = 1e-4
"""The smallest size the budget rule tries, as a share of all neurons (at least one neuron)."""


def budget_sizes(available: int, n_neurons: int) -> list[int]:
    """The sizes the budget rule tries, ascending: from ``SMALLEST_FRACTION`` of
    ``n_neurons`` (at least 1), each about √2 times the last, up to ``available``."""
    sizes, k = [], max(1.0, SMALLEST_FRACTION * n_neurons)
    while round(k) < available:
        if not sizes or round(k) > sizes[-1]:
            sizes.append(round(k))
        k *= math.sqrt(2)
    return [*sizes, available]


def holdout(
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    check_fraction: float = 1 / 3,
    seed: int = 0,
) -> tuple[
    CapabilityDataset, dict[str, CapabilityDataset], CapabilityDataset, dict[str, CapabilityDataset]
]:
    """Splits target and controls into a part to rank on and a part to check the budget on.

    The learned mask is trained to keep the very control samples it sees, so a budget checked on
    them is optimistic (on the zoo's Llama model a set that spared its controls in-sample cost
    another capability 43 points on fresh samples). Each dataset is split at random
    (``seed``); a dataset of fewer than 4 samples is used whole for both.

    Returns:
        ``(fit_target, fit_controls, check_target, check_controls)``.

    Warns:
        UserWarning: When a split's check part repeats (prompt, answer) pairs of its ranking
            part (a dataset with repeated samples): the check is then not held out.

    Raises:
        ValueError: For a ``check_fraction`` outside ``[0, 1)``.
    """
    _check_share(check_fraction, "check_fraction", zero_ok=True, one_ok=False)

    def split(data: CapabilityDataset) -> tuple[CapabilityDataset, CapabilityDataset]:
        if check_fraction == 0 or len(data) < 4:
            return data, data
        fit, check = data.split(1 - check_fraction, seed=seed)
        seen = set(zip(fit.prompts, fit.answers, strict=True))
        repeated = sum(pair in seen for pair in zip(check.prompts, check.answers, strict=True))
        if repeated:
            distinct = len(set(zip(data.prompts, data.answers, strict=True)))
            warnings.warn(
                f"{repeated} of the {len(check)} check samples of {data.name!r} repeat samples "
                f"it is ranked on ({distinct} distinct of {len(data)}): the budget rule is then "
                "checked on samples already seen, and its 'reached' is optimistic. Remove the "
                "repeated samples",
                stacklevel=3,
            )
        return fit, check

    fit_target, check_target = split(target)
    parts = {name: split(data) for name, data in (controls or {}).items()}
    return (
        fit_target,
        {n: p[0] for n, p in parts.items()},
        check_target,
        {n: p[1] for n, p in parts.items()},
    )


def budget_mask(
    model: Any,
    order: Int[Tensor, "neuron 2"],
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset],
    *,
    target_drop: float,
    tolerance: float,
    progress: bool = True,
    selection: dict[str, Any] | None = None,
    n_random: int = 1,
    seed: int = 0,
) -> NeuronMask:
    """The shortest prefix of ``order`` that drops ``target`` by ``target_drop`` points while
    no control drops by more than ``tolerance``, measured on the data given.

    The sizes are [`budget_sizes`][tl_capability.budget.budget_sizes] up to ``len(order)``,
    tried from the smallest; the walk stops at the first that meets the goal, or after two sizes
    in a row whose worst control is over ``tolerance`` (larger sets only cost the controls more).
    When no size meets it, the one that hurts the target most within the tolerance (the
    smallest when none is within it); ``selection["reached"]`` says which, and
    ``selection["scan"]`` lists ``[size, own drop, worst control drop, random drop]`` for every
    size tried, the last the target's mean drop over ``n_random`` random sets of the prefix's
    per-layer shape (seeds ``seed + i``; NaN for 0), so that no one reads an own drop alone.
    """
    check_range(target_drop, "target_drop", 0.0, 100.0, low_open=True, unit=" points")
    check_range(tolerance, "tolerance", 0.0, 100.0, unit=" points")
    site = neuron_site(model)
    shape = (site.n_layers, site.d_mlp)
    samples = {"": tokenize(model, target)} | {n: tokenize(model, d) for n, d in controls.items()}

    def accuracies() -> dict[str, float]:
        return {n: accuracy(model, s, progress=False) for n, s in samples.items()}

    clean = accuracies()
    scan: list[list[float]] = []
    over = 0
    check_positive_int(n_random, "n_random", minimum=0)
    for k in tqdm(budget_sizes(len(order), site.n_neurons), disable=not progress, desc="budget"):
        prefix = _prefix(order, k, shape, "post", "budget")
        with ablate(model, prefix):
            acc = accuracies()
        drops = {n: 100 * (clean[n] - a) for n, a in acc.items()}
        worst = max((d for n, d in drops.items() if n), default=0.0)
        placebo = []
        for control in random_controls(prefix, n_random, seed=seed):
            with ablate(model, control):
                placebo.append(100 * (clean[""] - accuracy(model, samples[""], progress=False)))
        scan.append([k, drops[""], worst, sum(placebo) / n_random if placebo else math.nan])
        if drops[""] >= target_drop and worst <= tolerance:
            break
        over = over + 1 if worst > tolerance else 0
        if over == 2:
            break
    reached = scan[-1][1] >= target_drop and scan[-1][2] <= tolerance
    if not reached:
        fits = [row for row in scan if row[2] <= tolerance]
        best = max(fits, key=lambda row: row[1]) if fits else scan[0]
    k, own, worst, _ = best if not reached else scan[-1]
    info = {
        **(selection or {}),
        "neurons": int(k),
        "reached": reached,
        "target_drop": target_drop,
        "tolerance": tolerance,
        "own_drop": own,
        "worst_other_drop": worst,
        "clean_accuracy": clean[""],
        "scan": scan,
    }
    return NeuronMask(_prefix(order, int(k), shape, "post", "budget").tensor, model_name(model),
                      "post", info)  # fmt: skip


def budget_figure(mask: NeuronMask) -> Any:
    """The budget rule's walk, drawn: the target's drop, the worst control's and random sets'
    at every size tried (from ``mask.selection["scan"]``; log-scaled x in % of the neurons),
    the goal and the tolerance as lines, the size kept marked. The walk stops where the goal
    is met, so the curve ends there.

    Raises:
        ValueError: For a mask that no budget rule made (no ``scan`` in its selection).
    """
    from matplotlib.figure import Figure

    scan = mask.selection.get("scan")
    if not scan:
        raise ValueError("the mask has no budget scan: only locate's budget rule records one")
    sel, n = mask.selection, mask.tensor.numel()
    x = [100 * row[0] / n for row in scan]
    fig = Figure(figsize=(5.2, 3.6), layout="tight")
    ax = fig.subplots()
    ax.plot(x, [row[1] for row in scan], "o-", color="C0", label=sel.get("dataset") or "target")
    ax.plot(x, [row[2] for row in scan], "s--", color="C3", label="worst control")
    ax.plot(x, [row[3] for row in scan], ":", color="grey", label="random, same layers")
    ax.axhline(sel["target_drop"], color="C0", lw=0.8, alpha=0.5)
    ax.axhline(sel["tolerance"], color="C3", lw=0.8, alpha=0.5)
    ax.axvline(100 * len(mask) / n, color="black", lw=0.8, label=f"kept: {len(mask)} neurons")
    ax.set_xscale("log")
    ax.set(xlabel="% of neurons zeroed", ylabel="accuracy drop (points)", ylim=(-5, 105))
    goal = "goal reached" if sel["reached"] else "goal NOT reached"
    ax.set_title(f"locate's budget rule on the check samples ({goal})", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def warn_not_reached(name: str | None, sel: dict[str, Any], max_fraction: float) -> None:
    """Warns that a mask missed ``locate``'s goal, with advice that fits why (``sel``: its
    ``selection``, with the budget walk's ``scan``)."""
    # A mask that misses its goal is still returned (the rule's fallback), but quietly
    # handing it over would let a weak set pass for "the capability's neurons".
    clean, goal = 100 * sel["clean_accuracy"], sel["target_drop"]
    best = max(sel.get("scan") or [[0, sel["own_drop"]]], key=lambda row: row[1])
    if clean < goal:
        advice = (
            f"The model answers only {clean:.1f} % of the target's check samples, so no set "
            f"can drop it by {goal:g} points: give samples the model answers "
            "(check with accuracy(model, target)), or lower target_drop"
        )
    elif best[1] < goal / 2:
        advice = (
            f"No size tried dropped it by more than {best[1]:.0f} points, even where the "
            "controls fell: the capability may not live in MLP neurons (attention, say, as "
            "for copying tasks); budget_figure(mask) or erase_curve shows the curve"
        )
    else:
        advice = (
            "Try more samples, a larger max_fraction or, for learned masks, which vary with "
            "the seed, another seed (LocateConfig(seed=...))"
        )
    warnings.warn(
        f"locate({name!r}): the goal (target drop >= {goal:g} points, every "
        f"control <= {sel['tolerance']:g}) was not reached on the check samples within "
        f"{100 * max_fraction:g} % of the neurons; returning {sel['neurons']} neurons "
        f"(target drop {sel['own_drop']:.1f}, worst control {sel['worst_other_drop']:.1f}). "
        f"{advice} (mask.selection['reached'] records this)",
        stacklevel=3,
    )
