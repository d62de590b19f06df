"""One entry point for localization: which neurons must go for a capability to go.

[`locate`][tl_capability.localization.locate] returns the neurons whose zero-ablation at every
position removes a capability (the erasure of capability localization, Huang et al., ICLR 2025)
while sparing others. Its methods, from the papers' literal pipeline to the ones that held on models
of several training regimes (``docs/findings.md`` has the measurements,
``benchmarks/localization.py`` makes them):

- ``"answer"``: the papers' pipeline, [`attribute`][tl_capability.attribution.attribute] (IG of
  ``P(answer)`` at the answer positions) then [`select`][tl_capability.masks.select] (σ rule). It
  has no budget rule; the size is what σ gives.
- ``"all"``: IG of ``log P(answer)`` with the neuron scaled at every position at once
  ([`attribute`][tl_capability.attribution.attribute]), ranked by score.
- ``"contrastive"``: the same, minus the controls' scores
  ([`contrastive_scores`][tl_capability.localization.contrastive_scores]): a neuron that the
  controls need as much as the target is not the target's.
- ``"iterative"``: erasure has backup neurons. Erase a chunk of the contrastive ranking,
  re-attribute target and controls with it erased, repeat
  ([`iterative_ranking`][tl_capability.localization.iterative_ranking]).
- ``"learned"`` (the default): a removal mask trained to suppress the target and keep the controls
  ([`learn_mask`][tl_capability.learned.learn_mask]; Chang et al., NAACL 2024; Bayazit et al., EMNLP
  2024). On all three zoo models it erased more with fewer neurons and spared the controls better
  than every ranking by scores.

Every ranked method ranks on two thirds of the data given and then takes the smallest prefix
of its ranking that drops the target's accuracy by ``target_drop`` points while no control
drops by more than ``tolerance`` ([`budget`][tl_capability.curves.EraseCurve.budget]), measured on
the held-out third ([`holdout`][tl_capability.localization.holdout]), within ``max_fraction`` of all
neurons.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability.attribution import NeuronScores, attribute, neuron_order
from tl_capability.curves import erase_curve
from tl_capability.data import CapabilityDataset
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask, select
from tl_capability.options import LocateMethod, Reduce, check_option
from tl_capability.sites import model_name, neuron_site, require_eval

LOCATE_METHODS: tuple[str, ...] = get_args(LocateMethod)
DEFAULT_LOCATE_METHOD: LocateMethod = "learned"
LEARNED_MIN_SAMPLES = 150


def _values(scores: NeuronScores | Tensor) -> Float[Tensor, "layer d_mlp"]:
    values = scores.values if isinstance(scores, NeuronScores) else scores
    if not isinstance(values, Tensor) or values.dim() != 2:
        raise ValueError("scores must be NeuronScores or a [layer, d_mlp] tensor")
    if not torch.isfinite(values).all():
        raise ValueError("scores contain NaN or infinite values")
    return values.detach().float().cpu()


def contrastive_scores(
    target: NeuronScores | Tensor,
    controls: Mapping[str, NeuronScores | Tensor],
    *,
    reduce: Reduce = "max",
    weight: float = 1.0,
) -> Float[Tensor, "layer d_mlp"]:
    """The target's scores minus what the controls need of each neuron.

    ``c_j = s_j − weight · R_c max(s_cj, 0)`` with ``R`` the maximum (``reduce="max"``: a neuron
    any single control relies on is penalised by that control's need) or the mean over controls.
    Only positive control scores count: a neuron whose removal would *help* a control is no
    reason to keep it.

    Raises:
        ValueError: For no controls, scores of different shapes, or non-finite scores.
    """
    if not controls:
        raise ValueError("contrastive scores need at least one control")
    check_option(reduce, Reduce, "reduce")
    s = _values(target)
    others = [_values(c) for c in controls.values()]
    if any(o.shape != s.shape for o in others):
        raise ValueError("target and control scores must have the same [layer, d_mlp] shape")
    need = torch.stack(others).clamp(min=0)
    need = need.max(0).values if reduce == "max" else need.mean(0)
    return s - weight * need


def _check_datasets(
    target: CapabilityDataset, controls: Mapping[str, CapabilityDataset] | None
) -> dict[str, CapabilityDataset]:
    if not isinstance(target, CapabilityDataset):
        raise TypeError(f"target must be a CapabilityDataset, got {type(target).__name__}")
    if len(target) == 0:
        raise ValueError("the target dataset is empty")
    if controls is None:
        return {}
    if not isinstance(controls, Mapping):
        raise TypeError("controls must map names to CapabilityDatasets")
    if not controls:
        raise ValueError("controls is empty: pass None to locate without controls")
    key = (tuple(target.prompts), tuple(target.answers))
    for name, data in controls.items():
        if not isinstance(data, CapabilityDataset) or len(data) == 0:
            raise ValueError(f"control {name!r} must be a non-empty CapabilityDataset")
        if data is target or (tuple(data.prompts), tuple(data.answers)) == key:
            raise ValueError(f"control {name!r} is the target itself")
    return dict(controls)


def _all_scores(
    model: Any, data: CapabilityDataset, steps: int, batch_size: int | None
) -> Float[Tensor, "layer d_mlp"]:
    return attribute(
        model,
        data,
        "ig",
        steps=steps,
        metric="logprob",
        positions="all",
        batch_size=batch_size,
        progress=False,
    ).values


def iterative_ranking(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None = None,
    *,
    chunk: int,
    rounds: int,
    steps: int = 8,
    reduce: Reduce = "max",
    weight: float = 1.0,
    batch_size: int | None = None,
    progress: bool = True,
) -> Int[Tensor, "neuron 2"]:
    """Erase ``chunk`` neurons at a time, re-attributing with what is erased so far.

    Each round scores target and controls with all-position IG of ``log P`` while the neurons
    chosen so far are zeroed at every position, takes the ``chunk`` best not yet chosen by
    [`contrastive_scores`][tl_capability.localization.contrastive_scores] (plain scores without
    controls), and adds them to the set. Backup neurons, which take over once the first ones are
    gone, show up in later rounds.

    Returns:
        The ``chunk · rounds`` chosen neurons as ``(layer, index)`` rows, in the order chosen.
    """
    check_option(reduce, Reduce, "reduce")
    require_eval(model)
    controls = _check_datasets(target, controls)
    site = neuron_site(model)
    if chunk < 1 or rounds < 1 or chunk * rounds > site.n_neurons:
        raise ValueError(
            f"chunk ({chunk}) × rounds ({rounds}) must be between 1 and the model's "
            f"{site.n_neurons} neurons"
        )
    chosen = torch.zeros(site.n_layers, site.d_mlp, dtype=torch.bool)
    order: list[Tensor] = []
    for _ in tqdm(range(rounds), disable=not progress, desc="iterative localization"):
        with ablate(model, NeuronMask(chosen.clone())):
            s = _all_scores(model, target, steps, batch_size)
            if controls:
                others = {n: _all_scores(model, d, steps, batch_size) for n, d in controls.items()}
                s = contrastive_scores(s, others, reduce=reduce, weight=weight)
        s = s.masked_fill(chosen, -torch.inf)
        picked = neuron_order(s)[:chunk]
        chosen[picked[:, 0], picked[:, 1]] = True
        order.append(picked)
    return torch.cat(order)


def rank_neurons(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None = None,
    *,
    method: LocateMethod = DEFAULT_LOCATE_METHOD,
    max_fraction: float = 0.05,
    ig_steps: int | None = None,
    chunk_fraction: float = 0.01,
    reduce: Reduce = "max",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    scores: Mapping[str, Tensor | NeuronScores] | None = None,
    **learn_kwargs: Any,
) -> Int[Tensor, "neuron 2"]:
    """The first ``max_fraction`` of all neurons, in the order ``method`` would erase them.

    ``"answer"`` ranks by the papers' answer-position IG of ``P(answer)``. ``scores`` may hold
    precomputed all-position scores (``attribute(..., "ig", metric="logprob",
    positions="all")``) by dataset name — the target's ``name`` and the controls' keys — to
    reuse them across calls (``"all"`` and ``"contrastive"`` only). See
    [`locate`][tl_capability.localization.locate] for the other arguments.
    """
    check_option(method, LocateMethod, "method")
    check_option(reduce, Reduce, "reduce")
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
    ig_steps = ig_steps or (20 if method == "answer" else 8)
    require_eval(model)
    controls = _check_datasets(target, controls)
    site = neuron_site(model)
    budget = max(1, int(max_fraction * site.n_neurons))
    cache = dict(scores or {})

    def all_scores(name: str | None, data: CapabilityDataset) -> Tensor:
        if name is not None and name in cache:
            return _values(cache[name])
        return _all_scores(model, data, ig_steps, batch_size)

    if method == "answer":
        s = attribute(model, target, "ig", steps=ig_steps, batch_size=batch_size, progress=False)
        return neuron_order(s.values)[:budget]
    if method in ("all", "contrastive"):
        s = all_scores(target.name, target)
        if method == "contrastive" and controls:
            others = {n: all_scores(n, d) for n, d in controls.items()}
            s = contrastive_scores(s, others, reduce=reduce)
        return neuron_order(s)[:budget]
    if method == "iterative":
        chunk = max(1, int(chunk_fraction * site.n_neurons))
        return iterative_ranking(
            model,
            target,
            controls or None,
            chunk=chunk,
            rounds=-(-budget // chunk),
            steps=ig_steps,
            reduce=reduce,
            batch_size=batch_size,
            progress=progress,
        )[:budget]
    from tl_capability.learned import learn_gates

    logits, _ = learn_gates(
        model,
        target,
        controls or None,
        max_fraction=max_fraction,
        seed=seed,
        progress=progress,
        **learn_kwargs,
    )
    return neuron_order(logits)[:budget]


def locate(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None = None,
    *,
    method: LocateMethod = DEFAULT_LOCATE_METHOD,
    max_fraction: float = 0.05,
    target_drop: float = 60.0,
    tolerance: float = 10.0,
    ig_steps: int | None = None,
    chunk_fraction: float = 0.01,
    reduce: Reduce = "max",
    sigma: float = 2.0,
    check_fraction: float = 1 / 3,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    scores: Mapping[str, Tensor | NeuronScores] | None = None,
    **learn_kwargs: Any,
) -> NeuronMask:
    """The neurons whose erasure removes ``target``'s capability and spares ``controls``.

    Example:
        >>> mask = locate(model, zoo.dataset("sentiment", 64, "train"),
        ...               {c: zoo.dataset(c, 64, "train") for c in ("addition", "sort")})
        >>> with ablate(model, mask):
        ...     accuracy(model, zoo.dataset("sentiment"))

    Args:
        model: A TransformerLens model in eval mode.
        target: (prompt, answer) pairs of the capability.
        controls: Other capabilities (or generic text as prompt/answer pairs) to spare, by name.
            ``None`` locates without controls (no contrast, no tolerance).
        method: See the module docstring. ``"answer"`` is the papers' literal pipeline
            (answer-position IG, then the σ rule; no budget rule).
        max_fraction: Largest share of all neurons the mask may hold.
        target_drop: Accuracy drop of the target (points) that the budget rule aims for.
        tolerance: Largest accuracy drop of any control (points) the budget rule accepts.
        ig_steps: Integrated-gradients steps: 20 for ``"answer"`` (the papers'), 8 for the
            all-position methods when ``None``. The learned mask's own ``steps`` go in
            ``learn_kwargs``.
        chunk_fraction: Share of all neurons chosen per round of ``"iterative"``.
        reduce: How control scores combine
            ([`contrastive_scores`][tl_capability.localization.contrastive_scores]).
        sigma: The σ rule of ``method="answer"``.
        check_fraction: Share of every dataset held out from ranking to check the budget
            rule on ([`holdout`][tl_capability.localization.holdout]); 0 ranks and checks on the
            same samples.
        batch_size: Samples per attribution batch.
        seed: Seed of the held-out split and of the learned mask.
        progress: Show progress bars.
        scores: Precomputed all-position scores by dataset name (see
            [`rank_neurons`][tl_capability.localization.rank_neurons]), used as given: compute them
            on the ranking part of the split.
        **learn_kwargs: Passed to [`learn_gates`][tl_capability.learned.learn_gates]
            (the training of [`learn_mask`][tl_capability.learned.learn_mask]).

    Returns:
        A [`NeuronMask`][tl_capability.masks.NeuronMask]; its ``selection`` records the method, the
        parameters, the size chosen, whether the budget rule's goal was reached, and the drops
        measured on the data given.

    Warns:
        UserWarning: When the goal is not reached on the check samples (the mask returned is
            then the budget rule's fallback size), and for learned masks on small datasets.

    Raises:
        ValueError: For an unknown method, empty controls, a target that is also a control,
            ``max_fraction`` outside (0, 1], or a model in training mode.
    """
    check_option(method, LocateMethod, "method")
    check_option(reduce, Reduce, "reduce")
    ig_steps = ig_steps or (20 if method == "answer" else 8)
    require_eval(model)
    checked = _check_datasets(target, controls)
    params = {
        "method": method,
        "max_fraction": max_fraction,
        "ig_steps": ig_steps,
        "dataset": target.name,
        "controls": sorted(checked),
    }
    if method == "answer":
        scores_ = attribute(
            model, target, "ig", steps=ig_steps, batch_size=batch_size, progress=False
        )
        mask = select(scores_, sigma=sigma)
        selection = {**params, "rule": "sigma", "sigma": sigma, "neurons": len(mask)}
        return NeuronMask(mask.tensor, model_name(model), "post", selection)
    if method == "learned" and len(target) < LEARNED_MIN_SAMPLES:
        warnings.warn(
            f"locate(method='learned') on {len(target)} samples: learned masks overfit small "
            f"datasets (on the dropout-trained zoo model, 64 samples gave sets that spared the "
            f"controls seen in training but not fresh ones); pass at least "
            f"{LEARNED_MIN_SAMPLES} samples of the target and of each control",
            stacklevel=2,
        )
    fit_target, fit_controls, check_target, check_controls = holdout(
        target, checked, check_fraction, seed
    )
    order = rank_neurons(
        model,
        fit_target,
        fit_controls or None,
        method=method,
        max_fraction=max_fraction,
        ig_steps=ig_steps,
        chunk_fraction=chunk_fraction,
        reduce=reduce,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        scores=scores,
        **learn_kwargs,
    )
    params["check_fraction"] = check_fraction
    mask = budget_mask(
        model,
        order,
        check_target,
        check_controls,
        target_drop=target_drop,
        tolerance=tolerance,
        progress=progress,
        selection=params,
    )
    sel = mask.selection
    if not sel["reached"]:
        # A mask that misses its goal is still returned (the rule's fallback), but quietly
        # handing it over would let a weak set pass for "the capability's neurons".
        warnings.warn(
            f"locate({target.name!r}): the goal (target drop >= {target_drop:g} points, every "
            f"control <= {tolerance:g}) was not reached on the check samples within "
            f"{100 * max_fraction:g} % of the neurons; returning {sel['neurons']} neurons "
            f"(target drop {sel['own_drop']:.1f}, worst control {sel['worst_other_drop']:.1f}). "
            f"Try more samples, a larger max_fraction or, for learned masks, which vary with "
            f"the seed, another seed (mask.selection['reached'] records this)",
            stacklevel=2,
        )
    return mask


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
    """
    if not 0 <= check_fraction < 1:
        raise ValueError(f"check_fraction must be in [0, 1), got {check_fraction}")

    def split(data: CapabilityDataset) -> tuple[CapabilityDataset, CapabilityDataset]:
        if check_fraction == 0 or len(data) < 4:
            return data, data
        return data.split(1 - check_fraction, seed=seed)

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
) -> NeuronMask:
    """The shortest prefix of ``order`` that drops ``target`` by ``target_drop`` points while
    no control drops by more than ``tolerance``, measured on the data given at ten sizes up to
    ``len(order)``. When no size does both, the one that hurts the target most within the
    tolerance (the smallest size when none is within it); ``selection["reached"]`` says which.
    """
    sizes = sorted({max(1, round(len(order) * i / 10)) for i in range(1, 11)})
    curve = erase_curve(
        model, order, target, dict(controls) or None, sizes=sizes, n_random=0, progress=progress
    )
    k = curve.budget(target_drop, tolerance)
    reached = k is not None
    if k is None:
        fits = [i for i, w in enumerate(curve.worst_other) if w <= tolerance]
        k = curve.sizes[max(fits, key=lambda i: curve.own_drop[i]) if fits else 0]
    i = curve.sizes.index(k)
    info = {
        **(selection or {}),
        "neurons": k,
        "reached": reached,
        "target_drop": target_drop,
        "tolerance": tolerance,
        "own_drop": curve.own_drop[i],
        "worst_other_drop": curve.worst_other[i],
    }
    return NeuronMask(curve.mask_at(k).tensor, model_name(model), "post", info)
