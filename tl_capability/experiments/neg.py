"""Neuron-empirical-gradient experiments (Zhao et al., ACL 2025), with random controls.

- :func:`neurgrad_agreement`: NeurGrad against interventions on the top neurons — sign
  agreement, correlation, error — and how linear the interventions are (Pearson r).
- :func:`linearity`: the distribution over neurons of the Pearson r between activation shift
  and answer-probability change, for the top neurons by NeurGrad and for random neurons.
- :func:`skill_probe`: the skill-neuron probe on a multiple-choice dataset.

The skill-neuron probe, as implemented here: for every sample and answer option ``o``, NeurGrad
gives each neuron's NEG for ``P(o)``; the neuron *votes* for the option it pushes up most
(``argmax_o NEG_o``). On the train split each neuron's vote accuracy is measured; the ``k``
most accurate neurons (k = 10 in the paper) are the skill neurons. A test sample is predicted
by their votes, each weighted by the neuron's train accuracy above chance. The same probe on
``k`` random neurons, and the model's own accuracy, are the references.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability.attribution import attribute
from tl_capability.data import CapabilityDataset
from tl_capability.evaluate import accuracy
from tl_capability.experiments._results import Table, mean_ci
from tl_capability.neg import empirical_neg


def neurgrad_agreement(
    model: Any, dataset: CapabilityDataset, *, top: int = 20, **neg_kwargs: Any
) -> Table:
    """NeurGrad vs empirical NEG on the ``top`` neurons by mean |NeurGrad|.

    Returns:
        One row: sign agreement, Pearson correlation and mean absolute error over (sample,
        neuron) pairs, and the median and 10th percentile of |r| of the interventions.
    """
    grads = attribute(model, dataset, "neurgrad", per_sample=True, progress=False)
    neurons = grads.top(top, absolute=True)
    measured = empirical_neg(model, dataset, neurons, progress=False, **neg_kwargs)
    predicted = grads.per_sample[:, neurons[:, 0], neurons[:, 1]]
    p, m = predicted.flatten(), measured.slope.flatten()
    r = measured.r.abs().flatten()
    return Table(
        "NeurGrad against interventions",
        (
            {
                "dataset": dataset.name,
                "neurons": top,
                "samples": len(dataset),
                "sign_agreement": (p.sign() == m.sign()).float().mean().item(),
                "correlation": torch.corrcoef(torch.stack([p, m]))[0, 1].item(),
                "mean_abs_error": (p - m).abs().mean().item(),
                "median_abs_r": r.median().item(),
                "p10_abs_r": r.quantile(0.1).item(),
            },
        ),
    )


def linearity(
    model: Any,
    dataset: CapabilityDataset,
    *,
    top: int = 20,
    n_random: int = 20,
    seed: int = 0,
    **neg_kwargs: Any,
) -> Table:
    """How linear the answer probability is in each neuron's activation (NEG paper, Fig. 2).

    Interventions (:func:`~tl_capability.neg.empirical_neg`) on the ``top`` neurons by mean
    |NeurGrad| and on ``n_random`` other neurons drawn with ``seed``.

    Returns:
        One row per neuron: its group (``"top"`` or ``"random"``), layer, index, the mean over
        samples of ``|r|`` (the Pearson r of one sample's shifts and probability changes; its
        sign is the NEG's, which may differ between samples) and of the NEG (slope). A neuron
        whose shifts change nothing gets r = 0 (no linear effect to speak of).
    """
    grads = attribute(model, dataset, "neurgrad", progress=False)
    order = grads.ranking(absolute=True)
    chosen = order[:top]
    rest = order[top:]
    generator = torch.Generator().manual_seed(seed)
    randoms = rest[torch.randperm(len(rest), generator=generator)[:n_random]]
    neurons = torch.cat([chosen, randoms])
    measured = empirical_neg(model, dataset, neurons, progress=False, **neg_kwargs)
    r, slope = measured.r.abs().mean(0), measured.slope.mean(0)
    rows = tuple(
        {
            "group": "top" if i < len(chosen) else "random",
            "layer": int(neurons[i, 0]),
            "index": int(neurons[i, 1]),
            "abs_r": float(r[i]),
            "neg": float(slope[i]),
        }
        for i in range(len(neurons))
    )
    return Table(f"Linearity of the answer probability in each neuron ({dataset.name})", rows)


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
) -> Table:
    """The skill-neuron probe: top-``k`` neurons by train vote accuracy predict the test split.

    Returns:
        Rows for the skill-neuron probe, the random-neuron probe (mean ± 95 % over
        ``n_random`` draws) and the model's own accuracy on the test split, in percent.
    """
    train_votes = _votes(option_neg(model, train))
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

    skill = neuron_acc.topk(k).indices
    gen = torch.Generator().manual_seed(0)
    randoms = [probe(torch.randperm(len(neuron_acc), generator=gen)[:k]) for _ in range(n_random)]
    mean, half = mean_ci(randoms)
    own = 100 * accuracy(model, test)
    return Table(
        f"Skill-neuron probe on {test.name or 'the test split'} (k = {k})",
        (
            {"predictor": f"top-{k} skill neurons", "accuracy": probe(skill), "ci95": 0.0},
            {"predictor": f"{k} random neurons", "accuracy": mean, "ci95": half},
            {"predictor": "the model itself", "accuracy": own, "ci95": 0.0},
            {"predictor": "chance", "accuracy": 100 / n_options, "ci95": 0.0},
        ),
    )
