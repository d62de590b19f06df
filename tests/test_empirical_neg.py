"""Empirical NEG: interventions, their fit, and agreement with NeurGrad."""

import pytest
import torch

from tl_capability import CapabilityDataset, tokenize
from tl_capability.attribution import attribute
from tl_capability.empirical_neg import empirical_neg

pytestmark = pytest.mark.core

DATA = CapabilityDataset.from_pairs(
    ["12+34=", "rev abc:", "the day was", "q", "sort 321:"], ["46", "cba", " fun", "xy", "123"]
)


def _top_neurons(scores, k):
    flat = scores.values.abs().flatten().topk(k).indices
    d_mlp = scores.values.shape[1]
    return torch.stack([flat // d_mlp, flat % d_mlp], 1)


def test_delta_matches_a_manual_intervention(model):
    ds = DATA.select([1])
    (s,) = tokenize(model, ds)
    layer, j, v = 1, 7, 0.5
    result = empirical_neg(model, ds, [(layer, j)], shifts=[v], progress=False)
    deltas = []
    for m, target in enumerate(s.answer):
        z = torch.tensor([list(s.prompt + s.answer[:m])])
        q = z.shape[1] - 1
        with torch.no_grad():
            clean = model(z)[0, -1].softmax(-1)[target]
            acts = {}
            with model.hooks(
                fwd_hooks=[
                    (
                        f"blocks.{layer}.mlp.hook_post",
                        lambda a, hook: acts.__setitem__("a", a[0, q, j]),
                    )
                ]
            ):
                model(z)
            sign = 1.0 if acts["a"] >= 0 else -1.0

            def shift(act, hook, q=q, sign=sign):
                act = act.clone()
                act[0, q, j] += v * sign
                return act

            with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", shift)]):
                shifted = model(z)[0, -1].softmax(-1)[target]
        deltas.append(shifted - clean)
    expected = torch.stack(deltas).mean()
    assert result.shifts.tolist() == [-v, v]
    torch.testing.assert_close(result.delta[0, 0, 1], expected, rtol=1e-4, atol=1e-8)


def test_small_shifts_recover_neurgrad(model):
    """Finite differences: with tiny shifts the empirical slope is the NeurGrad gradient."""
    grads = attribute(model, DATA, "neurgrad", per_sample=True, progress=False)
    neurons = _top_neurons(grads, 10)
    result = empirical_neg(model, DATA, neurons, shifts=[1e-2, 2e-2], progress=False)
    expected = grads.per_sample[:, neurons[:, 0], neurons[:, 1]]
    # float32 finite differences: judge the error against the scale of the gradients.
    scale = expected.abs().max().item()
    torch.testing.assert_close(result.slope, expected, rtol=2e-2, atol=2e-2 * scale)
    assert (result.r.abs() > 0.99).all()  # linear; the sign of r is the sign of the slope


def test_neurgrad_agrees_with_interventions_at_the_papers_shifts(model):
    """The NEG paper's claim, on the top neurons: sign agreement and correlation."""
    grads = attribute(model, DATA, "neurgrad", per_sample=True, progress=False)
    neurons = _top_neurons(grads, 20)
    result = empirical_neg(model, DATA, neurons, progress=False)
    predicted = grads.per_sample[:, neurons[:, 0], neurons[:, 1]].flatten()
    measured = result.slope.flatten()
    big = predicted.abs() > 1e-6
    sign_agreement = (predicted[big].sign() == measured[big].sign()).float().mean()
    correlation = torch.corrcoef(torch.stack([predicted, measured]))[0, 1]
    assert sign_agreement >= 0.9, sign_agreement
    assert correlation >= 0.8, correlation


def test_mask_input_and_bad_neurons(model):
    mask = torch.zeros(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool)
    mask[0, 3] = mask[1, 5] = True
    result = empirical_neg(model, DATA.select([0]), mask, shifts=[0.1], progress=False)
    assert result.neurons.tolist() == [[0, 3], [1, 5]]
    assert result.slope.shape == (1, 2) and result.delta.shape == (1, 2, 2)
    with pytest.raises(ValueError, match="no neurons"):
        empirical_neg(model, DATA, [], progress=False)
    with pytest.raises(ValueError, match="layer out of range"):
        empirical_neg(model, DATA, [(9, 0)], progress=False)
    with pytest.raises(ValueError, match="index out of range"):
        empirical_neg(model, DATA, [(0, 10_000)], progress=False)
    with pytest.raises(ValueError, match="does not fit"):
        empirical_neg(model, DATA, torch.zeros(3, 4, dtype=torch.bool), progress=False)
    with pytest.raises(ValueError, match="shifts must be positive"):
        empirical_neg(model, DATA, [(0, 1)], shifts=[-1.0], progress=False)
