"""Learned masks: they erase the target more than placebos and controls, touch no weight, are
deterministic, refuse bad input and leave no hook behind."""

import re
from dataclasses import asdict

import pytest
import torch

from tl_capability import CapabilityDataset, NeuronMask, ablate, accuracy, attribute, zoo
from tl_capability._gates import init_logits
from tl_capability.learned import LearnConfig, LearnedMask, learn_gates, learn_mask

pytestmark = pytest.mark.core


def _no_hooks(model):
    return not any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


@pytest.fixture(scope="module")
def zoo_data():
    train = {n: zoo.dataset(n, 40, "train") for n in ("sentiment", "addition", "sort")}
    test = {n: zoo.dataset(n, 60, "test") for n in ("sentiment", "addition", "sort")}
    return train, test


@pytest.fixture(scope="module")
def learned(zoo_model, zoo_data):
    train, _ = zoo_data
    controls = {"addition": train["addition"], "sort": train["sort"]}
    return learn_mask(zoo_model, train["sentiment"], controls, config=LearnConfig(steps=30),
                      max_fraction=0.02, progress=False)  # fmt: skip


def _drop(model, mask, data):
    clean = accuracy(model, data, progress=False)
    with ablate(model, mask):
        return 100 * (clean - accuracy(model, data, progress=False))


def test_erases_target_more_than_random_and_controls(zoo_model, zoo_data, learned):
    _, test = zoo_data
    mask = learned.mask
    assert isinstance(learned, LearnedMask) and isinstance(mask, NeuronMask)
    assert 0 < len(mask) <= int(0.02 * 4 * 512)
    own = _drop(zoo_model, mask, test["sentiment"])
    placebo = max(_drop(zoo_model, mask.random_like(seed), test["sentiment"]) for seed in (0, 1))
    others = max(_drop(zoo_model, mask, test[n]) for n in ("addition", "sort"))
    assert own >= 30, own
    assert own > placebo + 25, (own, placebo)
    assert own > others + 25, (own, others)


def test_own_drop_is_the_measured_drop_and_smallest(zoo_model, zoo_data, learned):
    train, _ = zoo_data
    target = train["sentiment"]
    assert learned.own_drop == pytest.approx(_drop(zoo_model, learned.mask, target), abs=1e-6)
    assert learned.reached == (learned.own_drop >= 60)
    k = len(learned.mask)
    assert learned.drops[k] == learned.own_drop
    if learned.reached and k > 1:  # the binarisation tried k - 1 and it fell short
        assert learned.drops[k - 1] < 60
    # The mask is the top k of the ranking.
    order = learned.ranking().flatten().argsort(descending=True, stable=True)
    assert set(order[:k].tolist()) == set(learned.mask.tensor.flatten().nonzero()[:, 0].tolist())
    assert learned.mask.selection["method"] == "learned"
    assert learned.mask.selection["k"] == k
    assert len(learned.history) == 30
    assert {"loss", "suppress", "maintain", "sparsity", "control"} <= set(learned.history[0])
    # The history follows the round robin over the controls.
    assert [h["control"] for h in learned.history[:3]] == ["addition", "sort", "addition"]


def _datasets():
    target = CapabilityDataset.from_pairs(["ab", "cd", "ef"], [" x", " y", " z"], "target")
    control = CapabilityDataset.from_pairs(["gh", "ij"], [" u", " v"], "control")
    return target, control


def test_weights_untouched_and_flags_restored(model):
    target, control = _datasets()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    params[0].requires_grad_(False)  # the user's own flags come back as they were
    flags = [p.requires_grad for p in params]
    try:
        config = LearnConfig(steps=4, batch_size=2)
        result = learn_mask(model, target, {"c": control}, config=config, progress=False)
        after = model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert [p.requires_grad for p in params] == flags
        assert all(p.grad is None for p in params)
        assert _no_hooks(model)
        assert result.logits.shape == (model.cfg.n_layers, model.cfg.d_mlp)
    finally:
        params[0].requires_grad_(True)


def test_deterministic_under_seed(model):
    target, control = _datasets()
    kw = dict(config=LearnConfig(steps=5, batch_size=2, gate="hard_concrete"), progress=False)
    a = learn_mask(model, target, {"c": control}, seed=3, **kw)
    b = learn_mask(model, target, {"c": control}, seed=3, **kw)
    c = learn_mask(model, target, {"c": control}, seed=4, **kw)
    assert torch.equal(a.logits, b.logits) and a.history == b.history
    assert not torch.equal(a.logits, c.logits)
    kw["config"] = LearnConfig(steps=5, batch_size=2, gate="sigmoid")
    s = learn_mask(model, target, {"c": control}, seed=3, **kw)
    assert torch.equal(s.logits, learn_mask(model, target, {"c": control}, seed=3, **kw).logits)


def test_a_shorter_run_is_the_start_of_a_longer_one(model):
    """``steps=N`` trains exactly the first N steps of a longer run (no schedule depends on the
    total): docs/speed.md's curve of mask quality against steps reads snapshots of one run."""
    target, control = _datasets()
    kw = dict(progress=False, seed=1)
    short, short_history = learn_gates(
        model, target, {"c": control}, config=LearnConfig(steps=3, batch_size=2), **kw
    )
    long, long_history = learn_gates(
        model, target, {"c": control}, config=LearnConfig(steps=6, batch_size=2), **kw
    )
    # each step's losses depend on the logits the steps before it left
    assert short_history == long_history[:3] and len(long_history) == 6
    assert not torch.equal(short, long)


def test_init_from_scores_ranks_first(model):
    target, control = _datasets()
    scores = attribute(model, target, "grad_x_act", progress=False)
    config = LearnConfig(steps=1, lr=1e-4)
    result = learn_mask(model, target, {"c": control}, config=config, init=scores, progress=False)
    top = scores.values.flatten().argmax()
    assert result.ranking().flatten().argmax() == top
    assert result.mask.selection["init_scores"] == "grad_x_act"


def test_start_sets_every_gates_start_logit(model):
    """``start`` moves every gate's θ₀ (the scores' standardised offsets stay on top)."""
    target, control = _datasets()
    shape = (model.cfg.n_layers, model.cfg.d_mlp)
    assert torch.equal(init_logits(None, shape, "sigmoid", -4.0), torch.full(shape, -4.0))
    assert torch.equal(init_logits(None, shape, "sigmoid"), torch.full(shape, 0.0))
    scores = torch.randn(shape)
    moved = init_logits(scores, shape, "sigmoid", -4.0) - init_logits(scores, shape, "sigmoid")
    assert torch.allclose(moved, torch.full(shape, -4.0))
    config = LearnConfig(steps=1, lr=1e-4, start=-4.0)
    logits, _ = learn_gates(model, target, {"c": control}, config=config, progress=False)
    assert (logits - -4.0).abs().max() < 1e-3


def test_progress_bar(model, capsys):
    target, control = _datasets()
    learn_mask(model, target, {"c": control}, config=LearnConfig(steps=2), progress=False)
    assert "learn_mask" not in capsys.readouterr().err
    learn_mask(model, target, {"c": control}, config=LearnConfig(steps=2), progress=True)
    assert "learn_mask" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda t, c: (t, {}), "non-empty"),
        (lambda t, c: (t, {"c": t}), "target itself"),
        (lambda t, c: (t, {"target": c}), "target itself"),
        (
            lambda t, c: (t, {"c": CapabilityDataset.from_pairs(t.prompts, t.answers, "other")}),
            "target itself",
        ),
        (lambda t, c: (t, {"c": "not a dataset"}), "not a CapabilityDataset"),
    ],
)
def test_bad_datasets(model, change, message):
    target, control = change(*_datasets())
    with pytest.raises(ValueError, match=message):
        learn_mask(model, target, control, config=LearnConfig(steps=1), progress=False)
    assert _no_hooks(model)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"init": torch.zeros(3, 3)}, "shape"),
        ({"init": torch.full((2, 128), float("nan"))}, "non-finite"),
        ({"max_fraction": 0.0}, "max_fraction"),
        ({"max_fraction": 1.5}, "max_fraction"),
        ({"target_drop": 0.0}, "target_drop"),
        ({"site": "mid"}, "site"),
    ],
)
def test_bad_arguments(model, kwargs, message):
    target, control = _datasets()
    with pytest.raises(ValueError, match=message):
        learn_mask(model, target, {"c": control}, progress=False, **kwargs)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"gate": "relu"}, "gate must be one of"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": 2.5}, "steps must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be a finite number in (0, inf)"),
        ({"sparsity": float("nan")}, "sparsity must be a finite number"),
        ({"maintain": -1.0}, "maintain must be a finite number in [0, inf)"),
        ({"start": float("inf")}, "start must be a finite number"),
        ({"start": True}, "start must be a finite number"),
    ],
)
def test_a_config_out_of_range_is_refused_when_made(fields, message):
    """The config is checked once, when made: no training starts on a bad value."""
    with pytest.raises(ValueError, match=re.escape(message)):
        LearnConfig(**fields)


def test_the_selection_records_the_config(model):
    target, control = _datasets()
    config = LearnConfig(steps=2, batch_size=2, gate="hard_concrete", sparsity=1.5)
    mask = learn_mask(model, target, {"c": control}, config=config, seed=3, progress=False).mask
    ran = asdict(config.resolved(mask.selection["start"]))  # the start and recipe filled in
    assert {k: mask.selection[k] for k in ran} == ran
    assert mask.selection["start_probe"][mask.selection["start"]] <= 2.0
    assert mask.selection["seed"] == 3 and mask.selection["method"] == "learned"
    with pytest.raises(ValueError, match="config must be a LearnConfig"):
        learn_mask(model, target, None, config={"steps": 2}, progress=False)


def test_training_mode_refused(model):
    target, control = _datasets()
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            learn_mask(model, target, {"c": control}, config=LearnConfig(steps=1), progress=False)
    finally:
        model.eval()


def test_too_long_control_refused_without_leftovers(model):
    target, _ = _datasets()
    long = CapabilityDataset.from_pairs(["a" * 100], [" b"], "long")
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match="context"):
        learn_mask(model, target, {"long": long}, config=LearnConfig(steps=2), progress=False)
    assert _no_hooks(model)
    assert [p.requires_grad for p in model.parameters()] == flags


def test_exception_mid_training_leaves_only_the_users_hook(model):
    target, control = _datasets()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    calls = []

    def poison(act, hook):
        if model.hook_dict["blocks.0.mlp.hook_post"]._forward_hooks:  # a gated pass
            calls.append(1)
            if len(calls) == 2:  # the second step's, with the gates attached
                raise RuntimeError("boom")

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", poison)]):
        with pytest.raises(RuntimeError, match="boom"):
            learn_mask(model, target, {"c": control}, config=LearnConfig(steps=10), progress=False)
        assert len(model.hook_dict["blocks.0.hook_resid_post"]._forward_hooks) == 1
        assert not any(model.hook_dict[f"blocks.{i}.mlp.hook_post"]._forward_hooks for i in (0, 1))
    assert _no_hooks(model)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_without_controls_only_suppression_and_sparsity_are_learned(zoo_model, zoo_data):
    train, _ = zoo_data
    result = learn_mask(zoo_model, train["sentiment"], None, config=LearnConfig(steps=5),
                        max_fraction=0.01,
                        progress=False)  # fmt: skip
    assert all(h["maintain"] == 0.0 and h["control"] is None for h in result.history)
    assert result.mask.selection["controls"] == []


def test_learn_gates_is_the_training_of_learn_mask(zoo_model, zoo_data, learned):
    """Same seed and data: learn_gates' logits are learn_mask's, without the binarisation."""
    from tl_capability.learned import learn_gates

    train, _ = zoo_data
    controls = {"addition": train["addition"], "sort": train["sort"]}
    logits, history = learn_gates(
        zoo_model,
        train["sentiment"],
        controls,
        config=LearnConfig(steps=30),
        max_fraction=0.02,
        progress=False,
    )
    assert torch.equal(logits, learned.logits)
    assert history == learned.history


def test_clean_log_probs_kept_equal_those_computed_each_step(zoo_model, zoo_data):
    """The maintenance term's reference, kept per sample, is the clean pass of that step's
    batch (also when it does not fit the memory budget and is computed afresh)."""
    from tl_capability._gates import CleanLogProbs
    from tl_capability.data import collate, tokenize

    train, _ = zoo_data
    samples = {n: tokenize(zoo_model, train[n]) for n in ("addition", "sort")}
    kept = CleanLogProbs(zoo_model, samples, 8, 0)
    fresh = CleanLogProbs(zoo_model, samples, 8, 0, budget=0)
    assert kept.keep and not fresh.keep
    picked = [5, 0, 17, 3]
    batch = collate([samples["sort"][i] for i in picked], range(4), 0)
    with torch.no_grad():
        logits = zoo_model(batch.tokens)[batch.target_row, batch.target_pos]
    expected = logits.float().log_softmax(-1)
    torch.testing.assert_close(kept("sort", picked), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fresh("sort", picked), expected, rtol=1e-5, atol=1e-6)


def test_the_maintenance_reference_is_taken_for_the_controls_in_the_batch(
    zoo_model, zoo_data, monkeypatch
):
    """Every step's clean reference is computed for the very control samples, in the order,
    that follow the target rows in that step's batch."""
    from tl_capability import _gates, learned

    train, _ = zoo_data
    events = []
    real_collate, real_call = _gates.collate, _gates.CleanLogProbs.__call__

    def spy_collate(samples, *args, **kwargs):
        events.append(("batch", list(samples)))
        return real_collate(samples, *args, **kwargs)

    def spy_call(self, name, indices):
        events.append(("reference", [self.samples[name][i] for i in indices]))
        return real_call(self, name, indices)

    monkeypatch.setattr(_gates, "collate", spy_collate)
    monkeypatch.setattr(_gates.CleanLogProbs, "__call__", spy_call)
    controls = {"addition": train["addition"], "sort": train["sort"]}
    config = learned.LearnConfig(steps=4, start=0.0)  # no start probe: training steps only
    learned.learn_gates(zoo_model, train["sentiment"], controls, config=config, progress=False)
    pairs = [
        (events[k - 1][1], ref)
        for k, (kind, ref) in enumerate(events)
        if kind == "reference" and events[k - 1][0] == "batch"
    ]
    assert len(pairs) == 4
    for batch, ref in pairs:
        assert len(ref) > 1 and batch[-len(ref) :] == ref
