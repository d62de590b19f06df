"""The NEG paper's experiments: NeurGrad agreement, skill probe, linearity, by hand."""

import pytest
import torch

from tl_capability import (
    accuracy,
    attribute,
    zoo,
)
from tl_capability.experiments import (
    mean_ci,
)
from tl_capability.masks import NeuronMask, random_controls


def test_option_neg_of_the_right_option_is_the_answers_neurgrad(zoo_model):
    from tl_capability.experiments import option_neg

    data = zoo.dataset("choice", n=12)
    per_option = option_neg(zoo_model, data)
    assert per_option.shape == (12, 3, zoo_model.cfg.n_layers, zoo_model.cfg.d_mlp)
    own = attribute(zoo_model, data, "neurgrad", per_sample=True, progress=False).per_sample
    labels = torch.tensor(data.data["label"])
    torch.testing.assert_close(per_option[torch.arange(12), labels], own)
    with pytest.raises(ValueError, match="multiple-choice"):
        option_neg(zoo_model, zoo.dataset("addition", n=4))


def test_skill_probe_matches_a_probe_by_hand(zoo_model):
    from tl_capability.experiments import SkillProbeResult, option_neg, skill_probe

    train = zoo.dataset("choice", n=30, split="train")
    test = zoo.dataset("choice", n=30)
    result = skill_probe(zoo_model, train, test, k=5, n_random=3, seed=11)
    assert isinstance(result, SkillProbeResult) and (result.k, result.seed) == (5, 11)

    # The probe, written out: votes, vote accuracy on train, weighted votes on test.
    train_votes = option_neg(zoo_model, train).argmax(1).flatten(1)  # [sample, neuron]
    test_votes = option_neg(zoo_model, test).argmax(1).flatten(1)
    train_labels, test_labels = train.data["label"], test.data["label"]
    vote_acc = (train_votes == torch.tensor(train_labels)[:, None]).float().mean(0)
    weight = (vote_acc - 1 / 3).clamp_min(0)

    def probe(neurons: list[int]) -> float:
        w = weight[neurons] if weight[neurons].sum() > 0 else torch.ones(len(neurons))
        right = 0
        for s, label in enumerate(test_labels):
            tally = torch.zeros(3)
            for j, n in enumerate(neurons):
                tally[test_votes[s, n]] += w[j]
            right += int(tally.argmax()) == label
        return 100 * right / len(test_labels)

    skill = vote_acc.topk(5).indices.tolist()
    assert sorted(skill) == result.skill.tensor.flatten().nonzero().squeeze(1).tolist()
    controls = random_controls(result.skill, 3, seed=11, per_layer=False)
    assert result.random == controls
    randoms = [probe(m.tensor.flatten().nonzero().squeeze(1).tolist()) for m in controls]
    assert result.random_accuracies == pytest.approx(randoms)
    rows = {row.predictor: row for row in result.rows}
    assert set(rows) == {"top-5 skill neurons", "5 random neurons", "the model itself", "chance"}
    assert rows["top-5 skill neurons"].accuracy == pytest.approx(probe(skill))
    mean, half = mean_ci(randoms)
    assert (rows["5 random neurons"].accuracy, rows["5 random neurons"].ci95) == pytest.approx(
        (mean, half)
    )
    assert rows["the model itself"].accuracy == pytest.approx(100 * accuracy(zoo_model, test))
    assert rows["chance"].accuracy == pytest.approx(100 / 3)
    # The seed matters (it used to be hard-coded).
    other = skill_probe(zoo_model, train, test, k=5, n_random=3, seed=0)
    assert other.random != result.random


def test_neurgrad_agreement_matches_interventions_by_hand(zoo_model):
    from tl_capability.empirical_neg import empirical_neg
    from tl_capability.experiments import NeurgradAgreementResult, neurgrad_agreement

    data = zoo.dataset("sentiment", n=6)
    result = neurgrad_agreement(zoo_model, data, top=5)
    assert isinstance(result, NeurgradAgreementResult)
    grads = attribute(zoo_model, data, "neurgrad", per_sample=True, progress=False)
    neurons = grads.top(5, absolute=True)
    measured = empirical_neg(zoo_model, data, neurons, progress=False)
    predicted = torch.stack(
        [grads.per_sample[:, int(layer), int(index)] for layer, index in neurons], 1
    )
    torch.testing.assert_close(result.predicted, predicted)
    torch.testing.assert_close(result.measured, measured.slope)
    p, m = predicted.flatten().tolist(), measured.slope.flatten().tolist()
    agree = sum((x > 0) == (y > 0) for x, y in zip(p, m, strict=True)) / len(p)
    (row,) = result.rows
    assert (row.dataset, row.neurons, row.samples) == ("sentiment", 5, 6)
    assert row.sign_agreement == pytest.approx(agree)
    n = len(p)
    mp, mm = sum(p) / n, sum(m) / n
    cov = sum((x - mp) * (y - mm) for x, y in zip(p, m, strict=True))
    var_p, var_m = sum((x - mp) ** 2 for x in p), sum((y - mm) ** 2 for y in m)
    assert row.correlation == pytest.approx(cov / (var_p * var_m) ** 0.5, abs=1e-5)
    assert row.mean_abs_error == pytest.approx(
        sum(abs(x - y) for x, y in zip(p, m, strict=True)) / n, abs=1e-7
    )
    r = sorted(measured.r.abs().flatten().tolist())
    assert row.median_abs_r == pytest.approx(r[(len(r) - 1) // 2])  # torch's lower median


def test_linearity_rows_are_the_interventions_of_top_and_random_neurons(zoo_model):
    from tl_capability.empirical_neg import empirical_neg
    from tl_capability.experiments import LinearityResult, linearity

    data = zoo.dataset("sentiment", n=4, seed=6)
    result = linearity(zoo_model, data, top=3, n_random=2, seed=9, shifts=(0.5, 1.0))
    assert isinstance(result, LinearityResult) and result.dataset == "sentiment"
    assert [r.group for r in result.rows] == ["top"] * 3 + ["random"] * 2
    grads = attribute(zoo_model, data, "neurgrad", progress=False).values
    flat = grads.abs().flatten().topk(3).indices.tolist()
    top = [(i // 512, i % 512) for i in flat]
    assert [(r.layer, r.index) for r in result.rows[:3]] == top
    top_set = NeuronMask.from_indices(top, 4, 512)
    assert result.top == top_set
    (control,) = random_controls(top_set, 1, seed=9, per_layer=False, exclude=top_set, size=2)
    assert result.random == control
    assert [(r.layer, r.index) for r in result.rows[3:]] == [
        tuple(p) for p in control.indices().tolist()
    ]
    neurons = [(r.layer, r.index) for r in result.rows]
    measured = empirical_neg(zoo_model, data, neurons, shifts=(0.5, 1.0), progress=False)
    torch.testing.assert_close(
        torch.tensor([r.abs_r for r in result.rows]), measured.r.abs().mean(0)
    )
    torch.testing.assert_close(torch.tensor([r.neg for r in result.rows]), measured.slope.mean(0))
    other = linearity(zoo_model, data, top=3, n_random=2, seed=10, shifts=(0.5, 1.0))
    assert other.random != result.random  # the seed picks the random neurons
