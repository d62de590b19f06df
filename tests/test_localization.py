"""localization: locate and rank_neurons, the budget rule, the config and bad input."""

import inspect
import re
import warnings

import pytest
import torch

from tests.helpers import OTHER, TARGET, _all
from tl_capability import (
    CapabilityDataset,
    LearnConfig,
    LocateConfig,
    ablate,
    accuracy,
    attribute,
    select,
    zoo,
)
from tl_capability import localization as localization_module
from tl_capability.budget import holdout
from tl_capability.localization import locate, rank_neurons
from tl_capability.rankings import iterative_ranking

pytestmark = pytest.mark.core


def test_the_papers_pipeline_is_attribute_then_select(model):
    mask = locate(model, TARGET, method="answer", progress=False)
    expected = select(attribute(model, TARGET, "ig", steps=20, progress=False), sigma=2.0)
    assert mask == expected and mask.selection["rule"] == "sigma"


def test_bad_input_is_refused(model):
    with pytest.raises(ValueError, match="non-empty mapping"):
        locate(model, TARGET, {}, progress=False)
    with pytest.raises(ValueError, match="is the target itself"):
        locate(model, TARGET, {"same": TARGET}, progress=False)
    copy = CapabilityDataset.from_pairs(TARGET.prompts, TARGET.answers, name="copy")
    with pytest.raises(ValueError, match="is the target itself"):
        locate(model, TARGET, {"copy": copy}, progress=False)
    with pytest.raises(ValueError, match="max_fraction"):
        locate(model, TARGET, max_fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="method must be"):
        locate(model, TARGET, method="magic", progress=False)
    with pytest.raises(ValueError, match="chunk"):
        iterative_ranking(model, TARGET, chunk=10**6, rounds=1, progress=False)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            locate(model, TARGET, progress=False)
    finally:
        model.eval()


def test_located_set_erases_its_capability_on_the_zoo_model(zoo_model):
    """The claim itself, on held-out samples: the located set removes sentiment, spares the
    controls, and a random set of the same shape does little."""
    names = ("sentiment", "addition", "sort")
    train = {n: zoo.dataset(n, n=32, split="train", seed=3) for n in names}
    test = {n: zoo.dataset(n, n=60, split="test", seed=4) for n in names}
    mask = locate(
        zoo_model,
        train["sentiment"],
        {n: train[n] for n in names[1:]},
        method="contrastive",
        max_fraction=0.05,
        target_drop=50,
        tolerance=10,
        progress=False,
        config=LocateConfig(ig_steps=4),
    )
    assert 0 < len(mask) <= 0.05 * 4 * 512
    base = {n: accuracy(zoo_model, d) for n, d in test.items()}
    with ablate(zoo_model, mask):
        drop = {n: base[n] - accuracy(zoo_model, d) for n, d in test.items()}
    with ablate(zoo_model, mask.random_like(0)):
        random = base["sentiment"] - accuracy(zoo_model, test["sentiment"])
    assert drop["sentiment"] > 0.3, drop
    assert drop["sentiment"] > random + 0.2
    assert drop["sentiment"] > max(drop["addition"], drop["sort"]) + 0.2
    assert mask.selection["method"] == "contrastive" and "own_drop" in mask.selection
    assert mask.selection["check_fraction"] == pytest.approx(1 / 3)


def test_rank_neurons_reuses_precomputed_scores(model):
    scores = {"t": _all(model, TARGET), "o": _all(model, OTHER)}
    fresh = rank_neurons(model, TARGET, {"o": OTHER}, method="contrastive", progress=False)
    cached = rank_neurons(
        model, TARGET, {"o": OTHER}, method="contrastive", progress=False,
        config=LocateConfig(scores=scores),
    )  # fmt: skip
    assert fresh.tolist() == cached.tolist()
    planted = {"t": torch.zeros_like(scores["t"]), "o": scores["o"]}
    planted["t"][1, 5] = 1e3
    top = rank_neurons(model, TARGET, {"o": OTHER}, method="all",
                       config=LocateConfig(scores=planted))  # fmt: skip
    assert top[0].tolist() == [1, 5]


def test_learned_locate_warns_on_small_datasets(model):
    with pytest.warns(UserWarning, match="overfit small datasets"):
        mask = locate(model, TARGET, {"o": OTHER}, method="learned", progress=False,
                      learn=LearnConfig(steps=2))  # fmt: skip
    assert mask.selection["method"] == "learned"


def test_locate_warns_when_its_goal_is_not_reached(model, monkeypatch):
    kwargs = dict(method="all", progress=False, config=LocateConfig(ig_steps=2))
    with pytest.warns(UserWarning, match="not reached") as caught:
        mask = locate(model, TARGET, {"o": OTHER}, target_drop=100, **kwargs)  # unreachable
    assert mask.selection["reached"] is False
    message = next(str(w.message) for w in caught if "not reached" in str(w.message))
    assert f"returning {len(mask)} neurons" in message
    real = localization_module.budget_mask

    def reached(*args, **kw):
        found = real(*args, **kw)
        found.selection["reached"] = True
        return found

    monkeypatch.setattr(localization_module, "budget_mask", reached)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = locate(model, TARGET, {"o": OTHER}, target_drop=100, **kwargs)
    assert mask.selection["reached"] is True
    assert not [w for w in caught if "not reached" in str(w.message)]


def test_learned_locate_works_without_controls(zoo_model):
    data = zoo.dataset("sentiment", n=12, split="train")
    with pytest.warns(UserWarning, match="overfit"):
        mask = locate(zoo_model, data, method="learned", progress=False,
                      learn=LearnConfig(steps=3))  # fmt: skip
    assert mask.selection["controls"] == [] and len(mask) > 0


# Issue 31, item 7: each of these gave a plausible result with no error.

WRONG = CapabilityDataset.from_pairs(["12+34=", "rev abc:"], [" zq zq zq", " qz qz qz"], name="w")


def test_precomputed_scores_of_another_shape_are_refused(model):
    """[4, 300] scores for a 4 x 512 model were unravelled over the wrong shape."""
    bad = {"t": torch.zeros(model.cfg.n_layers, model.cfg.d_mlp + 7)}
    with pytest.raises(ValueError, match=r"scores\['t'\] has shape"):
        rank_neurons(model, TARGET, method="all", config=LocateConfig(scores=bad))
    with pytest.raises(ValueError, match=r"scores\['t'\] has shape"):
        locate(model, TARGET, method="all", progress=False,
               config=LocateConfig(scores=bad, check_fraction=0))  # fmt: skip


@pytest.mark.parametrize("drop", [0, -5.0, 101, float("nan")])
def test_a_target_drop_out_of_range_is_refused(model, drop):
    """target_drop=0 reported reached: True with an own drop of 0.0."""
    with pytest.raises(ValueError, match=r"target_drop must be a finite number in \(0, 100\]"):
        locate(model, TARGET, method="all", target_drop=drop, progress=False)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"ig_steps": 0}, "ig_steps must be a positive integer, got 0"),
        ({"ig_steps": 2.5}, "ig_steps must be a positive integer"),
        ({"chunk_fraction": 0}, "chunk_fraction"),
        ({"check_fraction": 1.0}, "check_fraction"),
        ({"sigma": -1.0}, "sigma"),
        ({"batch_size": 0}, "batch_size"),
        ({"scores": [torch.zeros(2, 3)]}, "scores must map dataset names"),
    ],
)
def test_a_locate_config_out_of_range_is_refused(fields, message):
    """ig_steps=0 silently became 8 (``x or default``)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        LocateConfig(**fields)


def test_locate_and_learn_mask_take_at_most_ten_parameters():
    from tl_capability import learn_mask

    for function in (locate, learn_mask):
        assert len(inspect.signature(function).parameters) <= 10, function.__name__


def test_controls_that_are_the_target_reordered_and_renamed_are_refused(model):
    """Reversed prompts under another name were accepted as a control."""
    reordered = CapabilityDataset.from_pairs(TARGET.prompts[::-1], TARGET.answers[::-1], "x")
    with pytest.raises(ValueError, match="is the target itself"):
        locate(model, TARGET, {"x": reordered}, progress=False)
    from tl_capability import learn_mask

    with pytest.raises(ValueError, match="is the target itself"):
        learn_mask(model, TARGET, {"x": reordered}, progress=False)
    same_prompts = CapabilityDataset.from_pairs(TARGET.prompts, [" a", " b"], "y")
    assert localization_module.check_datasets(TARGET, {"y": same_prompts})  # other answers


def test_a_target_of_repeated_samples_warns_that_the_check_is_not_held_out(model):
    """160 copies of one prompt reported reached: True with no warning."""
    copies = CapabilityDataset.from_pairs(["12+34="] * 12, ["46"] * 12, name="copies")
    with pytest.warns(UserWarning, match="repeat samples it is ranked on"):
        holdout(copies, None, 1 / 3)
    with pytest.warns(UserWarning, match="repeat samples it is ranked on"):
        locate(model, copies, method="all", progress=False, config=LocateConfig(ig_steps=1))


def test_a_target_the_model_never_answers_is_flagged(model):
    """method="answer" returned neurons with no warning; the learned path advised another seed."""
    assert accuracy(model, WRONG, progress=False) == 0
    with pytest.warns(UserWarning, match="answers none of the 2 target samples"):
        locate(model, WRONG, method="answer", progress=False)
    with pytest.warns(UserWarning, match="not reached") as caught:
        locate(model, WRONG, {"o": OTHER}, method="learned", progress=False,
               learn=LearnConfig(steps=1))  # fmt: skip
    message = next(str(w.message) for w in caught if "not reached" in str(w.message))
    assert "answers only 0.0 % of the target's check samples" in message
    assert "another seed" not in message
