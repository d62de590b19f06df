"""Experiments: their numbers equal the same measurements made by hand."""

import pytest

from tl_capability import ablate, accuracy, attribute, select, zoo
from tl_capability.experiments import Table, erase, mean_ci, split_overlap


def test_mean_ci():
    assert mean_ci([2.0]) == (2.0, 0.0)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * (1 / 3) ** 0.5)
    with pytest.raises(ValueError):
        mean_ci([])


def test_split_overlap_matches_manual_masks(zoo_model):
    data = zoo.dataset("sentiment", n=24, split="train")
    table = split_overlap(zoo_model, {"sentiment": data}, sigmas=(3.0, 6.0), method="grad_x_act")
    assert isinstance(table, Table) and len(table.rows) == 2
    a, b = data.split(0.5, seed=0)
    ma = select(attribute(zoo_model, a, "grad_x_act", progress=False), sigma=3.0)
    mb = select(attribute(zoo_model, b, "grad_x_act", progress=False), sigma=3.0)
    row = table.rows[0]
    assert (row["neurons_a"], row["neurons_b"]) == (len(ma), len(mb))
    assert row["overlap"] == pytest.approx(ma.overlap(mb))
    assert row["iou"] == pytest.approx(ma.iou(mb))
    assert 0 <= row["iou"] <= row["overlap"] <= 1
    frame = table.to_frame()
    assert list(frame.columns) == list(row)
    assert table.to_markdown().startswith("### Located neurons")


def test_erase_matches_manual_ablation(zoo_model):
    locate = {"sentiment": zoo.dataset("sentiment", n=16, split="train")}
    evaluate = {n: zoo.dataset(n, n=40, seed=4) for n in ("sentiment", "addition")}
    table = erase(zoo_model, locate, evaluate, sigmas=(3.0,), n_random=2, method="grad_x_act")
    assert len(table.rows) == 2
    mask = select(
        attribute(zoo_model, locate["sentiment"], "grad_x_act", progress=False), sigma=3.0
    )
    for row in table.rows:
        data = evaluate[row["evaluated"]]
        base = accuracy(zoo_model, data)
        with ablate(zoo_model, mask):
            erased = accuracy(zoo_model, data)
        drops = []
        for seed in range(2):
            with ablate(zoo_model, mask.random_like(seed=seed)):
                drops.append(100 * (base - accuracy(zoo_model, data)))
        assert row["neurons"] == len(mask)
        assert row["erased"] == pytest.approx(100 * erased)
        assert row["drop"] == pytest.approx(100 * (base - erased))
        assert row["random_drop"] == pytest.approx(mean_ci(drops)[0])
    with pytest.raises(ValueError, match="n_random"):
        erase(zoo_model, locate, evaluate, n_random=0)


def test_option_neg_of_the_right_option_is_the_answers_neurgrad(zoo_model):
    import torch

    from tl_capability.experiments import option_neg

    data = zoo.dataset("choice", n=12)
    per_option = option_neg(zoo_model, data)
    assert per_option.shape == (12, 3, zoo_model.cfg.n_layers, zoo_model.cfg.d_mlp)
    own = attribute(zoo_model, data, "neurgrad", per_sample=True, progress=False).per_sample
    labels = torch.tensor(data.data["label"])
    torch.testing.assert_close(per_option[torch.arange(12), labels], own)
    with pytest.raises(ValueError, match="multiple-choice"):
        option_neg(zoo_model, zoo.dataset("addition", n=4))


def test_skill_probe_and_neurgrad_agreement_tables(zoo_model):
    from tl_capability.experiments import neurgrad_agreement, skill_probe

    table = skill_probe(
        zoo_model,
        zoo.dataset("choice", n=30, split="train"),
        zoo.dataset("choice", n=30),
        k=5,
        n_random=3,
    )
    by = {row["predictor"]: row for row in table.rows}
    assert set(by) == {"top-5 skill neurons", "5 random neurons", "the model itself", "chance"}
    assert all(0 <= row["accuracy"] <= 100 for row in table.rows)
    assert by["the model itself"]["accuracy"] == pytest.approx(
        100 * accuracy(zoo_model, zoo.dataset("choice", n=30))
    )
    (row,) = neurgrad_agreement(zoo_model, zoo.dataset("sentiment", n=6), top=5).rows
    assert 0 <= row["sign_agreement"] <= 1 and -1 <= row["correlation"] <= 1
    assert 0 <= row["p10_abs_r"] <= row["median_abs_r"] <= 1


def test_fidelity_matches_manual_pairwise_overlap(zoo_model):
    from itertools import combinations

    from tl_capability import coarse_masks
    from tl_capability.experiments import fidelity

    facts = {entity: zoo.fact_dataset(entity) for entity, _ in zoo.ENTITIES[:3]}
    table = fidelity(zoo_model, facts, steps=4)
    rows = {row["fact"]: row for row in table.rows}
    assert set(rows) == {*facts, "mean", "different facts"}
    entity = next(iter(facts))
    masks = coarse_masks(
        attribute(zoo_model, facts[entity], steps=4, per_sample=True, progress=False), 0.2
    )
    pairs = list(combinations(masks, 2))
    assert rows[entity]["overlap"] == pytest.approx(sum(a.overlap(b) for a, b in pairs) / 6)
    assert rows["mean"]["overlap"] == pytest.approx(sum(rows[e]["overlap"] for e in facts) / 3)
    with pytest.raises(ValueError, match="two paraphrases"):
        fidelity(zoo_model, {"x": facts[entity].select([0])})


def test_enhancement_restores_the_model_and_reports_every_set(zoo_model):
    import torch

    from tl_capability.experiments import enhancement

    before = {k: v.detach().clone() for k, v in zoo_model.state_dict().items()}
    train = zoo.dataset("addition", n=16, split="train")
    test = zoo.dataset("addition", n=20)
    mask = select(attribute(zoo_model, train, "grad_x_act", progress=False), top_k=10)
    table = enhancement(zoo_model, train, test, mask, epochs=(1, 2), noise=1.0)
    after = zoo_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    labels = [(r["neurons"], r["epochs"]) for r in table.rows]
    assert labels == [(s, e) for s in ("located", "random", "all but located") for e in (0, 1, 2)]
    starts = {r["accuracy"] for r in table.rows if r["epochs"] == 0}
    assert len(starts) == 1  # every set starts from the same degraded model
    counts = {r["neurons"]: r["count"] for r in table.rows}
    assert counts["located"] == counts["random"] == 10
    assert counts["all but located"] == zoo_model.cfg.n_layers * zoo_model.cfg.d_mlp - 10


def test_reliability_matches_manual_suppression(zoo_model):
    import torch

    from tl_capability import answer_probability
    from tl_capability.experiments import reliability

    data = {"sentiment": zoo.dataset("sentiment", n=16, seed=5)}
    mask = select(attribute(zoo_model, data["sentiment"], "grad_x_act", progress=False), top_k=8)
    empty = select(torch.zeros(4, 512), top_k=0)
    table = reliability(
        zoo_model, {"sentiment": mask, "none": empty}, data | {"none": data["sentiment"]},
        n_random=3,
    )  # fmt: skip
    row = table.rows[0]
    base = answer_probability(zoo_model, data["sentiment"]).mean().item()
    with ablate(zoo_model, mask):
        located = base - answer_probability(zoo_model, data["sentiment"]).mean().item()
    randoms = []
    for seed in range(3):
        with ablate(zoo_model, mask.random_like(seed=seed)):
            randoms.append(base - answer_probability(zoo_model, data["sentiment"]).mean().item())
    assert row["located_effect"] == pytest.approx(located, abs=1e-6)
    assert row["best_random_effect"] == pytest.approx(max(randoms), abs=1e-6)
    assert row["beats_best_random"] == (located > max(randoms))
    assert table.rows[1]["beats_best_random"] is False  # an empty set never wins
    assert table.rows[-1]["beats_best_random"] == pytest.approx(row["beats_best_random"] / 2)
    with pytest.raises(ValueError, match="no dataset"):
        reliability(zoo_model, {"other": mask}, data)


def test_decoupling_follows_the_poster_formula(zoo_model):
    import torch

    from tl_capability.experiments import decoupling
    from tl_capability.masks import coarse_masks

    first, second = zoo.addition_pairs(6, seed=1)
    assert [p.split("+")[0] for p in first.data["prompt"]] == [
        p.split("+")[0] for p in second.data["prompt"]
    ]
    table = decoupling(zoo_model, first, second, method="grad_x_act")
    a = coarse_masks(attribute(zoo_model, first, "grad_x_act", per_sample=True, progress=False))
    b = coarse_masks(attribute(zoo_model, second, "grad_x_act", per_sample=True, progress=False))
    paired = sum(len(x & y) for x, y in zip(a, b, strict=True)) / 6
    rows = {r["rate"]: r for r in table.rows}
    assert rows["C(1,2)"]["value"] == pytest.approx(paired / 2048)
    common = torch.stack([m.tensor for m in a]).all(0).sum().item()
    assert rows["C(1,1)"]["neurons"] == common
    with pytest.raises(ValueError, match="aligned"):
        decoupling(zoo_model, first, second.select(range(3)))


def test_linearity_rows_are_the_interventions_of_top_and_random_neurons(zoo_model):
    import torch

    from tl_capability.experiments import linearity
    from tl_capability.neg import empirical_neg

    data = zoo.dataset("sentiment", n=4, seed=6)
    table = linearity(zoo_model, data, top=3, n_random=2, shifts=(0.5, 1.0))
    assert [r["group"] for r in table.rows] == ["top"] * 3 + ["random"] * 2
    grads = attribute(zoo_model, data, "neurgrad", progress=False).values
    top = {(r["layer"], r["index"]) for r in table.rows[:3]}
    flat = grads.abs().flatten().topk(3).indices
    assert top == {(int(i) // 512, int(i) % 512) for i in flat}
    neurons = [(r["layer"], r["index"]) for r in table.rows]
    measured = empirical_neg(zoo_model, data, neurons, shifts=(0.5, 1.0), progress=False)
    got = torch.tensor([r["abs_r"] for r in table.rows])
    assert torch.allclose(got, measured.r.abs().mean(0), atol=1e-6)
    assert all(0 <= r["abs_r"] <= 1 for r in table.rows)


def test_amplify_matrix_and_overlap_matrix(zoo_model):
    from tl_capability.experiments import overlap_matrix

    locate = {n: zoo.dataset(n, n=12, split="train") for n in ("sentiment", "sort")}
    evaluate = {"sentiment": zoo.dataset("sentiment", n=30, seed=4)}
    table = erase(zoo_model, locate, evaluate, sigmas=(2.0,), n_random=1, mode="scale",
                  factor=3.0, method="grad_x_act")  # fmt: skip
    assert "amplified (×3" in table.title
    mask = select(attribute(zoo_model, locate["sentiment"], "grad_x_act", progress=False))
    base = accuracy(zoo_model, evaluate["sentiment"])
    with ablate(zoo_model, mask, "scale", factor=3.0):
        scaled = accuracy(zoo_model, evaluate["sentiment"])
    assert table.rows[0]["drop"] == pytest.approx(100 * (base - scaled))
    with pytest.raises(ValueError, match="mode"):
        erase(zoo_model, locate, evaluate, mode="mean")
    masks = {"a": mask, "b": mask.random_like(seed=1)}
    rows = {(r["a"], r["b"]): r for r in overlap_matrix(masks).rows}
    assert rows[("a", "a")]["overlap"] == 1.0
    assert rows[("a", "b")]["iou"] == pytest.approx(mask.iou(masks["b"]))
