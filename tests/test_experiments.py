"""Experiments: their numbers equal the same measurements made by hand.

Every random number is checked against the sets of :func:`tl_capability.masks.random_controls`
applied by hand, with a seed other than the default, so that an experiment that ignored its
seed (or drew its sets another way) would fail.
"""

import math
import warnings
from itertools import combinations

import pytest
import torch

from tl_capability import (
    CapabilityDataset,
    ablate,
    accuracy,
    answer_probability,
    attribute,
    select,
    zoo,
)
from tl_capability.experiments import (
    AmplifyResult,
    AmplifyRow,
    EraseResult,
    EraseRow,
    SplitOverlapRow,
    Table,
    amplify,
    erase,
    mean_ci,
    split_overlap,
)
from tl_capability.masks import NeuronMask, random_controls

N_NEURONS = 4 * 512  # the zoo model's MLP neurons


def by_hand_overlap(a: NeuronMask, b: NeuronMask) -> tuple[float, float]:
    """The CNL overlap and the IoU from set arithmetic on the index sets."""
    sa = {tuple(p) for p in a.indices().tolist()}
    sb = {tuple(p) for p in b.indices().tolist()}
    both = len(sa & sb)
    if not sa or not sb:
        return float(sa == sb), float(sa == sb)
    return (both / len(sa) + both / len(sb)) / 2, both / len(sa | sb)


def drops_under(model, masks, data, base, mode="zero", **kwargs) -> list[float]:
    """Accuracy drops (points) of ``data`` with each mask intervened on, measured by hand."""
    drops = []
    for mask in masks:
        with ablate(model, mask, mode, **kwargs):
            drops.append(100 * (base - accuracy(model, data)))
    return drops


def test_mean_ci():
    assert mean_ci([2.0]) == (2.0, 0.0)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * (1 / 3) ** 0.5)
    with pytest.raises(ValueError):
        mean_ci([])


def test_rows_are_typed_and_still_read_like_dicts():
    row = EraseRow("a", 2.0, 3, "b", 90.0, 40.0, 50.0, 1.0, 0.5)
    assert row.drop == row["drop"] == 50.0
    assert dict(row) == {
        "located": "a", "sigma": 2.0, "neurons": 3, "evaluated": "b", "base": 90.0,
        "erased": 40.0, "drop": 50.0, "random_drop": 1.0, "random_ci95": 0.5,
    }  # fmt: skip
    assert "drop" in row and "nope" not in row and row.get("nope") is None
    with pytest.raises(KeyError):
        row["nope"]
    with pytest.raises(AttributeError):
        row.drop = 0.0  # frozen
    result = EraseResult("t", (row,), (2.0,), 1, 0)
    assert isinstance(result, Table)
    assert list(result.to_frame().columns) == list(row)
    assert result.to_frame()["drop"].tolist() == [50.0]
    assert result.to_markdown().startswith("### t\n\n| located")
    assert result.cell("a", "b", 2.0) is row and result.at(3.0) == ()


def test_split_overlap_matches_manual_masks(zoo_model):
    data = zoo.dataset("sentiment", n=24, split="train")
    result = split_overlap(
        zoo_model, {"sentiment": data}, sigmas=(3.0, 6.0), seed=3, method="grad_x_act"
    )
    assert isinstance(result, Table) and len(result.rows) == 2
    assert result.sigmas == (3.0, 6.0) and result.seed == 3
    a, b = data.split(0.5, seed=3)
    sa = attribute(zoo_model, a, "grad_x_act", progress=False)
    sb = attribute(zoo_model, b, "grad_x_act", progress=False)
    for row, sigma in zip(result.rows, (3.0, 6.0), strict=True):
        ma, mb = select(sa, sigma=sigma), select(sb, sigma=sigma)
        assert isinstance(row, SplitOverlapRow) and (row.capability, row.sigma) == (
            "sentiment",
            sigma,
        )
        assert (row.neurons_a, row.neurons_b) == (len(ma), len(mb))
        assert row.fraction == pytest.approx((len(ma) + len(mb)) / (2 * N_NEURONS))
        overlap, iou = by_hand_overlap(ma, mb)
        assert row.overlap == pytest.approx(overlap) and row["iou"] == pytest.approx(iou)
    frame = result.to_frame()
    assert list(frame.columns) == list(result.rows[0])
    assert result.to_markdown().startswith("### Located neurons")


def test_erase_matches_manual_ablation_and_its_random_sets(zoo_model):
    locate = {"sentiment": zoo.dataset("sentiment", n=16, split="train")}
    evaluate = {n: zoo.dataset(n, n=40, seed=4) for n in ("sentiment", "addition")}
    result = erase(
        zoo_model, locate, evaluate, sigmas=(3.0,), n_random=2, seed=4, method="grad_x_act"
    )
    assert isinstance(result, EraseResult) and len(result.rows) == 2
    assert (result.sigmas, result.n_random, result.seed, result.mode) == ((3.0,), 2, 4, "zero")
    mask = select(
        attribute(zoo_model, locate["sentiment"], "grad_x_act", progress=False), sigma=3.0
    )
    controls = random_controls(mask, 2, seed=4)
    for row in result.rows:
        assert isinstance(row, EraseRow)
        data = evaluate[row.evaluated]
        base = accuracy(zoo_model, data)
        (erased_drop,) = drops_under(zoo_model, [mask], data, base)
        random_drops = drops_under(zoo_model, controls, data, base)
        assert (row.located, row.sigma, row.neurons) == ("sentiment", 3.0, len(mask))
        assert row.base == pytest.approx(100 * base)
        assert row.erased == pytest.approx(100 * base - erased_drop)
        assert row.drop == pytest.approx(erased_drop)
        mean, half = mean_ci(random_drops)
        assert row.random_drop == pytest.approx(mean)
        assert row.random_ci95 == pytest.approx(half)
    # The seed matters here: sets 0 and 1 give other drops on addition than sets 4 and 5.
    addition = result.cell("sentiment", "addition", 3.0)
    default_sets = drops_under(
        zoo_model, random_controls(mask, 2, seed=0), evaluate["addition"], addition.base / 100
    )
    assert mean_ci(default_sets) != pytest.approx((addition.random_drop, addition.random_ci95))
    with pytest.raises(ValueError, match="n_random"):
        erase(zoo_model, locate, evaluate, n_random=0)
    with pytest.raises(TypeError, match="mode"):  # erase zeroes; amplify scales
        erase(zoo_model, locate, evaluate, mode="scale")


def test_amplify_matches_manual_scaling_and_its_random_sets(zoo_model):
    locate = {n: zoo.dataset(n, n=16, split="train") for n in ("sentiment", "sort")}
    evaluate = {"addition": zoo.dataset("addition", n=40, seed=4)}
    scores = {n: attribute(zoo_model, d, "grad_x_act", progress=False) for n, d in locate.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # amplify itself is not deprecated
        result = amplify(
            zoo_model, locate, evaluate, factor=3.0, sigmas=(3.0,), n_random=2, seed=2,
            scores=scores,
        )  # fmt: skip
    assert isinstance(result, AmplifyResult) and result.factor == 3.0
    assert "amplified (×3" in result.title
    assert [(r.located, r.evaluated) for r in result.rows] == [
        ("sentiment", "addition"),
        ("sort", "addition"),
    ]
    data = evaluate["addition"]
    base = accuracy(zoo_model, data)
    for row in result.rows:
        assert isinstance(row, AmplifyRow)
        mask = select(scores[row.located], sigma=3.0)
        (drop,) = drops_under(zoo_model, [mask], data, base, "scale", factor=3.0)
        randoms = drops_under(
            zoo_model, random_controls(mask, 2, seed=2), data, base, "scale", factor=3.0
        )
        assert row.neurons == len(mask)
        assert row.amplified == pytest.approx(100 * base - drop)
        assert row.drop == pytest.approx(drop)
        assert (row.random_drop, row.random_ci95) == pytest.approx(mean_ci(randoms))
    with pytest.raises(ValueError, match="n_random"):
        amplify(zoo_model, locate, evaluate, n_random=0, scores=scores)


def test_overlap_matrix_is_set_arithmetic(zoo_model):
    from tl_capability.experiments import OverlapMatrixResult, overlap_matrix

    mask = select(
        attribute(zoo_model, zoo.dataset("sentiment", n=12), "grad_x_act", progress=False)
    )
    masks = {"a": mask, "b": random_controls(mask, 1, seed=1)[0], "none": mask - mask}
    result = overlap_matrix(masks)
    assert isinstance(result, OverlapMatrixResult) and result.names == ("a", "b", "none")
    assert [(r.a, r.b) for r in result.rows] == [(a, b) for a in masks for b in masks]
    for row in result.rows:
        overlap, iou = by_hand_overlap(masks[row.a], masks[row.b])
        assert row.overlap == pytest.approx(overlap) and row.iou == pytest.approx(iou)


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


def test_fidelity_matches_manual_pairwise_overlap(zoo_model):
    from tl_capability import coarse_masks, refine
    from tl_capability.experiments import FidelityResult, fidelity

    facts = {entity: zoo.fact_dataset(entity) for entity, _ in zoo.ENTITIES[:3]}
    result = fidelity(zoo_model, facts, steps=4)
    assert isinstance(result, FidelityResult)
    rows = {row.fact: row for row in result.rows}
    assert set(rows) == {*facts, "mean", "different facts"}
    firsts = []
    for entity, data in facts.items():
        masks = coarse_masks(
            attribute(zoo_model, data, steps=4, per_sample=True, progress=False), 0.2
        )
        firsts.append(masks[0])
        pairs = [by_hand_overlap(a, b) for a, b in combinations(masks, 2)]
        row = rows[entity]
        assert row.paraphrases == len(data)
        assert row.coarse_per_prompt == pytest.approx(sum(len(m) for m in masks) / len(masks))
        assert row.overlap == pytest.approx(sum(o for o, _ in pairs) / len(pairs))
        assert row.iou == pytest.approx(sum(i for _, i in pairs) / len(pairs))
        assert result.masks[entity] == refine(masks, 0.7)
        assert row.refined == len(result.masks[entity])
    overlaps = [rows[e].overlap for e in facts]
    assert (rows["mean"].overlap, rows["mean"].ci95) == pytest.approx(mean_ci(overlaps))
    assert result.mean_overlap == rows["mean"].overlap
    different = [by_hand_overlap(a, b)[0] for a, b in combinations(firsts, 2)]
    assert (rows["different facts"].overlap, rows["different facts"].ci95) == pytest.approx(
        mean_ci(different)
    )
    assert [r.fact for r in result.summary] == ["mean", "different facts"]
    with pytest.raises(ValueError, match="two paraphrases"):
        fidelity(zoo_model, {"x": facts[entity].select([0])})


def test_fidelity_masks_are_the_knowledge_neurons(zoo_model):
    from tl_capability.experiments import fidelity, knowledge_neurons

    facts = {entity: zoo.fact_dataset(entity) for entity, _ in zoo.ENTITIES[:2]}
    assert fidelity(zoo_model, facts, steps=2).masks == knowledge_neurons(zoo_model, facts, steps=2)


def test_enhancement_rows_are_fine_tuning_by_hand(zoo_model):
    from tl_capability import finetune_neurons
    from tl_capability.experiments import EnhancementResult, enhancement

    before = {k: v.detach().clone() for k, v in zoo_model.state_dict().items()}
    train = zoo.dataset("addition", n=16, split="train")
    test = zoo.dataset("addition", n=20)
    mask = select(attribute(zoo_model, train, "grad_x_act", progress=False), top_k=10)
    result = enhancement(zoo_model, train, test, mask, epochs=(1, 2), noise=1.0, seed=3)
    after = zoo_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(result, EnhancementResult) and result.dataset == "addition"
    assert result.located == mask and result.random == random_controls(mask, 1, seed=3)[0]
    labels = [(r.neurons, r.epochs) for r in result.rows]
    assert labels == [(s, e) for s in ("located", "random", "all but located") for e in (0, 1, 2)]
    counts = {r.neurons: r.count for r in result.rows}
    assert counts == {"located": 10, "random": 10, "all but located": N_NEURONS - 10}

    # By hand: the same noise, then the random set fine-tuned for one epoch, then another.
    gen = torch.Generator().manual_seed(3)
    try:
        with torch.no_grad():
            for block in zoo_model.blocks:
                for p in block.mlp.parameters():
                    if p.dim() >= 2:
                        p.add_(1.0 * p.std() * torch.randn(p.shape, generator=gen))
        expected = [100 * accuracy(zoo_model, test)]
        for done in (0, 1):
            finetune_neurons(zoo_model, result.random, train, lr=1e-3, seed=3 + done,
                             progress=False)  # fmt: skip
            expected.append(100 * accuracy(zoo_model, test))
    finally:
        zoo_model.load_state_dict(before)
    got = [r.accuracy for r in result.rows if r.neurons == "random"]
    assert got == pytest.approx(expected)
    assert {r.accuracy for r in result.rows if r.epochs == 0} == {expected[0]}


def test_reliability_matches_manual_suppression(zoo_model):
    from tl_capability.experiments import ReliabilityResult, reliability

    data = {"sentiment": zoo.dataset("sentiment", n=16, seed=5)}
    mask = select(attribute(zoo_model, data["sentiment"], "grad_x_act", progress=False), top_k=8)
    empty = select(torch.zeros(4, 512), top_k=0)
    result = reliability(
        zoo_model, {"sentiment": mask, "none": empty}, data | {"none": data["sentiment"]},
        n_random=3, seed=5,
    )  # fmt: skip
    assert isinstance(result, ReliabilityResult) and (result.n_random, result.seed) == (3, 5)
    row = result.rows[0]

    def probability() -> float:
        return answer_probability(zoo_model, data["sentiment"]).mean().item()

    base = probability()
    with ablate(zoo_model, mask):
        located = base - probability()
    randoms = []
    for control in random_controls(mask, 3, seed=5):
        with ablate(zoo_model, control):
            randoms.append(base - probability())
    assert row.base_prob == pytest.approx(base)
    assert row.located_effect == pytest.approx(located, abs=1e-6)
    assert row.best_random_effect == pytest.approx(max(randoms), abs=1e-6)
    assert row.mean_random_effect == pytest.approx(sum(randoms) / 3, abs=1e-6)
    assert row.beats_best_random == (located > max(randoms))
    assert result.rows[1].beats_best_random is False  # an empty set never wins
    assert result.ipp == result.rows[-1]["beats_best_random"] == row.beats_best_random / 2
    with pytest.raises(ValueError, match="no dataset"):
        reliability(zoo_model, {"other": mask}, data)


def test_decoupling_follows_the_poster_formula(zoo_model):
    from tl_capability.experiments import DecouplingResult, decoupling
    from tl_capability.masks import coarse_masks

    first, second = zoo.addition_pairs(6, seed=1)
    assert [p.split("+")[0] for p in first.data["prompt"]] == [
        p.split("+")[0] for p in second.data["prompt"]
    ]
    result = decoupling(zoo_model, first, second, method="grad_x_act")
    assert isinstance(result, DecouplingResult)
    a = coarse_masks(attribute(zoo_model, first, "grad_x_act", per_sample=True, progress=False))
    b = coarse_masks(attribute(zoo_model, second, "grad_x_act", per_sample=True, progress=False))
    rows = {r.rate: r for r in result.rows}
    assert list(rows) == ["C(1,2)", "C(1,1)", "C(2,2)"]
    paired = sum(len(x & y) for x, y in zip(a, b, strict=True)) / 6
    mean_size = sum(len(m) for m in a + b) / 12
    assert rows["C(1,2)"].value == pytest.approx(paired / N_NEURONS)
    assert rows["C(1,2)"].neurons == pytest.approx(paired)
    assert rows["C(1,2)"].relative == pytest.approx(paired / mean_size)
    for label, group in (("C(1,1)", a), ("C(2,2)", b)):
        common = group[0]
        for m in group[1:]:
            common = common & m
        own = sum(len(m) for m in group) / len(group)
        assert rows[label].neurons == len(common)
        assert rows[label].value == pytest.approx(len(common) / N_NEURONS)
        assert rows[label].relative == pytest.approx(len(common) / own)
    with pytest.raises(ValueError, match="aligned"):
        decoupling(zoo_model, first, second.select(range(3)))


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


def test_erase_curve_random_drops_are_the_blocks_sets(zoo_model):
    from tl_capability.curves import erase_curve

    target = zoo.dataset("addition", n=40, seed=4)
    scores = attribute(zoo_model, zoo.dataset("sentiment", n=16), "grad_x_act", progress=False)
    curve = erase_curve(zoo_model, scores, target, sizes=[30], n_random=2, seed=5,
                        progress=False)  # fmt: skip
    base = accuracy(zoo_model, target)
    hand = drops_under(zoo_model, random_controls(curve.mask_at(30), 2, seed=5), target, base)
    assert curve.random_runs[0] == pytest.approx(hand)
    assert (curve.random_drop[0], curve.random_ci[0]) == pytest.approx(mean_ci(hand))


def test_localization_is_the_experiments_it_bundles(zoo_model):
    from tl_capability.experiments import (
        LocalizationResult,
        localization_suite,
        overlap_matrix,
    )

    locate = {n: zoo.dataset(n, n=12, split="train") for n in ("sentiment", "sort")}
    evaluate = {n: zoo.dataset(n, n=20, seed=4) for n in ("sentiment", "sort")}
    stages = []
    found = localization_suite(
        zoo_model, locate, evaluate, sigmas=(2.0, 3.0), n_random=2, seed=1, factor=3.0,
        stage=stages.append, method="grad_x_act",
    )  # fmt: skip
    assert isinstance(found, LocalizationResult) and found.sigma == 2.0
    assert stages == ["accuracy", "locate", "split overlap", "erase", "amplify"]
    assert [(r.capability, r.accuracy) for r in found.accuracy.rows] == [
        (n, pytest.approx(100 * accuracy(zoo_model, d))) for n, d in evaluate.items()
    ]
    for name, data in locate.items():
        expected = attribute(zoo_model, data, "grad_x_act", progress=False)
        torch.testing.assert_close(found.scores[name].values, expected.values)
        assert found.masks[name] == select(expected, sigma=2.0)
    kwargs = {"sigmas": (2.0, 3.0), "seed": 1, "method": "grad_x_act"}
    assert found.halves == split_overlap(zoo_model, locate, **kwargs)
    assert found.erased == erase(zoo_model, locate, evaluate, n_random=2, scores=found.scores,
                                 **kwargs)  # fmt: skip
    assert found.amplified == amplify(zoo_model, locate, evaluate, factor=3.0, sigmas=(2.0,),
                                      n_random=1, seed=1, scores=found.scores)  # fmt: skip
    assert found.overlaps == overlap_matrix(found.masks)
    with pytest.raises(ValueError, match="sigmas"):
        localization_suite(zoo_model, locate, evaluate, sigmas=())


def test_fact_edits_match_manual_interventions_and_undo(zoo_model):
    from tl_capability.edits import edit_knowledge
    from tl_capability.experiments import FactEditResult, fact_edits

    facts = {e: zoo.fact_dataset(e) for e, _ in zoo.ENTITIES[:2]}
    first, second = facts
    masks = {
        n: select(attribute(zoo_model, d, "grad_x_act", progress=False), top_k=6)
        for n, d in facts.items()
    }
    masks[second] = select(torch.zeros(4, 512), top_k=0)  # an empty set: a row of NaNs
    result = fact_edits(zoo_model, masks, facts, n_random=2, seed=3)
    assert isinstance(result, FactEditResult) and len(result.rows) == 2
    row, empty = result.rows
    data = facts[first]

    def probability(d=data) -> float:
        return 100 * answer_probability(zoo_model, d).mean().item()

    with ablate(zoo_model, masks[first]):
        suppressed = probability()
    with ablate(zoo_model, masks[first], "scale", factor=2.0):
        amplified = probability()
    randoms = []
    for control in random_controls(masks[first], 2, seed=3):
        with ablate(zoo_model, control):
            randoms.append(probability())
    new = facts[second].answers[0]
    renamed = CapabilityDataset.from_pairs(data.prompts, [new] * len(data))
    before = {k: v.clone() for k, v in zoo_model.state_dict().items()}
    handle = edit_knowledge(zoo_model, masks[first], data.answers[0], new)
    edited = probability(renamed)
    handle.undo()
    assert (row.neurons, row.new_answer, row.undone) == (6, new, True)
    assert row.p_clean == pytest.approx(probability(), abs=1e-4)
    assert row.p_suppressed == pytest.approx(suppressed, abs=1e-4)
    assert row.p_amplified == pytest.approx(amplified, abs=1e-4)
    assert row.p_suppressed_random == pytest.approx(sum(randoms) / 2, abs=1e-4)
    assert row.p_new_before == pytest.approx(probability(renamed), abs=1e-4)
    assert row.p_new_after == pytest.approx(edited, abs=1e-4)
    assert all(torch.equal(v, zoo_model.state_dict()[k]) for k, v in before.items())
    assert empty.neurons == 0 and math.isnan(empty.p_suppressed)
    with pytest.raises(ValueError, match="at least two facts"):
        fact_edits(zoo_model, masks, {first: data})
    with pytest.raises(ValueError, match="no knowledge neurons"):
        fact_edits(zoo_model, {first: masks[first]}, facts)
