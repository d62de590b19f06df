"""Where a learned mask starts: the probe reads the highest start the model tolerates, the
recipe follows the start, and ``init`` adds the contrastive scores where asked."""

import pytest
import torch

from tl_capability import CapabilityDataset, zoo
from tl_capability import learn_start as learn_start_module
from tl_capability.learn_start import START_MAX_KL, choose_start, default_start, learned_start
from tl_capability.learned import GROW_RECIPE, PRUNE_RECIPE, LearnConfig
from tl_capability.rankings import contrastive_init

pytestmark = pytest.mark.core


def _no_hooks(model):
    return not any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


@pytest.fixture(scope="module")
def data():
    return {n: zoo.dataset(n, 16, "train") for n in ("sentiment", "addition", "sort")}


def test_the_probe_keeps_the_gates_own_start_where_the_model_tolerates_it(zoo_model, data):
    controls = {"addition": data["addition"], "sort": data["sort"]}
    start, readings = choose_start(zoo_model, data["sentiment"], controls)
    assert start == default_start("sigmoid") == 0.0
    assert list(readings) == [0.0] and 0.0 <= readings[0.0] <= START_MAX_KL
    assert _no_hooks(zoo_model)
    # One draw, seeded: the same seed reads the same KL.
    assert choose_start(zoo_model, data["sentiment"], controls)[1] == readings


def test_the_probe_lowers_the_start_until_the_bound_holds(zoo_model, data, monkeypatch):
    controls = {"addition": data["addition"]}
    monkeypatch.setattr(learn_start_module, "START_MAX_KL", -1.0)  # nothing passes
    start, readings = choose_start(zoo_model, data["sentiment"], controls, gate="hard_concrete")
    assert list(readings) == [-2.0, -3.0, -4.0, -5.0, -6.0, -7.0] and start == -7.0
    # A bound between two readings stops at the first start below it.
    bound = (readings[-2.0] + readings[-7.0]) / 2
    monkeypatch.setattr(learn_start_module, "START_MAX_KL", bound)
    start, some = choose_start(zoo_model, data["sentiment"], controls, gate="hard_concrete")
    assert some[start] <= bound and all(v > bound for k, v in some.items() if k != start)
    assert all(some[k] == readings[k] for k in some)


def test_without_controls_the_target_is_the_reference(zoo_model, data):
    start, readings = choose_start(zoo_model, data["sentiment"], None)
    assert start in readings and readings[start] >= 0.0


def test_the_recipe_follows_the_start_and_explicit_fields_win():
    pruned = LearnConfig().resolved(0.0)
    assert (pruned.steps, pruned.lr, pruned.batch_size) == tuple(PRUNE_RECIPE.values())
    grown = LearnConfig().resolved(-2.0)
    assert (grown.steps, grown.lr, grown.batch_size) == tuple(GROW_RECIPE.values())
    assert grown.start == -2.0
    mine = LearnConfig(steps=7, batch_size=3).resolved(-2.0)
    assert (mine.steps, mine.lr, mine.batch_size) == (7, GROW_RECIPE["lr"], 3)
    assert LearnConfig(gate="hard_concrete").resolved(-2.0).steps == PRUNE_RECIPE["steps"]
    with pytest.raises(ValueError, match="init"):
        LearnConfig(init="scores")


def test_init_adds_the_contrastive_scores_where_asked(zoo_model, data):
    target, controls = data["sentiment"], {"sort": data["sort"]}
    at_own = LearnConfig(start=0.0)
    config, init = learned_start(zoo_model, target, controls, at_own)
    assert init is None and config.start == 0.0  # "auto" at the gate's own start: none
    config, init = learned_start(zoo_model, target, controls, LearnConfig(start=-3.0))
    assert torch.equal(init, contrastive_init(zoo_model, target, controls))
    config, init = learned_start(zoo_model, target, controls, LearnConfig(init="contrastive"))
    assert init is not None and config.start <= 0.0
    config, init = learned_start(zoo_model, target, controls, LearnConfig(start=-3, init="none"))
    assert init is None and config.start == -3.0


def test_contrastive_init_weighs_the_controls_need(zoo_model, data):
    from tl_capability import attribute

    target, control = data["sentiment"], data["sort"]
    own = contrastive_init(zoo_model, target, None)
    kw = dict(metric="logprob", positions="all", progress=False)
    assert torch.allclose(own, attribute(zoo_model, target, "grad_x_act", **kw).values)
    need = attribute(zoo_model, control, "grad_x_act", **kw).values.clamp(min=0)
    both = contrastive_init(zoo_model, target, {"sort": control})
    assert torch.allclose(both, own - 3 * need, atol=1e-6)


def test_a_tiny_dataset_is_probed_on_what_it_has(model):
    target = CapabilityDataset.from_pairs(["ab", "cd"], [" x", " y"], "t")
    control = CapabilityDataset.from_pairs(["ef"], [" z"], "c")
    start, readings = choose_start(model, target, {"c": control})
    assert start in readings and _no_hooks(model)


def test_bad_input_is_refused(zoo_model, data):
    with pytest.raises(ValueError, match="is the target itself"):
        choose_start(zoo_model, data["sort"], {"x": data["sort"]})
    with pytest.raises(ValueError, match="gate"):
        choose_start(zoo_model, data["sort"], None, gate="step")
    with pytest.raises(ValueError, match="init must be"):
        choose_start(zoo_model, data["sort"], None, init=torch.zeros(3, 3))
    zoo_model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            choose_start(zoo_model, data["sort"], None)
    finally:
        zoo_model.eval()
    assert _no_hooks(zoo_model)
