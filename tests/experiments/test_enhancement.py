"""Enhancement: its rows are fine-tuning done by hand."""

import pytest
import torch

from tests.experiments.helpers import N_NEURONS
from tl_capability import (
    accuracy,
    attribute,
    select,
    zoo,
)
from tl_capability.masks import random_controls


def test_enhancement_rows_are_fine_tuning_by_hand(zoo_model):
    from tl_capability import finetune_neurons
    from tl_capability.experiments import EnhancementResult, enhancement

    before = {k: v.detach().clone() for k, v in zoo_model.state_dict().items()}
    train = zoo.dataset("addition", n=16, split="train")
    test = zoo.dataset("addition", n=20)
    mask = select(attribute(zoo_model, train, "grad_x_act", progress=False), top_k=10)
    result = enhancement(zoo_model, train, test, mask, epochs=(1, 2), noise=1.0, seed=3)
    after = zoo_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(result, EnhancementResult) and result.dataset == "addition"
    assert result.located == mask and result.random == random_controls(mask, 1, seed=3)[0]
    labels = [(r.neurons, r.epochs) for r in result.rows]
    assert labels == [(s, e) for s in ("located", "random", "all but located") for e in (0, 1, 2)]
    counts = {r.neurons: r.count for r in result.rows}
    assert counts == {"located": 10, "random": 10, "all but located": N_NEURONS - 10}

    # By hand: the same noise, then the random set fine-tuned for one epoch, then another.
    gen = torch.Generator().manual_seed(3)
    try:
        with torch.no_grad():
            for block in zoo_model.blocks:
                for p in block.mlp.parameters():
                    if p.dim() >= 2:
                        p.add_(1.0 * p.std() * torch.randn(p.shape, generator=gen))
        expected = [100 * accuracy(zoo_model, test)]
        for done in (0, 1):
            finetune_neurons(zoo_model, result.random, train, lr=1e-3, seed=3 + done,
                             progress=False)  # fmt: skip
            expected.append(100 * accuracy(zoo_model, test))
    finally:
        zoo_model.load_state_dict(before)
    got = [r.accuracy for r in result.rows if r.neurons == "random"]
    assert got == pytest.approx(expected)
    assert {r.accuracy for r in result.rows if r.epochs == 0} == {expected[0]}
