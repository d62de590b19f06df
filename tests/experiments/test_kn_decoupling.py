"""Decoupling: the CNL poster's coincidence rates."""

import pytest

from tests.experiments.helpers import N_NEURONS
from tl_capability import (
    attribute,
    zoo,
)


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
