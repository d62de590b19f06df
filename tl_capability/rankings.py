"""Rankings of neurons by all-position attribution, beside the plain scores: what the
controls need subtracted ([`contrastive_scores`][tl_capability.rankings.contrastive_scores]) and
re-attribution with the chosen neurons erased
([`iterative_ranking`][tl_capability.rankings.iterative_ranking]). Two of
[`locate`][tl_capability.localization.locate]'s methods (``"contrastive"``, ``"iterative"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability.attribution import NeuronScores, attribute, neuron_order
from tl_capability.data import CapabilityDataset, check_datasets
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask
from tl_capability.options import Reduce, check_option, check_positive_int, check_range
from tl_capability.sites import neuron_site, require_eval


def score_values(
    scores: NeuronScores | Tensor, name: str = "scores"
) -> Float[Tensor, "layer d_mlp"]:
    """``scores`` as a float ``[layer, d_mlp]`` CPU tensor; ``name`` words the refusal.

    Raises:
        ValueError: For anything but NeuronScores or a 2-D tensor, or non-finite scores.
    """
    values = scores.values if isinstance(scores, NeuronScores) else scores
    if not isinstance(values, Tensor) or values.dim() != 2:
        raise ValueError(f"{name} must be NeuronScores or a [layer, d_mlp] tensor")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contain NaN or infinite values")
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
        ValueError: For controls that are not a non-empty mapping of name -> scores, scores
            of different shapes, non-finite scores, or a ``weight`` that is not a finite
            number of at least 0.
    """
    if not isinstance(controls, Mapping):
        raise ValueError(
            f"controls must map names to scores, got {type(controls).__name__} (write "
            "{'name': scores})"
        )
    if not controls:
        raise ValueError("contrastive scores need at least one control")
    check_option(reduce, Reduce, "reduce")
    check_range(weight, "weight", 0.0)
    s = score_values(target)
    others = [score_values(c, f"control {n!r}'s scores") for n, c in controls.items()]
    if any(o.shape != s.shape for o in others):
        raise ValueError("target and control scores must have the same [layer, d_mlp] shape")
    need = torch.stack(others).clamp(min=0)
    need = need.max(0).values if reduce == "max" else need.mean(0)
    return s - weight * need


def all_position_ig(
    model: Any, data: CapabilityDataset, steps: int, batch_size: int | None
) -> Float[Tensor, "layer d_mlp"]:
    """The scores every ranked method starts from: IG of ``log P(answer)`` with the neuron
    scaled at every position (``attribute(..., "ig", metric="logprob", positions="all")``)."""
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
    [`contrastive_scores`][tl_capability.rankings.contrastive_scores] (plain scores without
    controls), and adds them to the set. Backup neurons, which take over once the first ones are
    gone, show up in later rounds.

    Returns:
        The ``chunk · rounds`` chosen neurons as ``(layer, index)`` rows, in the order chosen.

    Raises:
        ValueError: For ``chunk``, ``rounds`` or ``steps`` that are not positive integers,
            more neurons asked for than the model has, a negative or non-finite ``weight``,
            or datasets that [`check_datasets`][tl_capability.data.check_datasets] refuses.
    """
    check_option(reduce, Reduce, "reduce")
    check_positive_int(chunk, "chunk")
    check_positive_int(rounds, "rounds")
    check_positive_int(steps, "steps")
    check_range(weight, "weight", 0.0)
    require_eval(model)
    controls = check_datasets(target, controls)
    site = neuron_site(model)
    if chunk * rounds > site.n_neurons:
        raise ValueError(
            f"chunk ({chunk}) × rounds ({rounds}) must be between 1 and the model's "
            f"{site.n_neurons} neurons"
        )
    chosen = torch.zeros(site.n_layers, site.d_mlp, dtype=torch.bool)
    order: list[Tensor] = []
    for _ in tqdm(range(rounds), disable=not progress, desc="iterative localization"):
        with ablate(model, NeuronMask(chosen.clone())):
            s = all_position_ig(model, target, steps, batch_size)
            if controls:
                others = {
                    n: all_position_ig(model, d, steps, batch_size) for n, d in controls.items()
                }
                s = contrastive_scores(s, others, reduce=reduce, weight=weight)
        s = s.masked_fill(chosen, -torch.inf)
        picked = neuron_order(s)[:chunk]
        chosen[picked[:, 0], picked[:, 1]] = True
        order.append(picked)
    return torch.cat(order)


#: The weight of the controls' need in the learned mask's contrastive start
#: (``contrastive_scores(weight=3)``): on SmolLM2-135M it halved the worst other drop of the
#: first 0.05 % against weight 1 (docs/findings.md, "locate on SmolLM2-135M").
INIT_CONTROL_WEIGHT = 3.0


def contrastive_init(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    batch_size: int | None = None,
) -> Float[Tensor, "layer d_mlp"]:
    """The scores a learned mask starts from with ``LearnConfig(init="contrastive")``:
    all-position grad × act of ``log P(answer)`` (one forward and backward pass per sample),
    minus ``INIT_CONTROL_WEIGHT`` times the largest need of any control (the target's own
    scores without controls)."""

    def gxa(data: CapabilityDataset) -> Tensor:
        return attribute(
            model, data, "grad_x_act", metric="logprob", positions="all",
            batch_size=batch_size, progress=False,
        ).values  # fmt: skip

    own = gxa(target)
    if not controls:
        return own
    others = {name: gxa(data) for name, data in controls.items()}
    return contrastive_scores(own, others, weight=INIT_CONTROL_WEIGHT)
