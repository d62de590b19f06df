"""Erase curves: every point equals erasing the same set by hand; the budget rule; the figure;
the held-out split `locate` checks its goal on."""

import math
import statistics
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_capability import (
    CapabilityDataset,
    NeuronScores,
    ablate,
    accuracy,
    select,
    tokenize,
)
from tl_capability.curves import FRACTIONS, EraseCurve, erase_curve, erase_order

pytestmark = pytest.mark.core


def _greedy_answers(model, prompts, n_tokens=2):
    """The model's own greedy continuations, so that its baseline accuracy is 100 %."""
    samples = tokenize(model, CapabilityDataset.from_pairs(prompts, ["a"] * len(prompts)))
    answers = []
    for s in samples:
        seq = list(s.prompt)
        with torch.no_grad():
            for _ in range(n_tokens):
                seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
        answers.append(model.tokenizer.decode(seq[len(s.prompt) :]))
    return answers


@pytest.fixture(scope="module")
def data(model):
    gen = torch.Generator().manual_seed(0)
    chars = "abcdefghij0123456789+=:"
    prompts = [
        "".join(chars[int(i)] for i in torch.randint(len(chars), (3 + n % 6,), generator=gen))
        for n in range(20)
    ]
    answers = _greedy_answers(model, prompts)
    target = CapabilityDataset.from_pairs(prompts[:10], answers[:10], name="own")
    other = CapabilityDataset.from_pairs(prompts[10:], answers[10:], name="other")
    return target, other


@pytest.fixture(scope="module")
def scores(model):
    return torch.randn(
        model.cfg.n_layers, model.cfg.d_mlp, generator=torch.Generator().manual_seed(1)
    )


def _no_hooks(model):
    return not any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


def test_every_point_equals_erasing_the_same_set_by_hand(model, data, scores):
    target, other = data
    curve = erase_curve(
        model, scores, target, {"other": other, "own-again": target},
        sizes=[25, 3, 10, 10], n_random=3, seed=5, progress=False,
    )  # fmt: skip
    assert curve.sizes == [3, 10, 25] and curve.target == "own" and curve.name == "ranking"
    assert list(curve.other_drops) == ["other"]  # the target itself is skipped
    n_neurons = model.cfg.n_layers * model.cfg.d_mlp
    assert curve.n_neurons == n_neurons and curve.fractions == [k / n_neurons for k in curve.sizes]
    base = {"own": accuracy(model, target), "other": accuracy(model, other)}
    assert curve.baseline == pytest.approx(base) and base["own"] == 1.0
    for i, k in enumerate(curve.sizes):
        mask = select(scores, top_k=k)
        assert curve.mask_at(k) == mask
        measured = (("own", target, curve.own_drop), ("other", other, curve.other_drops["other"]))
        for name, ds, got in measured:
            with ablate(model, mask):
                assert got[i] == pytest.approx(100 * (base[name] - accuracy(model, ds)))
        runs = []
        for j in range(3):
            with ablate(model, mask.random_like(5 + j)):
                runs.append(100 * (base["own"] - accuracy(model, target)))
        assert curve.random_runs[i] == pytest.approx(runs)
        assert curve.random_drop[i] == pytest.approx(statistics.mean(runs))
        half = 4.303 * statistics.stdev(runs) / math.sqrt(3)
        assert curve.random_ci[i] == pytest.approx(half)
        assert curve.worst_other[i] == curve.other_drops["other"][i]
    assert any(d > 0 for d in curve.own_drop)  # the test is not vacuous
    frame = curve.to_frame()
    assert frame["neurons"].tolist() == curve.sizes
    assert frame["drop_other"].tolist() == pytest.approx(curve.other_drops["other"])
    assert curve.to_markdown().startswith("### Erase curve of own (ranking)")
    assert _no_hooks(model)


def test_scores_objects_and_explicit_orders_give_the_same_curve(model, data, scores):
    target, _ = data
    wrapped = NeuronScores(scores, torch.zeros_like(scores), 10, "toy", {"site": "post"})
    kwargs = dict(sizes=[4, 12], n_random=1, progress=False)
    from_scores = erase_curve(model, wrapped, target, **kwargs)
    from_order = erase_curve(model, from_scores.order[:12], target, name="learned", **kwargs)
    assert from_scores.name == "toy" and from_order.name == "learned"
    assert from_order.own_drop == from_scores.own_drop
    assert from_order.random_runs == from_scores.random_runs
    # default sizes: the grid of fractions, clipped to an explicit order's length
    short = erase_curve(model, from_scores.order[:6], target, n_random=1, progress=False)
    grid = sorted({max(1, round(f * from_scores.n_neurons)) for f in FRACTIONS})
    assert short.sizes == [k for k in grid if k <= 6]
    assert len(from_scores.mask_at(0)) == 0
    with pytest.raises(ValueError, match="k must be in"):
        short.mask_at(7)


def test_erase_order_breaks_ties_by_flat_index():
    order = erase_order(torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 1.0]]), 2, 3)
    assert order.tolist() == [[0, 1], [1, 0], [0, 2], [1, 2], [0, 0], [1, 1]]
    explicit = torch.tensor([[1, 2], [0, 0]])
    assert torch.equal(erase_order(explicit, 2, 3), explicit)


def test_bad_input_is_refused_with_a_clear_message(model, data, scores):
    target, other = data
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp

    def run(ranking=scores, **kwargs):
        return erase_curve(model, ranking, target, progress=False, **kwargs)

    cases = [
        (dict(ranking=torch.randn(n_layers + 1, d_mlp)), "scores of shape"),
        (dict(ranking=torch.full((n_layers, d_mlp), float("nan"))), "NaN"),
        (dict(ranking=[[0.0]]), "a ranking is a tensor"),
        (dict(sizes=[n_layers * d_mlp + 1]), r"more than the \d+ neurons of the model"),
        (dict(ranking=torch.tensor([[0, 1], [1, 2]]), sizes=[3]), "in the explicit order"),
        (dict(ranking=torch.tensor([[0, 1], [0, 1]])), "more than once"),
        (dict(ranking=torch.tensor([[n_layers, 0]])), "out of range"),
        (dict(ranking=torch.zeros(0, 2, dtype=torch.long)), "empty"),
        (dict(ranking=torch.tensor([0, 1])), r"integer \[n, 2\] tensor"),
        (dict(sizes=[0]), "every size must be a positive integer, got 0"),
        (dict(sizes=[2.5]), "every size must be a positive integer, got 2.5"),
        (dict(sizes=5), "sizes must be a sequence of positive integers, got 5"),  # was TypeError
        (dict(n_random=1.5), "n_random must be an integer of at least 0"),
        (dict(sizes=[]), "sizes is empty"),
        (dict(n_random=-1), "n_random"),
        (dict(mode="mean"), "means"),
        (dict(mode="shrink"), "mode must be"),
        (dict(others={"own": other}), "also named 'own'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            run(**kwargs)
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            run()
    finally:
        model.eval()
    assert _no_hooks(model)


def test_deterministic_under_a_seed(model, data, scores):
    target, other = data
    kwargs = dict(sizes=[6, 20], n_random=3, progress=False)
    first = erase_curve(model, scores, target, {"other": other}, seed=3, **kwargs)
    again = erase_curve(model, scores, target, {"other": other}, seed=3, **kwargs)
    for field in ("own_drop", "other_drops", "random_runs", "random_drop", "random_ci"):
        assert getattr(first, field) == getattr(again, field)
    assert torch.equal(first.order, again.order)
    mask = first.mask_at(20)
    assert mask.random_like(3) != mask.random_like(4)  # another seed draws other sets


def test_nothing_is_left_attached_after_an_exception(model, data, scores, monkeypatch):
    import tl_capability.curves as curves

    target, other = data
    tokens = torch.tensor([tokenize(model, target)[0].prompt])
    with torch.no_grad():
        before = model(tokens)
    too_long = CapabilityDataset.from_pairs(["x" * (model.cfg.n_ctx + 3)], ["y"], name="long")
    with pytest.raises(ValueError, match="context"):
        erase_curve(model, scores, target, {"long": too_long}, sizes=[5], progress=False)
    assert _no_hooks(model)

    calls = []

    def failing(*args, **kwargs):  # fails in the middle of the curve, inside ablate
        calls.append(1)
        if len(calls) == 6:
            assert not _no_hooks(model)  # the erased set is attached right now
            raise RuntimeError("interrupted")
        return accuracy(*args, **kwargs)

    monkeypatch.setattr(curves, "accuracy", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        erase_curve(model, scores, target, {"other": other}, sizes=[5, 9], progress=False)
    assert len(calls) == 6 and _no_hooks(model)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), before)


def _curve(sizes, own, others=None, name="m", target="t"):
    n = len(sizes)
    return EraseCurve(
        name, target, list(sizes), (4, 100), {target: 1.0}, list(own),
        {k: list(v) for k, v in (others or {}).items()}, [0.0] * n, [0.0] * n,
        [[0.0]] * n, torch.zeros(max(sizes), 2, dtype=torch.long),
    )  # fmt: skip


def test_budget_rule_on_a_hand_made_curve():
    curve = _curve([1, 2, 4, 8], [5, 30, 60, 90], {"x": [0, 2, 20, 5], "y": [1, 1, 1, 30]})
    assert curve.worst_other == [1, 2, 20, 30]
    assert curve.budget(25) == 2
    assert curve.budget(30, tolerance=1) is None  # size 2 costs "x" 2 points
    assert curve.budget(50) is None  # 4 and 8 reach it, but cost another capability > 10
    assert curve.budget(50, tolerance=20) == 4
    assert curve.budget(95, tolerance=100) is None
    alone = _curve([1, 2, 4], [0, 10, 40])
    assert alone.worst_other == [0.0, 0.0, 0.0] and alone.budget(10, tolerance=0) == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-20, 100), st.floats(-20, 100)), min_size=1, max_size=8),
    st.floats(-20, 100),
    st.floats(0, 100),
)
def test_budget_is_the_smallest_qualifying_size_and_monotone(points, target_drop, tolerance):
    sizes = [2 * i + 1 for i in range(len(points))]
    curve = _curve(sizes, [p[0] for p in points], {"x": [p[1] for p in points]})
    pairs = zip(sizes, points, strict=True)
    ok = [k for k, (own, other) in pairs if own >= target_drop and other <= tolerance]
    assert curve.budget(target_drop, tolerance) == (min(ok) if ok else None)
    looser = curve.budget(target_drop - 1, tolerance + 1)
    if ok:
        assert looser is not None and looser <= min(ok)


def test_erase_curves_figure_renders_without_pyplot(tmp_path):
    from tl_capability.report import erase_curves_figure

    had_pyplot = "matplotlib.pyplot" in sys.modules
    figures_before = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None
    sizes = [1, 2, 4, 8, 40]
    curves = [
        _curve(sizes, [0, 5, 20, 50, 80], {"x": [0, 1, 2, 3, 9]}, name="ig", target="add"),
        _curve(sizes, [0, 2, 10, 30, 60], {"x": [0, 0, 1, 5, 20]}, name="grad", target="add"),
        _curve(sizes, [1, 2, 3, 4, 5], None, name="ig", target="sort"),
    ]
    fig = erase_curves_figure(curves, title="erase curves")
    fig.savefig(tmp_path / "curves.png")
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["add", "sort"]
    assert len(visible[0].get_lines()) == 2 * 3 + 1  # own, worst other, random; zero line
    assert len(visible[1].get_lines()) == 2 + 1  # no other capabilities: no dashed line
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["ig", "grad"] and "worst other drop" in labels
    if had_pyplot:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == figures_before
    else:
        assert "matplotlib.pyplot" not in sys.modules
    with pytest.raises(ValueError, match="no erase curves"):
        erase_curves_figure([])
