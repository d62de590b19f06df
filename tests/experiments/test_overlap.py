"""Overlap experiments: their numbers equal the same measurements made by hand."""

import pytest

from tests.experiments.helpers import N_NEURONS, by_hand_overlap
from tl_capability import (
    attribute,
    select,
    zoo,
)
from tl_capability.experiments import (
    SplitOverlapRow,
    Table,
    split_overlap,
)
from tl_capability.masks import random_controls


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
