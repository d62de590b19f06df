"""rankings: contrastive scores, the all-position scores every ranked method starts from, and
iterative re-attribution with the chosen neurons erased."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import OTHER, TARGET, _all
from tl_capability import CapabilityDataset, ablate
from tl_capability.attribution import neuron_order
from tl_capability.masks import NeuronMask
from tl_capability.rankings import all_position_ig, contrastive_scores, iterative_ranking

pytestmark = pytest.mark.core


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=6, max_size=6),
    st.lists(st.floats(-5, 5), min_size=6, max_size=6),
    st.lists(st.floats(-5, 5), min_size=6, max_size=6),
)
def test_contrastive_scores_subtract_what_controls_need(t, a, b):
    t, a, b = (torch.tensor(x).view(2, 3) for x in (t, a, b))
    got = contrastive_scores(t, {"a": a, "b": b})
    torch.testing.assert_close(got, t - torch.maximum(a.clamp(min=0), b.clamp(min=0)))
    mean = contrastive_scores(t, {"a": a, "b": b}, reduce="mean", weight=0.5)
    torch.testing.assert_close(mean, t - 0.5 * (a.clamp(min=0) + b.clamp(min=0)) / 2)
    assert (got <= t).all()


def test_contrastive_scores_refuse_bad_input():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="at least one control"):
        contrastive_scores(s, {})
    with pytest.raises(ValueError, match="same"):
        contrastive_scores(s, {"a": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="NaN"):
        contrastive_scores(s, {"a": torch.full((2, 3), float("nan"))})
    with pytest.raises(ValueError, match="reduce"):
        contrastive_scores(s, {"a": s}, reduce="median")


def test_all_position_ig_is_the_logprob_ig_at_every_position(model):
    torch.testing.assert_close(all_position_ig(model, TARGET, 8, None), _all(model, TARGET))
    torch.testing.assert_close(all_position_ig(model, TARGET, 8, 1), _all(model, TARGET))


def test_iterative_ranking_equals_the_rounds_done_by_hand(model):
    order = iterative_ranking(model, TARGET, {"o": OTHER}, chunk=3, rounds=2, progress=False)
    first = neuron_order(contrastive_scores(_all(model, TARGET), {"o": _all(model, OTHER)}))[:3]
    chosen = NeuronMask.from_indices(first, model.cfg.n_layers, model.cfg.d_mlp)
    with ablate(model, chosen):
        again = contrastive_scores(_all(model, TARGET), {"o": _all(model, OTHER)})
    again = again.masked_fill(chosen.tensor, -torch.inf)
    second = neuron_order(again)[:3]
    assert order.tolist() == torch.cat([first, second]).tolist()
    assert len({tuple(p) for p in order.tolist()}) == 6  # no neuron chosen twice


def test_nothing_stays_attached_after_an_exception(model):
    too_long = CapabilityDataset.from_pairs(["x" * 500], ["y"], name="long")
    before = {n: len(h.fwd_hooks) for n, h in model.hook_dict.items()}
    with pytest.raises(ValueError, match="context"):
        iterative_ranking(model, TARGET, {"long": too_long}, chunk=2, rounds=2, progress=False)
    assert {n: len(h.fwd_hooks) for n, h in model.hook_dict.items()} == before


# Issue 31, item 7: each of these gave a plausible result with no error.


def test_contrastive_scores_refuse_a_nan_weight_and_a_list_of_controls():
    """weight=nan returned all NaN; a list of controls raised AttributeError."""
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="weight must be a finite number"):
        contrastive_scores(s, {"a": s}, weight=float("nan"))
    with pytest.raises(ValueError, match="controls must map names to scores, got list"):
        contrastive_scores(s, [s])


@pytest.mark.parametrize("kwargs", [{"rounds": 2.5}, {"chunk": 0}, {"steps": 0}])
def test_iterative_ranking_refuses_counts_that_are_not_positive_integers(model, kwargs):
    """rounds=2.5 raised TypeError from range()."""
    args = {"chunk": 1, "rounds": 1, **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        iterative_ranking(model, TARGET, progress=False, **args)
