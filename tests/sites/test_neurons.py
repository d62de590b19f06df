"""The neuron site of every layer: hook_post / hook_pre, widths checked once per model."""

import pytest
import torch

from tests.sites.helpers import _has_hooks
from tl_capability import neuron_site

pytestmark = pytest.mark.core


def test_post_site_resolves_every_layer(model):
    site = neuron_site(model)
    assert site.kind == "post"
    assert site.n_layers == model.cfg.n_layers
    assert site.d_mlp == model.cfg.d_mlp
    assert site.n_neurons == model.cfg.n_layers * model.cfg.d_mlp
    assert site.hook_names == tuple(
        f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)
    )
    assert site.hook_name(-1) == f"blocks.{model.cfg.n_layers - 1}.mlp.hook_post"


def test_pre_site_on_request(model):
    assert neuron_site(model, "pre").hook_name(0) == "blocks.0.mlp.hook_pre"


def test_post_site_is_the_input_of_w_out(model):
    """The post-activation times W_out (+ b_out) is the MLP's output."""
    seen = {}
    with (
        model.hooks(
            fwd_hooks=[
                ("blocks.0.mlp.hook_post", lambda a, hook: seen.__setitem__("post", a)),
                ("blocks.0.hook_mlp_out", lambda a, hook: seen.__setitem__("out", a)),
            ]
        ),
        torch.no_grad(),
    ):
        model(torch.tensor([[0, 5, 6, 7]]))
    mlp = model.blocks[0].mlp
    out = seen["post"] @ mlp.W_out + mlp.b_out
    torch.testing.assert_close(out, seen["out"], rtol=1e-4, atol=1e-5)


def test_unknown_site_is_refused(model):
    with pytest.raises(ValueError, match="site must be one of"):
        neuron_site(model, "gate")


def test_missing_hook_is_refused(model):
    class NoMLP:
        cfg = model.cfg
        hook_dict = {k: v for k, v in model.hook_dict.items() if "mlp" not in k}

    with pytest.raises(ValueError, match="no neuron hook 'blocks.0.mlp.hook_post'"):
        neuron_site(NoMLP())


def test_attention_only_config_is_refused():
    class Cfg:
        n_layers = 2
        d_mlp = None

    class AttnOnly:
        cfg = Cfg()
        hook_dict: dict = {}

    with pytest.raises(ValueError, match="no MLP neurons"):
        neuron_site(AttnOnly())


def test_wrong_width_is_refused(model):
    """A layer whose neuron hook is not d_mlp wide (as in MoE adapters) is named in the error."""

    def shrink(act, hook):
        return act[..., :7]

    # Pretend the model declares more neurons than its hook carries.
    class Lying:
        def __init__(self, inner):
            self._inner = inner
            self.cfg = type("Cfg", (), {"n_layers": inner.cfg.n_layers, "d_mlp": 64})()
            self.hook_dict = inner.hook_dict
            self.tokenizer = inner.tokenizer

        def hooks(self, **kw):
            return self._inner.hooks(**kw)

        def parameters(self):
            return self._inner.parameters()

        def __call__(self, tokens):
            return self._inner(tokens)

    with pytest.raises(ValueError, match="carries 128 values per position but cfg.d_mlp is 64"):
        neuron_site(Lying(model))
    assert not _has_hooks(model)


def test_the_width_check_runs_once_per_model_and_site_and_a_failure_is_not_remembered(model):
    """The check costs a forward pass; attribute and accuracy call neuron_site every time."""
    from tl_capability.sites import neurons as sites

    sites._WIDTHS_CHECKED.pop(model, None)
    calls = []
    original = sites._check_width

    def counting(m, site):
        calls.append(site.kind)
        return original(m, site)

    sites._check_width = counting
    try:
        first = neuron_site(model)
        assert neuron_site(model) == first
        neuron_site(model, "pre")
        neuron_site(model, "pre")
        assert calls == ["post", "pre"]
        sites._WIDTHS_CHECKED.pop(model, None)

        def failing(m, site):
            calls.append("failed")
            raise ValueError("not a dense MLP")

        sites._check_width = failing
        for _ in range(2):
            with pytest.raises(ValueError, match="not a dense MLP"):
                neuron_site(model)
        assert calls[-2:] == ["failed", "failed"]
    finally:
        sites._check_width = original
        sites._WIDTHS_CHECKED.pop(model, None)
