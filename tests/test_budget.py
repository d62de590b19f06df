"""locate's budget rule: the held-out split, the sizes it tries, and the first that meets the
goal."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import TARGET
from tl_capability import ablate, accuracy, attribute, zoo
from tl_capability.attribution import neuron_order
from tl_capability.budget import (
    SMALLEST_FRACTION,
    budget_mask,
    budget_sizes,
    holdout,
    warn_not_reached,
)

pytestmark = pytest.mark.core


@given(st.integers(1, 5000), st.integers(1, 200_000))
@settings(max_examples=200, deadline=None)
def test_budget_sizes_grow_by_about_root_two_up_to_what_is_available(available, n_neurons):
    available = min(available, n_neurons)
    sizes = budget_sizes(available, n_neurons)
    assert sizes[-1] == available and sizes == sorted(set(sizes))
    assert sizes[0] == min(available, max(1, round(max(1.0, SMALLEST_FRACTION * n_neurons))))
    for a, b in itertools.pairwise(sizes[:-1]):
        assert b <= round(a * 1.42) + 1  # no size skipped by more than the √2 step


@pytest.fixture(scope="module")
def ranked(zoo_model):
    data = {n: zoo.dataset(n, 30, "train") for n in ("sentiment", "addition", "sort")}
    scores = attribute(zoo_model, data["sentiment"], "ig", steps=4, metric="logprob",
                       positions="all", progress=False)  # fmt: skip
    return data, neuron_order(scores.values)[:102]


def _drop(model, mask, data):
    clean = accuracy(model, data, progress=False)
    with ablate(model, mask):
        return 100 * (clean - accuracy(model, data, progress=False))


def test_the_first_size_that_meets_the_goal_is_kept(zoo_model, ranked):
    data, order = ranked
    controls = {"addition": data["addition"], "sort": data["sort"]}
    mask = budget_mask(zoo_model, order, data["sentiment"], controls, target_drop=20.0,
                       tolerance=100.0, progress=False)  # fmt: skip
    scan = mask.selection["scan"]
    assert [row[0] for row in scan] == budget_sizes(len(order), 2048)[: len(scan)]
    assert mask.selection["reached"] is (scan[-1][1] >= 20.0)
    if mask.selection["reached"]:
        assert all(row[1] < 20.0 for row in scan[:-1])  # none smaller met it
        assert len(mask) == scan[-1][0]
    # The scan's drops are the drops of the prefix it names.
    own = _drop(zoo_model, mask, data["sentiment"])
    assert own == pytest.approx(mask.selection["own_drop"], abs=1e-6)
    assert set(map(tuple, mask.indices().tolist())) == set(map(tuple, order[: len(mask)].tolist()))


def test_an_unreachable_goal_returns_the_strongest_size_within_the_tolerance(zoo_model, ranked):
    data, order = ranked
    order = order[:6]  # too few to drop sentiment by 100 points
    mask = budget_mask(zoo_model, order, data["sentiment"], {"sort": data["sort"]},
                       target_drop=100.0, tolerance=100.0, progress=False)  # fmt: skip
    scan = mask.selection["scan"]
    assert mask.selection["reached"] is False
    assert [row[0] for row in scan] == budget_sizes(6, 2048)  # nothing stopped the walk
    assert mask.selection["own_drop"] == max(row[1] for row in scan)


def test_the_walk_stops_after_two_sizes_over_the_tolerance(zoo_model, ranked):
    data, order = ranked
    others = {"addition": data["addition"]}
    mask = budget_mask(zoo_model, order, data["sentiment"], others, target_drop=100.0,
                       tolerance=0.0, progress=False)  # fmt: skip
    scan = mask.selection["scan"]
    over = [row[2] > 0.0 for row in scan]
    if len(scan) < len(budget_sizes(len(order), 2048)):
        assert over[-2:] == [True, True]
    assert not any(a and b for a, b in itertools.pairwise(over[:-1]))


def test_bad_goals_are_refused(zoo_model, ranked):
    data, order = ranked
    with pytest.raises(ValueError, match="target_drop"):
        budget_mask(zoo_model, order, data["sentiment"], {}, target_drop=0.0, tolerance=5.0)
    with pytest.raises(ValueError, match="tolerance"):
        budget_mask(zoo_model, order, data["sentiment"], {}, target_drop=5.0, tolerance=-1.0)


def test_holdout_ranks_and_checks_on_disjoint_samples():
    data = zoo.dataset("addition", n=30, split="train")
    ctrl = {"sort": zoo.dataset("sort", n=12, split="train")}
    fit, fit_c, check, check_c = holdout(data, ctrl, 1 / 3, seed=0)
    assert (len(fit), len(check)) == (20, 10)
    assert set(fit.prompts).isdisjoint(check.prompts)
    assert set(fit.prompts) | set(check.prompts) == set(data.prompts)
    assert (len(fit_c["sort"]), len(check_c["sort"])) == (8, 4)
    assert holdout(data, ctrl, 1 / 3, seed=0)[0].prompts == fit.prompts  # deterministic
    assert holdout(TARGET, None, 1 / 3)[0] is TARGET  # too small to split: used whole
    assert holdout(data, None, 0)[2] is data
    with pytest.raises(ValueError, match="check_fraction"):
        holdout(data, None, 1.0)


@pytest.mark.parametrize(
    ("clean", "scan", "words"),
    [
        (0.3, [[4, 20.0, 0.0, 0.0]], "answers only 30.0 %"),
        (1.0, [[4, 5.0, 0.0, 0.0], [6, 12.0, 30.0, 0.0]], "may not live in MLP neurons"),
        (1.0, [[4, 5.0, 0.0, 0.0], [6, 70.0, 30.0, 0.0]], "another seed"),
    ],
)
def test_a_missed_goal_says_why(clean, scan, words):
    sel = {"clean_accuracy": clean, "target_drop": 60.0, "tolerance": 10.0, "neurons": 4,
           "own_drop": scan[0][1], "worst_other_drop": 0.0, "scan": scan}  # fmt: skip
    with pytest.warns(UserWarning, match="was not reached") as caught:
        warn_not_reached("t", sel, 0.05)
    assert words in str(caught[0].message)


def test_the_walk_is_drawn_and_a_mask_without_one_is_refused(zoo_model, ranked):
    from tl_capability import NeuronMask
    from tl_capability.budget import budget_figure

    data, order = ranked
    mask = budget_mask(zoo_model, order, data["sentiment"], {"sort": data["sort"]},
                       target_drop=30.0, tolerance=10.0, progress=False)  # fmt: skip
    ax = budget_figure(mask).axes[0]
    scan = mask.selection["scan"]
    own, worst, rand = (list(line.get_ydata()) for line in ax.get_lines()[:3])
    assert own == [row[1] for row in scan] and worst == [row[2] for row in scan]
    assert rand == [row[3] for row in scan] and ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="no budget scan"):
        budget_figure(NeuronMask.empty(4, 512))
