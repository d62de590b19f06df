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
  ([`contrastive_scores`][tl_capability.rankings.contrastive_scores]): a neuron that the
  controls need as much as the target is not the target's.
- ``"iterative"``: erasure has backup neurons. Erase a chunk of the contrastive ranking,
  re-attribute target and controls with it erased, repeat
  ([`iterative_ranking`][tl_capability.rankings.iterative_ranking]).
- ``"learned"`` (the default): a removal mask trained to suppress the target and keep the controls
  ([`learn_mask`][tl_capability.learned.learn_mask]; Chang et al., NAACL 2024; Bayazit et al., EMNLP
  2024), its start read from the model ([`learned_start`][tl_capability.learn_start.learned_start]).

Every ranked method ranks on two thirds of the data given; the budget rule
([`budget_mask`][tl_capability.budget.budget_mask]) then takes the smallest prefix of its ranking,
from 0.01 % of the neurons up to ``max_fraction``, that drops the target's accuracy by
``target_drop`` points while no control drops by more than ``tolerance``, measured on the
held-out third ([`holdout`][tl_capability.budget.holdout]).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from jaxtyping import Int
from torch import Tensor

from tl_capability.attribution import NeuronScores, attribute, neuron_order
from tl_capability.budget import budget_mask, holdout, warn_not_reached
from tl_capability.data import CapabilityDataset, check_datasets
from tl_capability.evaluate import accuracy
from tl_capability.learn_start import learned_start
from tl_capability.learned import LearnConfig, learn_gates
from tl_capability.masks import NeuronMask, select
from tl_capability.options import (
    LocateMethod,
    Reduce,
    check_fraction,
    check_option,
    check_positive_int,
    check_range,
)
from tl_capability.rankings import (
    all_position_ig,
    contrastive_scores,
    iterative_ranking,
    score_values,
)
from tl_capability.sites import model_name, neuron_site, require_eval

DEFAULT_LOCATE_METHOD: LocateMethod = "learned"
LEARNED_MIN_SAMPLES = 96


@dataclass(frozen=True)
class LocateConfig:
    """How [`locate`][tl_capability.localization.locate] and
    [`rank_neurons`][tl_capability.localization.rank_neurons] rank neurons and check the
    budget: the knobs beside the goal (``max_fraction``, ``target_drop``, ``tolerance``), which
    are ``locate``'s own arguments. Every field is checked when the config is made.

    Example:
        >>> locate(model, target, controls, method="contrastive",
        ...        config=LocateConfig(ig_steps=16, batch_size=8))

    Attributes:
        ig_steps: Integrated-gradients steps (a positive integer); ``None``: 20 for
            ``"answer"`` (the papers'), 8 for the all-position methods. The learned mask's own
            ``steps`` are [`LearnConfig`][tl_capability.learned.LearnConfig]'s.
        chunk_fraction: Share of all neurons chosen per round of ``"iterative"``, in ``(0, 1]``.
        reduce: How control scores combine
            ([`contrastive_scores`][tl_capability.rankings.contrastive_scores]).
        sigma: The σ rule of ``method="answer"`` (at least 0).
        check_fraction: Share of every dataset held out from ranking to check the budget
            rule on ([`holdout`][tl_capability.budget.holdout]), in ``[0, 1)``; 0 ranks
            and checks on the same samples.
        batch_size: Samples per attribution batch (a positive integer; ``None``: attribution's
            default).
        seed: Seed of the held-out split and of the learned mask.
        scores: Precomputed all-position scores by dataset name — the target's ``name`` and the
            controls' keys — (``attribute(..., "ig", metric="logprob", positions="all")``),
            used as given by ``"all"`` and ``"contrastive"``: compute them on the ranking part
            of the split. Each must have the model's ``[layer, d_mlp]`` shape.

    Raises:
        ValueError: For a value out of range or an unknown option, naming the field.
    """

    ig_steps: int | None = None
    chunk_fraction: float = 0.01
    reduce: Reduce = "max"
    sigma: float = 2.0
    check_fraction: float = 1 / 3
    batch_size: int | None = None
    seed: int = 0
    scores: Mapping[str, Tensor | NeuronScores] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.ig_steps is not None:
            check_positive_int(self.ig_steps, "ig_steps")
        check_fraction(self.chunk_fraction, "chunk_fraction")
        check_option(self.reduce, Reduce, "reduce")
        check_range(self.sigma, "sigma", 0.0)
        check_fraction(self.check_fraction, "check_fraction", zero_ok=True, one_ok=False)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.seed, "seed", minimum=0)
        if self.scores is not None and not isinstance(self.scores, Mapping):
            raise ValueError(
                f"scores must map dataset names to scores, got {type(self.scores).__name__}"
            )

    def steps_for(self, method: LocateMethod) -> int:
        """The IG steps ``method`` runs: ``ig_steps``, else its default."""
        if self.ig_steps is not None:
            return self.ig_steps
        return 20 if method == "answer" else 8


def rank_neurons(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None = None,
    *,
    method: LocateMethod = DEFAULT_LOCATE_METHOD,
    max_fraction: float = 0.05,
    progress: bool = True,
    config: LocateConfig | None = None,
    learn: LearnConfig | None = None,
) -> Int[Tensor, "neuron 2"]:
    """The first ``max_fraction`` of all neurons, in the order ``method`` would erase them.

    ``"answer"`` ranks by answer-position IG of ``P(answer)``. ``config.scores`` may hold
    precomputed all-position scores by dataset name (``"all"``, ``"contrastive"``). Arguments
    as for [`locate`][tl_capability.localization.locate].

    Raises:
        ValueError: As [`locate`][tl_capability.localization.locate], and for precomputed
            scores whose shape is not the model's ``[layer, d_mlp]``.
    """
    check_option(method, LocateMethod, "method")
    check_fraction(max_fraction, "max_fraction")
    config = _config(config, LocateConfig, "config")
    learn = _config(learn, LearnConfig, "learn")
    ig_steps = config.steps_for(method)
    require_eval(model)
    controls = check_datasets(target, controls)
    site = neuron_site(model)
    budget = max(1, int(max_fraction * site.n_neurons))
    cache = dict(config.scores or {})

    def all_scores(name: str | None, data: CapabilityDataset) -> Tensor:
        if name is None or name not in cache:
            return all_position_ig(model, data, ig_steps, config.batch_size)
        values = score_values(cache[name], f"scores[{name!r}]")
        if tuple(values.shape) != (site.n_layers, site.d_mlp):
            raise ValueError(
                f"scores[{name!r}] has shape {tuple(values.shape)}, but the model has "
                f"{site.n_layers} layers of {site.d_mlp} neurons"
            )
        return values

    if method == "answer":
        s = attribute(
            model, target, "ig", steps=ig_steps, batch_size=config.batch_size, progress=False
        )
        return neuron_order(s.values)[:budget]
    if method in ("all", "contrastive"):
        s = all_scores(target.name, target)
        if method == "contrastive" and controls:
            others = {n: all_scores(n, d) for n, d in controls.items()}
            s = contrastive_scores(s, others, reduce=config.reduce)
        return neuron_order(s)[:budget]
    if method == "iterative":
        chunk = max(1, int(config.chunk_fraction * site.n_neurons))
        return iterative_ranking(
            model,
            target,
            controls or None,
            chunk=chunk,
            rounds=-(-budget // chunk),
            steps=ig_steps,
            reduce=config.reduce,
            batch_size=config.batch_size,
            progress=progress,
        )[:budget]
    return _learned_order(model, target, controls, learn, config, max_fraction, progress)[0]


def _learned_order(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset],
    learn: LearnConfig,
    config: LocateConfig,
    max_fraction: float,
    progress: bool,
) -> tuple[Int[Tensor, "neuron 2"], LearnConfig]:
    """The learned mask's erase order and the config it ran (start and recipe filled in)."""
    learn, init = learned_start(
        model, target, controls or None, learn, seed=config.seed, batch_size=config.batch_size
    )
    logits, _ = learn_gates(
        model,
        target,
        controls or None,
        config=learn,
        init=init,
        max_fraction=max_fraction,
        seed=config.seed,
        progress=progress,
    )
    budget = max(1, int(max_fraction * logits.numel()))
    return neuron_order(logits)[:budget], learn.resolved(learn.start)


def _config(value: Any, kind: type, name: str) -> Any:
    """``value``, or ``kind()`` for ``None``; refuses anything else."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def locate(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None = None,
    *,
    method: LocateMethod = DEFAULT_LOCATE_METHOD,
    max_fraction: float = 0.05,
    target_drop: float = 60.0,
    tolerance: float = 10.0,
    progress: bool = True,
    config: LocateConfig | None = None,
    learn: LearnConfig | None = None,
) -> NeuronMask:
    """The neurons whose erasure removes ``target``'s capability and spares ``controls``.

    Example:
        >>> mask = locate(model, zoo.dataset("sentiment", 64, "train"),
        ...               {c: zoo.dataset(c, 64, "train") for c in ("addition", "sort")})
        >>> with ablate(model, mask):
        ...     accuracy(model, zoo.dataset("sentiment"))
        >>> longer = locate(model, target, controls, learn=LearnConfig(steps=300))

    Args:
        model: A TransformerLens model in eval mode.
        target: (prompt, answer) pairs of the capability.
        controls: Other capabilities (or generic text as prompt/answer pairs) to spare, by name
            ([`check_datasets`][tl_capability.data.check_datasets]). ``None`` locates
            without controls (no contrast, no tolerance).
        method: See the module docstring. ``"answer"`` is the papers' literal pipeline
            (answer-position IG, then the σ rule; no budget rule).
        max_fraction: Largest share of all neurons the mask may hold, in ``(0, 1]``.
        target_drop: Accuracy drop of the target (points, in ``(0, 100]``) that the budget rule
            aims for.
        tolerance: Largest accuracy drop of any control (points, in ``[0, 100]``) the budget
            rule accepts.
        progress: Show progress bars.
        config: How to rank and check ([`LocateConfig`][tl_capability.localization.LocateConfig]:
            IG steps, σ, the held-out share, batch size, seed, precomputed scores); ``None``:
            the defaults.
        learn: How ``"learned"`` trains its gates
            ([`LearnConfig`][tl_capability.learned.LearnConfig]); ``None``: the defaults.

    Returns:
        A [`NeuronMask`][tl_capability.masks.NeuronMask]; its ``selection`` records the method, the
        parameters, the size chosen, whether the budget rule's goal was reached, and the drops
        measured on the data given.

    Warns:
        UserWarning: When the goal is not reached on the check samples (the mask returned is
            then the budget rule's fallback size; the advice names why when the model answers
            too few of the target to lose ``target_drop`` points), when the model answers none
            of the target (``"answer"``), when check samples repeat ranking samples
            ([`holdout`][tl_capability.budget.holdout]), and for learned masks on small
            datasets.

    Raises:
        ValueError: For an unknown method, controls that
            [`check_datasets`][tl_capability.data.check_datasets] refuses, ``max_fraction``,
            ``target_drop`` or ``tolerance`` out of range, a config that is not a
            ``LocateConfig`` / ``LearnConfig``, precomputed scores of another shape, or a model
            in training mode.
    """
    check_option(method, LocateMethod, "method")
    check_fraction(max_fraction, "max_fraction")
    check_range(target_drop, "target_drop", 0.0, 100.0, low_open=True, unit=" points")
    check_range(tolerance, "tolerance", 0.0, 100.0, unit=" points")
    config = _config(config, LocateConfig, "config")
    learn = _config(learn, LearnConfig, "learn")
    require_eval(model)
    checked = check_datasets(target, controls)
    params = {
        "method": method,
        "max_fraction": max_fraction,
        "ig_steps": config.steps_for(method),
        "dataset": target.name,
        "controls": sorted(checked),
    }
    if method == "answer":
        return _papers_pipeline(model, target, config, params)
    if method == "learned" and len(target) < LEARNED_MIN_SAMPLES:
        warnings.warn(
            f"locate(method='learned') on {len(target)} samples: learned masks overfit small "
            f"datasets (sets that spare the controls seen in training but not fresh ones); "
            f"pass at least {LEARNED_MIN_SAMPLES} samples of the target and of each control",
            stacklevel=2,
        )
    fit_target, fit_controls, check_target, check_controls = holdout(
        target, checked, config.check_fraction, config.seed
    )
    if method == "learned":
        order, ran = _learned_order(
            model, fit_target, fit_controls, learn, config, max_fraction, progress
        )
        params["learn"] = asdict(ran)
    else:
        order = rank_neurons(
            model, fit_target, fit_controls or None, method=method,
            max_fraction=max_fraction, progress=progress, config=config,
        )  # fmt: skip
    params["check_fraction"] = config.check_fraction
    mask = budget_mask(
        model, order, check_target, check_controls, target_drop=target_drop,
        tolerance=tolerance, progress=progress, selection=params, seed=config.seed,
    )  # fmt: skip
    if not mask.selection["reached"]:
        warn_not_reached(target.name, mask.selection, max_fraction)
    return mask


def _papers_pipeline(
    model: Any, target: CapabilityDataset, config: LocateConfig, params: dict[str, Any]
) -> NeuronMask:
    """``method="answer"``: answer-position IG of ``P(answer)``, then the σ rule. Warns when
    the model answers none of the target: its neurons are then those of wrong answers."""
    batch_size = config.batch_size or 64
    if accuracy(model, target, batch_size=batch_size, progress=False) == 0:
        warnings.warn(
            f"locate({target.name!r}, method='answer'): the model answers none of the "
            f"{len(target)} target samples correctly, so there is no capability to locate: the "
            "neurons returned raise the probability of answers it gets wrong. Give samples "
            "the model answers (check with accuracy(model, target))",
            stacklevel=3,
        )
    steps = config.steps_for("answer")
    scores = attribute(
        model, target, "ig", steps=steps, batch_size=config.batch_size, progress=False
    )
    mask = select(scores, sigma=config.sigma)
    selection = {**params, "rule": "sigma", "sigma": config.sigma, "neurons": len(mask)}
    return NeuronMask(mask.tensor, model_name(model), "post", selection)
