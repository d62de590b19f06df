"""Erase and amplify matrices: their numbers equal manual ablations and random sets."""

import warnings

import pytest

from tests.experiments.helpers import drops_under
from tl_capability import (
    accuracy,
    attribute,
    select,
    zoo,
)
from tl_capability.experiments import (
    AmplifyResult,
    AmplifyRow,
    EraseResult,
    EraseRow,
    amplify,
    erase,
    mean_ci,
)
from tl_capability.masks import random_controls


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


def test_breaks_everything_needs_every_other_capability_down_and_above_random():
    from tl_capability.experiments.erase import breaks_everything

    assert breaks_everything(100.0, [(95.0, 20.0), (100.0, 30.0)])
    assert not breaks_everything(100.0, [(95.0, 20.0), (80.0, 30.0)])  # one spared
    assert not breaks_everything(100.0, [(95.0, 90.0)])  # no more than random sets
    assert not breaks_everything(0.0, [(0.0, 0.0)]) and not breaks_everything(90.0, [])
