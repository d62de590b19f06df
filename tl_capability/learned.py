"""Learned masks: a removal gate per neuron, trained to erase one capability and keep others.

[`learn_mask`][tl_capability.learned.learn_mask] learns gate logits ``θ`` of shape
``[layer, d_mlp]``. Neuron ``j``'s removal gate ``r_j ∈ [0, 1]`` scales its activation at **every
position**, ``a ← (1 − r_j) · a``, on the neuron hook (``blocks.{l}.mlp.hook_post`` for
``site="post"``), so ``r = 1`` is exactly the zero ablation of
[`NeuronMask.hooks("zero")`][tl_capability.masks.NeuronMask.hooks]. Only ``θ`` is trained; the
model's weights are never changed. The loss has three terms:

- **suppression** of the target's answers (teacher forced): ``−log(1 − P(answer))`` by default
  (see [`Suppression`][tl_capability.options.Suppression]);
- **maintenance** of the controls: ``KL(p_clean ‖ p_removed)`` at their answer positions;
- **sparsity**: ``λ ·`` the expected number of removed neurons over the budget
  (``max_fraction`` of all neurons); for hard-concrete gates that is the expected L0 of Louizos
  et al. (ICLR 2018).

This follows two papers. Chang et al. (NAACL 2024, "Do localization methods actually localize
memorized data in LLMs?") found that mask-learning methods, Hard Concrete (expected-L0 gates)
and Slimming (L1 on per-neuron coefficients), beat integrated gradients on both of their
localization benchmarks. Bayazit et al. (EMNLP 2024, "Discovering knowledge-critical
subnetworks in pretrained language models") add the maintenance term: suppression
``KL(uniform ‖ p_removed)`` on the target, ``KL(p_orig ‖ p_removed)`` on controls, ``λ ·`` mean
gate, with Gumbel-sigmoid gates and a straight-through estimator (``gate="sigmoid"`` here).

Defaults (``docs/findings.md``): sigmoid gates, ``λ = 3``; the start is read from the model
([`choose_start`][tl_capability.learn_start.choose_start]) and sets the recipe
([`LearnConfig`][tl_capability.learned.LearnConfig]). Hard-concrete gates and a uniform
suppression erased less on the zoo models.

After training, the gates are **binarised**: neurons are ranked by ``θ`` and the smallest top-k
(at most ``max_fraction`` of all neurons) whose zero ablation drops the target's accuracy by
``target_drop`` points is returned as a [`NeuronMask`][tl_capability.masks.NeuronMask].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability._gates import Training, default_start, init_logits
from tl_capability.attribution import NeuronScores
from tl_capability.data import CapabilityDataset, check_datasets
from tl_capability.evaluate import accuracy
from tl_capability.interventions import ablate
from tl_capability.learn_start import choose_start
from tl_capability.masks import NeuronMask
from tl_capability.options import (
    Gate,
    LearnInit,
    Site,
    Suppression,
    check_fraction,
    check_option,
    check_positive_int,
    check_range,
)
from tl_capability.sites import is_masked_lm, model_device, model_name, neuron_site, require_eval

PRUNE_RECIPE = {"steps": 150, "lr": 0.1, "batch_size": 32}
"""Steps, learning rate and batch of gates that start at the gate's own start (see
[`LearnConfig`][tl_capability.learned.LearnConfig])."""
GROW_RECIPE = {"steps": 80, "lr": 0.2, "batch_size": 8}
"""Steps, learning rate and batch of gates that start lower (see
[`LearnConfig`][tl_capability.learned.LearnConfig])."""


@dataclass(frozen=True)
class LearnConfig:
    """How [`learn_mask`][tl_capability.learned.learn_mask] trains its removal gates (also
    [`learn_gates`][tl_capability.learned.learn_gates] and ``locate(..., learn=...)``).

    Every field is checked when the config is made, so a bad value is refused before any
    training. The defaults are the measured ones of the module docstring; a mask records
    ``dataclasses.asdict(config)`` in its ``selection``.

    Example:
        >>> learn_mask(model, target, controls, config=LearnConfig(steps=300, gate="hard_concrete"))

    Attributes:
        steps: Optimisation steps (a positive integer; ``None``: the recipe's, see below).
        lr: Adam's learning rate on the gate logits ``θ`` (positive; ``None``: the recipe's).
        sparsity: Weight ``λ`` (at least 0) of the expected number of removed neurons divided by
            the budget ``max_fraction · n_neurons``: filling the budget costs ``λ`` nats, on the
            scale of the other two terms whatever the model's size.
        maintain: Weight (at least 0) of the controls' KL term.
        gate: ``"hard_concrete"`` (Louizos et al.; Chang et al.'s HC) or ``"sigmoid"``
            (Gumbel-sigmoid with a straight-through hard gate; Bayazit et al.).
        suppression: The target's loss, ``"unlikely"`` or ``"uniform"`` (see
            [`Suppression`][tl_capability.options.Suppression]).
        batch_size: Samples per dataset per step, and per evaluation batch (bounds memory;
            ``None``: the recipe's).
        start: Every gate's start logit ``θ₀`` (a finite number). ``None`` (the default): the
            highest start the model tolerates
            ([`choose_start`][tl_capability.learn_start.choose_start]): the gate's own (0 for
            ``"sigmoid"``, half of the neurons removed; −2 for ``"hard_concrete"``) on a model
            that loses little with that many neurons removed at random, lower on one that does
            not (SmolLM2-135M: −1 or −2).
        init: Where ``locate``'s learned mask starts
            ([`LearnInit`][tl_capability.options.LearnInit]); ``learn_mask`` takes its scores
            as an argument instead.

    The recipe: a start at the gate's own prunes from a large random removal and runs
    ``PRUNE_RECIPE`` (150 steps, ``lr`` 0.1, batch 32: measured on the zoo models); a lower start
    grows a small set and runs ``GROW_RECIPE`` (80 steps, ``lr`` 0.2, batch 8: measured on
    SmolLM2-135M, where a step costs 2-4 s). Fields set explicitly win over the recipe.

    Raises:
        ValueError: For a value out of range or an unknown option, naming the field.
    """

    steps: int | None = None
    lr: float | None = None
    sparsity: float = 3.0
    maintain: float = 1.0
    gate: Gate = "sigmoid"
    suppression: Suppression = "unlikely"
    batch_size: int | None = None
    start: float | None = None
    init: LearnInit = "auto"

    def __post_init__(self) -> None:
        if self.steps is not None:
            check_positive_int(self.steps, "steps")
        if self.lr is not None:
            check_range(self.lr, "lr", 0.0, low_open=True)
        check_range(self.sparsity, "sparsity", 0.0)
        check_range(self.maintain, "maintain", 0.0)
        check_option(self.gate, Gate, "gate")
        check_option(self.suppression, Suppression, "suppression")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        if self.start is not None:
            check_range(self.start, "start")
        check_option(self.init, LearnInit, "init")

    def resolved(self, start: float) -> LearnConfig:
        """This config with ``start`` and every field left to the recipe filled in."""
        grows = start < default_start(self.gate)
        recipe = GROW_RECIPE if grows else PRUNE_RECIPE
        filled = {k: v for k, v in recipe.items() if getattr(self, k) is None}
        return replace(self, start=float(start), **filled)


@dataclass(frozen=True)
class LearnedMask:
    """The result of [`learn_mask`][tl_capability.learned.learn_mask].

    Attributes:
        logits: The trained gate logits ``θ``; higher means more surely removed.
        mask: The binarised set: the top ``k`` neurons by ``θ``.
        reached: Whether zero-ablating ``mask`` drops the target by ``target_drop`` points.
        own_drop: The target's accuracy drop (points) when ``mask`` is zero-ablated.
        clean_accuracy: The target's accuracy (0 to 1) without any ablation.
        history: One dict per step: ``loss``, ``suppress``, ``maintain``, ``sparsity`` (the
            expected number removed over the budget), ``control`` (that step's control).
        drops: The drop (points) measured for every ``k`` the binarisation tried.
    """

    logits: Float[Tensor, "layer d_mlp"]
    mask: NeuronMask
    reached: bool
    own_drop: float
    clean_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)
    drops: dict[int, float] = field(default_factory=dict)

    def ranking(self) -> Float[Tensor, "layer d_mlp"]:
        """The gate logits as scores (for [`select`][tl_capability.masks.select] or erase curves
        over ``k``)."""
        return self.logits.clone()


def _measure_drops(
    model: Any,
    target: CapabilityDataset,
    order: Int[Tensor, " n"],
    shape: tuple[int, int],
    max_k: int,
    target_drop: float,
    clean: float,
    batch_size: int,
    meta: dict[str, Any],
) -> tuple[int, dict[int, float]]:
    """The smallest ``k ≤ max_k`` whose top-k ablation drops the target by ``target_drop``:
    a doubling grid, then bisection in the first interval that reaches it (assumes the drop is
    near-monotone in ``k``). Returns ``max_k`` when nothing reaches it."""
    drops: dict[int, float] = {}

    def drop(k: int) -> float:
        if k not in drops:
            tensor = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
            tensor[order[:k]] = True
            mask = NeuronMask(tensor.view(shape), **meta)
            with ablate(model, mask):
                acc = accuracy(model, target, batch_size=batch_size, progress=False)
            drops[k] = 100.0 * (clean - acc)
        return drops[k]

    grid = sorted({max(1, max_k >> i) for i in range(12)})
    lo = 0
    for k in grid:
        if drop(k) >= target_drop:
            hi = k
            break
        lo = k
    else:
        return max_k, drops
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if drop(mid) >= target_drop else (mid, hi)
    return hi, drops


def learn_gates(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    *,
    config: LearnConfig | None = None,
    init: Float[Tensor, "layer d_mlp"] | NeuronScores | None = None,
    max_fraction: float = 0.05,
    seed: int = 0,
    site: Site = "post",
    progress: bool = True,
) -> tuple[Float[Tensor, "layer d_mlp"], list[dict[str, Any]]]:
    """The training part of [`learn_mask`][tl_capability.learned.learn_mask]: the gate logits
    ``θ`` (higher: more surely removed) and the per-step history, without binarising them (what
    [`locate`][tl_capability.localization.locate] ranks by; it picks the set size itself).
    Arguments and errors as for [`learn_mask`][tl_capability.learned.learn_mask]."""
    logits, history, _, _ = _train_gates(
        model, target, controls, config, init, max_fraction, seed, site, progress
    )
    return logits, history


def _train_gates(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    config: LearnConfig | None,
    init: Float[Tensor, "layer d_mlp"] | NeuronScores | None,
    max_fraction: float,
    seed: int,
    site: Site,
    progress: bool,
) -> tuple[Tensor, list[dict[str, Any]], LearnConfig, dict[float, float]]:
    """``learn_gates``, also returning the config it ran (start and recipe filled in) and the
    start probe's readings (empty when the config fixed the start)."""
    config = LearnConfig() if config is None else config
    if not isinstance(config, LearnConfig):
        raise ValueError(f"config must be a LearnConfig, got {type(config).__name__}")
    require_eval(model)
    if is_masked_lm(model):
        raise ValueError("learn_mask supports causal LMs only (masked LMs would attend to padding)")
    controls = check_datasets(target, controls)
    check_fraction(max_fraction, "max_fraction")
    resolved = neuron_site(model, site)
    shape = (resolved.n_layers, resolved.d_mlp)
    start, readings = config.start, {}
    if start is None:
        start, readings = choose_start(
            model, target, controls, gate=config.gate, init=init, seed=seed, site=site
        )
    config = config.resolved(start)
    theta = init_logits(init, shape, config.gate, config.start)
    theta = theta.to(model_device(model)).requires_grad_(True)
    budget = max(1, math.floor(max_fraction * theta.numel()))
    names = [resolved.hook_name(layer) for layer in range(shape[0])]
    training = Training(model, target, controls, theta, names, config, budget, seed)
    history: list[dict[str, Any]] = []
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        desc = f"learn_mask {target.name or ''}"
        bar = tqdm(range(config.steps), disable=not progress, desc=desc)
        for step in bar:
            history.append(training.step(step))
            if step % 10 == 0 or step == config.steps - 1:
                last = history[-1]
                bar.set_postfix(suppress=f"{last['suppress']:.3f}", kl=f"{last['maintain']:.3f}")
    finally:
        training.removal.clear()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return theta.detach().cpu(), history, config, readings


def learn_mask(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    *,
    config: LearnConfig | None = None,
    init: Float[Tensor, "layer d_mlp"] | NeuronScores | None = None,
    target_drop: float = 60.0,
    max_fraction: float = 0.05,
    seed: int = 0,
    site: Site = "post",
    progress: bool = True,
) -> LearnedMask:
    """Learns which neurons to zero-ablate to erase ``target`` while keeping ``controls``.

    Each step draws ``config.batch_size`` target samples and as many of one control dataset
    (round robin), samples the gates, runs the gated model on both and the clean model on the
    control samples (no gradients), and takes an Adam step on ``θ``. See the module docstring
    for the loss and the papers it follows.

    Example:
        >>> learned = learn_mask(model, zoo.dataset("sort", 100, "train"),
        ...                      {"addition": zoo.dataset("addition", 100, "train")})
        >>> with ablate(model, learned.mask):
        ...     accuracy(model, zoo.dataset("sort", 100))
        >>> longer = learn_mask(model, target, controls, config=LearnConfig(steps=300))

    Args:
        model: A causal TransformerLens model in eval mode. Its weights are not changed and its
            parameters' ``requires_grad`` flags are restored, also after an exception.
        target: The capability to erase (teacher-forced answers).
        controls: Capabilities to keep, by name; none may be the target
            ([`check_datasets`][tl_capability.data.check_datasets]). ``None`` learns
            without the maintenance term (suppression and sparsity only).
        config: How the gates train ([`LearnConfig`][tl_capability.learned.LearnConfig]:
            steps, learning rate, loss weights, gate, suppression, batch size); ``None``: the
            defaults.
        init: Attribution scores (higher: more likely removed) to start from, e.g.
            ``attribute(model, target, "grad_x_act")``: ``θ₀`` = the gate's start logit plus
            the standardised scores clamped to ±3. ``None`` (the default, better on the zoo
            model) starts every gate alike: sigmoid gates half removed, hard-concrete gates
            at ``θ = −2``.
        target_drop: The accuracy drop (points, in ``(0, 100]``) on ``target`` the binarised
            set must reach.
        max_fraction: The largest set, as a fraction of all neurons, in ``(0, 1]``.
        seed: Seeds the batches and the gate noise; the same seed gives the same logits.
        site: ``"post"`` or ``"pre"`` (see [`tl_capability.sites`][tl_capability.sites]).
        progress: Show a progress bar.

    Returns:
        [`LearnedMask`][tl_capability.learned.LearnedMask]; its mask's ``selection`` records
        ``dataclasses.asdict(config)`` with the other arguments.

    Raises:
        ValueError: For empty controls, a control that is the target, a model in training mode
            or a masked LM, an ``init`` of the wrong shape or with non-finite values, a sample
            that does not fit the context, or a parameter out of range.
    """
    check_range(target_drop, "target_drop", 0.0, 100.0, low_open=True, unit=" points")
    config = LearnConfig() if config is None else config
    logits, history, config, readings = _train_gates(
        model, target, controls, config, init, max_fraction, seed, site, progress
    )
    resolved = neuron_site(model, site)
    shape = (resolved.n_layers, resolved.d_mlp)
    order = logits.flatten().argsort(descending=True, stable=True)
    max_k = max(1, math.floor(max_fraction * logits.numel()))
    clean_acc = accuracy(model, target, batch_size=config.batch_size, progress=False)
    selection = {
        "method": "learned",
        **asdict(config),
        "seed": seed,
        "start_probe": readings,
        "target_drop": target_drop,
        "max_fraction": max_fraction,
        "init_scores": getattr(init, "method", None if init is None else "tensor"),
        "dataset": target.name,
        "controls": list(controls or {}),
    }
    meta = {"model_name": model_name(model), "site": site, "selection": selection}
    k, drops = _measure_drops(
        model, target, order, shape, max_k, target_drop, clean_acc, config.batch_size, meta
    )
    reached = drops[k] >= target_drop
    tensor = torch.zeros(logits.numel(), dtype=torch.bool)
    tensor[order[:k]] = True
    selection.update(k=k, reached=reached, own_drop=drops[k])
    mask = NeuronMask(tensor.view(shape), **meta)
    return LearnedMask(logits, mask, reached, drops[k], clean_acc, history, drops)
