import pytest
import torch

from tl_capability import neuron_site, require_eval
from tl_capability.sites import model_device

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


def _has_hooks(model) -> bool:
    return any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


def test_training_mode_is_refused(model):
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            require_eval(model)
    finally:
        model.eval()
    require_eval(model)


def test_model_device_is_cpu(model):
    assert model_device(model) == torch.device("cpu")


def test_fixture_model_matches_the_installed_transformer_lens(model):
    """CI runs the core tests a second time under TL 3.x; make sure that run really does."""
    import os

    expected = {"3": "HookedTransformer", "4": "TransformerBridge"}.get(
        os.environ.get("TLC_EXPECT_TL", "")
    )
    if expected is not None:
        assert type(model).__name__ == expected
    assert type(model).__name__ in {"HookedTransformer", "TransformerBridge"}


def test_a_submodule_in_training_mode_is_refused(model):
    """Only the top-level flag used to be read: a block left in training mode (dropout on)
    passed."""
    model.blocks[1].mlp.train()
    try:
        with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
            require_eval(model)
    finally:
        model.eval()
    require_eval(model)
