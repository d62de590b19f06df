"""Neuron-empirical-gradient experiments (Zhao et al., ACL 2025), with random controls.

- [`neurgrad_agreement`][tl_capability.experiments.neurgrad.neurgrad_agreement]: NeurGrad against
  interventions on the top neurons — sign agreement, correlation, error — and how linear the
  interventions are (Pearson r).
- [`linearity`][tl_capability.experiments.neurgrad.linearity]: the distribution over neurons of the
  Pearson r between activation shift and answer-probability change, for the top neurons by NeurGrad
  and for random neurons.
- [`skill_probe`][tl_capability.experiments.neurgrad.skill_probe]: the skill-neuron probe on a
  multiple-choice dataset.

The skill-neuron probe, as implemented here: for every sample and answer option ``o``, NeurGrad
gives each neuron's NEG for ``P(o)``; the neuron *votes* for the option it pushes up most
(``argmax_o NEG_o``). On the train split each neuron's vote accuracy is measured; the ``k``
most accurate neurons (k = 10 in the paper) are the skill neurons. A test sample is predicted
by their votes, each weighted by the neuron's train accuracy above chance. The same probe on
``k`` random neurons, and the model's own accuracy, are the references.

Random neurons come from [`random_controls`][tl_capability.masks.random_controls] (set ``i`` seeded
``seed + i``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.attribution import attribute
from tl_capability.data import CapabilityDataset
from tl_capability.empirical_neg import empirical_neg
from tl_capability.evaluate import accuracy
from tl_capability.masks import NeuronMask, random_controls
from tl_capability.options import check_positive_int
from tl_capability.tables import Row, Table, mean_ci


@dataclass(frozen=True)
class AgreementRow(Row):
    """NeurGrad against interventions on one dataset.

    Attributes:
        dataset: The dataset's name.
        neurons: Number of top neurons measured.
        samples: Number of samples.
        sign_agreement: Share of (sample, neuron) pairs where NeurGrad and the interventional
            NEG have the same sign.
        correlation: Their Pearson correlation over (sample, neuron) pairs.
        mean_abs_error: Their mean absolute difference.
        median_abs_r: Median |r| of the interventions (how linear they are).
        p10_abs_r: 10th percentile of that |r|.
    """

    dataset: str | None
    neurons: int
    samples: int
    sign_agreement: float
    correlation: float
    mean_abs_error: float
    median_abs_r: float
    p10_abs_r: float


@dataclass(frozen=True)
class NeurgradAgreementResult(Table):
    """What [`neurgrad_agreement`][tl_capability.experiments.neurgrad.neurgrad_agreement] measured.

    Attributes:
        rows: One row.
        neurons: ``(layer, index)`` of the top neurons measured.
        predicted: NeurGrad of each sample and neuron.
        measured: The interventional NEG (slope) of each sample and neuron.
    """

    rows: tuple[AgreementRow, ...]
    neurons: Int[Tensor, "neuron 2"] = field(compare=False)
    predicted: Float[Tensor, "sample neuron"] = field(compare=False)
    measured: Float[Tensor, "sample neuron"] = field(compare=False)


@dataclass(frozen=True)
class LinearityRow(Row):
    """One neuron's interventions.

    Attributes:
        group: ``"top"`` (by mean |NeurGrad|) or ``"random"``.
        layer: The neuron's layer.
        index: Its index in the layer.
        abs_r: Mean over samples of |Pearson r| of activation shift and probability change.
        neg: Mean over samples of the NEG (slope).
    """

    group: str
    layer: int
    index: int
    abs_r: float
    neg: float


@dataclass(frozen=True)
class LinearityResult(Table):
    """What [`linearity`][tl_capability.experiments.neurgrad.linearity] measured.

    Attributes:
        rows: The top neurons (in ranking order), then the random ones (sorted).
        dataset: The dataset's name.
        top: The top neurons by mean |NeurGrad|.
        random: The random neurons, drawn outside ``top``.
        seed: Seed of the random neurons.
    """

    rows: tuple[LinearityRow, ...]
    dataset: str | None
    top: NeuronMask
    random: NeuronMask
    seed: int


@dataclass(frozen=True)
class SkillProbeRow(Row):
    """One predictor of the test labels.

    Attributes:
        predictor: What predicts (skill neurons, random neurons, the model, chance).
        accuracy: Test accuracy, in percent (random neurons: the mean over draws).
        ci95: Half-width of the random draws' 95 % interval (0 for the others).
    """

    predictor: str
    accuracy: float
    ci95: float


@dataclass(frozen=True)
class SkillProbeResult(Table):
    """What [`skill_probe`][tl_capability.experiments.neurgrad.skill_probe] measured.

    Attributes:
        rows: Skill neurons, random neurons, the model itself, chance.
        dataset: The test split's name.
        k: Neurons per probe.
        skill: The ``k`` skill neurons.
        random: The random sets of ``k`` neurons.
        random_accuracies: The probe's test accuracy (percent) on each random set.
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).
    """

    rows: tuple[SkillProbeRow, ...]
    dataset: str | None
    k: int
    skill: NeuronMask
    random: tuple[NeuronMask, ...]
    random_accuracies: tuple[float, ...]
    seed: int


def neurgrad_agreement(
    model: Any, dataset: CapabilityDataset, *, top: int = 20, **neg_kwargs: Any
) -> NeurgradAgreementResult:
    """NeurGrad vs empirical NEG on the ``top`` neurons by mean |NeurGrad|.

    Returns:
        One row: sign agreement, Pearson correlation and mean absolute error over (sample,
        neuron) pairs, and the median and 10th percentile of |r| of the interventions; and
        both sets of numbers (``predicted``, ``measured``) for a scatter plot.
    """
    grads = attribute(model, dataset, "neurgrad", per_sample=True, progress=False)
    neurons = grads.top(top, absolute=True)
    measured = empirical_neg(model, dataset, neurons, progress=False, **neg_kwargs)
    predicted = grads.per_sample[:, neurons[:, 0], neurons[:, 1]]
    p, m = predicted.flatten(), measured.slope.flatten()
    r = measured.r.abs().flatten()
    row = AgreementRow(
        dataset=dataset.name,
        neurons=top,
        samples=len(dataset),
        sign_agreement=(p.sign() == m.sign()).float().mean().item(),
        correlation=torch.corrcoef(torch.stack([p, m]))[0, 1].item(),
        mean_abs_error=(p - m).abs().mean().item(),
        median_abs_r=r.median().item(),
        p10_abs_r=r.quantile(0.1).item(),
    )
    return NeurgradAgreementResult(
        "NeurGrad against interventions", (row,), neurons, predicted, measured.slope
    )


def linearity(
    model: Any,
    dataset: CapabilityDataset,
    *,
    top: int = 20,
    n_random: int = 20,
    seed: int = 0,
    **neg_kwargs: Any,
) -> LinearityResult:
    """How linear the answer probability is in each neuron's activation (NEG paper, Fig. 2).

    Interventions ([`empirical_neg`][tl_capability.empirical_neg.empirical_neg]) on the ``top``
    neurons by mean
    |NeurGrad| and on ``n_random`` other neurons drawn with ``seed`` anywhere outside them
    (``random_controls(top_set, 1, seed=seed, per_layer=False, exclude=top_set,
    size=n_random)``).

    Returns:
        One row per neuron: its group (``"top"`` or ``"random"``), layer, index, the mean over
        samples of ``|r|`` (the Pearson r of one sample's shifts and probability changes; its
        sign is the NEG's, which may differ between samples) and of the NEG (slope). A neuron
        whose shifts change nothing gets r = 0 (no linear effect to speak of).
    """
    grads = attribute(model, dataset, "neurgrad", progress=False)
    chosen = grads.ranking(absolute=True)[:top]
    site = grads.params.get("site") or "post"
    top_set = NeuronMask.from_indices(chosen, *grads.values.shape, site=site)
    (random_set,) = random_controls(
        top_set, 1, seed=seed, per_layer=False, exclude=top_set, size=n_random
    )
    neurons = torch.cat([chosen, random_set.indices()])
    measured = empirical_neg(model, dataset, neurons, progress=False, **neg_kwargs)
    r, slope = measured.r.abs().mean(0), measured.slope.mean(0)
    rows = tuple(
        LinearityRow(
            group="top" if i < len(chosen) else "random",
            layer=int(neurons[i, 0]),
            index=int(neurons[i, 1]),
            abs_r=float(r[i]),
            neg=float(slope[i]),
        )
        for i in range(len(neurons))
    )
    return LinearityResult(
        f"Linearity of the answer probability in each neuron ({dataset.name})",
        rows,
        dataset.name,
        top_set,
        random_set,
        seed,
    )


def option_neg(
    model: Any, dataset: CapabilityDataset
) -> Float[Tensor, "sample option layer d_mlp"]:
    """NeurGrad of every neuron for every answer option of a multiple-choice dataset."""
    if not dataset.is_multiple_choice:
        raise ValueError("a multiple-choice dataset (choices and label columns) is needed")
    choices = dataset.data["choices"]
    n_options = {len(c) for c in choices}
    if len(n_options) != 1:
        raise ValueError("every sample needs the same number of options")
    per_option = []
    for o in range(n_options.pop()):
        as_option = CapabilityDataset.from_pairs(dataset.prompts, [c[o] for c in choices])
        scores = attribute(model, as_option, "neurgrad", per_sample=True, progress=False)
        per_option.append(scores.per_sample)
    return torch.stack(per_option, dim=1)


def _votes(neg: Tensor) -> Tensor:
    """Each neuron's vote: the option whose probability it pushes up most."""
    return neg.argmax(1)  # [sample, layer, d_mlp]


def skill_probe(
    model: Any,
    train: CapabilityDataset,
    test: CapabilityDataset,
    *,
    k: int = 10,
    n_random: int = 5,
    seed: int = 0,
) -> SkillProbeResult:
    """The skill-neuron probe: top-``k`` neurons by train vote accuracy predict the test split.

    Args:
        model: The model.
        train: Multiple-choice data to measure each neuron's vote accuracy on.
        test: Multiple-choice data to predict.
        k: Neurons per probe.
        n_random: Random sets of ``k`` neurons, drawn anywhere
            (``random_controls(skill, n_random, seed=seed, per_layer=False)``).
        seed: Seed of the first random set (set ``i`` uses ``seed + i``).

    Returns:
        Rows for the skill-neuron probe, the random-neuron probe (mean ± 95 % over
        ``n_random`` draws) and the model's own accuracy on the test split, in percent.
    """
    check_positive_int(n_random, "n_random")
    train_votes = _votes(option_neg(model, train))
    shape = train_votes.shape[1:]
    labels = torch.tensor(train.data["label"])
    n_options = len(train.data["choices"][0])
    neuron_acc = (train_votes == labels[:, None, None]).float().mean(0).flatten()
    weight = (neuron_acc - 1 / n_options).clamp_min(0)
    test_votes = _votes(option_neg(model, test)).flatten(1)
    test_labels = torch.tensor(test.data["label"])

    def probe(index: Tensor) -> float:
        tally = torch.zeros(len(test), n_options)
        # Neurons no better than chance on train get no weight; if none is, count votes equally.
        w = weight[index] if weight[index].sum() > 0 else torch.ones(len(index))
        tally.scatter_add_(1, test_votes[:, index], w.expand(len(test), -1).contiguous())
        return 100 * (tally.argmax(1) == test_labels).float().mean().item()

    def flat(mask: NeuronMask) -> Tensor:
        return mask.tensor.flatten().nonzero().squeeze(1)

    chosen = torch.zeros(neuron_acc.shape, dtype=torch.bool)
    chosen[neuron_acc.topk(k).indices] = True
    skill = NeuronMask(chosen.view(shape), selection={"rule": "skill_probe", "k": k})
    randoms = random_controls(skill, n_random, seed=seed, per_layer=False)
    random_accuracies = tuple(probe(flat(m)) for m in randoms)
    mean, half = mean_ci(random_accuracies)
    own = 100 * accuracy(model, test)
    return SkillProbeResult(
        f"Skill-neuron probe on {test.name or 'the test split'} (k = {k})",
        (
            SkillProbeRow(f"top-{k} skill neurons", probe(flat(skill)), 0.0),
            SkillProbeRow(f"{k} random neurons", mean, half),
            SkillProbeRow("the model itself", own, 0.0),
            SkillProbeRow("chance", 100 / n_options, 0.0),
        ),
        test.name,
        k,
        skill,
        randoms,
        random_accuracies,
        seed,
    )
