"""Helpers shared by the tests of this folder."""

import pytest
import torch

from tests.models import HAS_BRIDGE
from tl_capability import (
    CapabilityDataset,
    ablate,
    accuracy,
    zoo,
)
from tl_capability.masks import NeuronMask

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


needs_bridge = pytest.mark.skipif(not HAS_BRIDGE, reason="circuits run on the bridge")


TRACE = {"samples": 3, "window": 1}  # window 1: the default for 4 layers


def _facts(n=2, start=0):
    out = {}
    for entity, _ in zoo.ENTITIES[start : start + n]:
        data = zoo.fact_dataset(entity)
        out[entity] = CapabilityDataset.from_pairs(
            data.prompts, data.answers, entity, subjects=[entity] * len(data)
        )
    return out


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
