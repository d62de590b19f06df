"""Attribution: exact against plain references, complete, and independent of batching."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_capability import CapabilityDataset, tokenize
from tl_capability.attribution import NeuronScores, attribute, ig_alphas

pytestmark = pytest.mark.core

DATA = CapabilityDataset.from_pairs(
    ["12+34=", "rev abc:", "the day was", "q"], ["46", "cba", " fun", "xy"], name="mixed"
)


def _metric(model, tokens, target, metric):
    logp = model(tokens)[0, -1].float().log_softmax(-1)[target]
    return logp if metric == "logprob" else logp.exp()


def reference_scores(model, ds, method, steps=4, rule="midpoint", metric="prob"):
    """Obviously correct and slow: the whole model re-run per sample, answer token, layer, step."""
    n_layers = model.cfg.n_layers
    alphas = ig_alphas(steps, rule)
    out = []
    for s in tokenize(model, ds):
        per_token = []
        for m, target in enumerate(s.answer):
            z = torch.tensor([list(s.prompt + s.answer[:m])])
            q = z.shape[1] - 1
            clean = {}
            with (
                torch.no_grad(),
                model.hooks(
                    fwd_hooks=[
                        (
                            f"blocks.{layer}.mlp.hook_post",
                            lambda a, hook, layer=layer: clean.__setitem__(layer, a[0, q].clone()),
                        )
                        for layer in range(n_layers)
                    ]
                ),
            ):
                model(z)
            layer_scores = []
            for layer in range(n_layers):
                a = clean[layer]
                if method == "activation":
                    layer_scores.append(a.abs())
                    continue
                points = alphas if method == "ig" else torch.ones(1)
                grads = []
                for alpha in points:
                    box = {}

                    def patch(act, hook, alpha=alpha, a=a, box=box):
                        new = act.clone()
                        new[0, q] = alpha * a
                        box["x"] = new
                        return new

                    with (
                        torch.enable_grad(),
                        model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", patch)]),
                    ):
                        value = _metric(model, z, target, metric)
                        (g,) = torch.autograd.grad(value, box["x"])
                    grads.append(g[0, q])
                g = torch.stack(grads).mean(0)
                if method == "neurgrad":
                    layer_scores.append(g * a.sign())
                else:
                    layer_scores.append(g * a)
            per_token.append(torch.stack(layer_scores))
        out.append(torch.stack(per_token).mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("method", ["ig", "grad_x_act", "neurgrad", "activation"])
def test_matches_the_plain_reference(model, method):
    ref = reference_scores(model, DATA, method)
    got = attribute(model, DATA, method, steps=4, per_sample=True, progress=False)
    assert got.values.shape == (model.cfg.n_layers, model.cfg.d_mlp)
    torch.testing.assert_close(got.per_sample, ref, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got.values, ref.mean(0), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got.std, ref.std(0), rtol=1e-3, atol=1e-7)
    assert got.n == len(DATA)


def test_logprob_and_left_rule_match_the_reference(model):
    ref = reference_scores(model, DATA, "ig", steps=3, rule="left", metric="logprob")
    got = attribute(
        model, DATA, steps=3, rule="left", metric="logprob", per_sample=True, progress=False
    )
    torch.testing.assert_close(got.per_sample, ref, rtol=1e-4, atol=1e-7)


def test_ig_completeness(model):
    """Σ_j IG over a layer -> P(clean) - P(layer zeroed at that position) as steps grow."""
    ds = CapabilityDataset.from_pairs(["rev abc:"], ["c"])
    (s,) = tokenize(model, ds)
    z = torch.tensor([list(s.prompt)])
    q = z.shape[1] - 1
    target = s.answer[0]
    with torch.no_grad():
        clean = _metric(model, z, target, "prob")
    gaps = []
    for steps in (1, 4, 64):
        scores = attribute(model, ds, steps=steps, progress=False)
        gaps.append([])
        for layer in range(model.cfg.n_layers):

            def zero(act, hook, q=q):
                act = act.clone()
                act[0, q] = 0
                return act

            with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", zero)]):
                ablated = _metric(model, z, target, "prob")
            gaps[-1].append(abs(scores.values[layer].sum().item() - (clean - ablated).item()))
    assert max(gaps[-1]) < 0.02 * abs(clean.item()) + 1e-6
    assert sum(gaps[-1]) <= sum(gaps[0]) + 1e-7


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 4), st.integers(1, 300))
def test_results_do_not_depend_on_batching(model, batch_size, max_rows):
    base = attribute(model, DATA, steps=2, progress=False, per_sample=True)
    other = attribute(
        model,
        DATA,
        steps=2,
        batch_size=batch_size,
        max_rows=max_rows,
        progress=False,
        per_sample=True,
    )
    torch.testing.assert_close(other.per_sample, base.per_sample, rtol=1e-4, atol=1e-7)


def test_padding_does_not_change_a_sample(model):
    alone = attribute(model, DATA.select([3]), "grad_x_act", progress=False)
    together = attribute(model, DATA, "grad_x_act", per_sample=True, progress=False)
    torch.testing.assert_close(together.per_sample[3], alone.values, rtol=1e-4, atol=1e-7)


def test_save_and_load_round_trip(model, tmp_path):
    scores = attribute(model, DATA, "grad_x_act", per_sample=True, progress=False)
    scores.save(tmp_path / "s")
    back = NeuronScores.load(tmp_path / "s")
    assert torch.equal(back.values, scores.values) and torch.equal(back.std, scores.std)
    assert torch.equal(back.per_sample, scores.per_sample)
    assert (back.n, back.method, back.params) == (scores.n, scores.method, scores.params)


def test_bad_input(model):
    with pytest.raises(ValueError, match="method must be"):
        attribute(model, DATA, "saliency")
    with pytest.raises(ValueError, match="metric must be"):
        attribute(model, DATA, metric="loss")
    with pytest.raises(ValueError, match="steps must be"):
        attribute(model, DATA, steps=0)
    with pytest.raises(ValueError, match="site must be"):
        attribute(model, DATA, site="gate")
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            attribute(model, DATA)
    finally:
        model.eval()
    assert not any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


def test_frozen_parameters_still_get_gradients(model):
    base = attribute(model, DATA, "grad_x_act", progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        frozen = attribute(model, DATA, "grad_x_act", progress=False)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    torch.testing.assert_close(frozen.values, base.values)


def test_non_finite_scores_name_the_sample_and_leave_no_hooks(model):
    def poison(resid, hook):
        return resid * float("nan")

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", poison)]):
        with pytest.raises(ValueError, match=r"non-finite grad_x_act score for sample \d"):
            attribute(model, DATA, "grad_x_act", progress=False)
        # the user's hook is still there, the library's are gone
        assert len(model.hook_dict["blocks.0.hook_resid_post"]._forward_hooks) == 1
        assert not model.hook_dict["blocks.0.mlp.hook_post"]._forward_hooks
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_rows=-1),
        dict(max_rows=0),
        dict(batch_size=0),
        dict(checkpoint_every=0),
        dict(steps=2.5),
        dict(steps=0),
    ],
)
def test_degenerate_sizes_are_refused_not_silently_wrong(model, kwargs, tmp_path):
    """max_rows=-1 used to give all-zero IG scores; batch_size=0 a ZeroDivisionError."""
    with pytest.raises(ValueError, match="must be a positive integer"):
        attribute(model, DATA, "ig", progress=False, checkpoint_dir=tmp_path, **kwargs)
