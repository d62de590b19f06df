import ast
import contextlib
import io
import tokenize
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.models import HAS_BRIDGE, save_hf_model
from tl_capability import neuron_site, require_eval
from tl_capability.sites import (
    HookNotReached,
    StopForward,
    final_norm,
    final_resid_hook_name,
    is_bridge,
    kv_cache_forward,
    mlp_parameters,
    mlp_w_out,
    model_device,
    neuron_hook_name,
    resid_pre_hook_name,
    run_until,
    supports_kv_cache,
    unembed,
    unembed_input_hook,
    unembedding,
)

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


def test_model_device_is_the_first_parameters_device(model):
    assert model_device(model) == torch.device("cpu")
    # A CPU fixture alone cannot tell this from "always CPU": meta parameters can.
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


def test_fixture_model_matches_the_installed_transformer_lens(model):
    """CI runs the core tests a second time under TL 3.x; make sure that run really does.

    The model's class must be the one of the TransformerLens that is imported (its
    distribution's major version), and that version the one CI asked for, when it asks.
    """
    import importlib.metadata
    import os

    major = importlib.metadata.version("transformer_lens").split(".")[0]
    assert type(model).__name__ == {"3": "HookedTransformer", "4": "TransformerBridge"}[major]
    asked = os.environ.get("TLC_EXPECT_TL")
    if asked:
        assert major == asked


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


# ---------------------------------------------------------------- the model surface


def _capture(model, names, tokens):
    seen = {}
    hooks = [(n, lambda a, hook, n=n: seen.__setitem__(n, a.detach())) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
    return logits, seen


TOKENS = torch.tensor([[0, 5, 6, 7], [0, 9, 10, 11]])


def test_neuron_hook_name_is_the_sites_hook(model):
    for site in ("post", "pre"):
        names = neuron_site(model, site).hook_names
        assert names == tuple(neuron_hook_name(layer, site) for layer in range(len(names)))
    assert neuron_hook_name(1) == "blocks.1.mlp.hook_post"
    with pytest.raises(ValueError, match="site must be one of 'post', 'pre', got 'gate'"):
        neuron_hook_name(0, "gate")


def test_residual_hooks_are_the_stream_between_blocks_and_before_the_head(model):
    """resid_pre of block 1 is what block 0 wrote; final_norm, unembed of the last block's
    output are the model's logits."""
    last = final_resid_hook_name(model)
    assert last == f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    names = [resid_pre_hook_name(1), "blocks.0.hook_resid_post", last]
    logits, seen = _capture(model, names, TOKENS)
    torch.testing.assert_close(seen[resid_pre_hook_name(1)], seen["blocks.0.hook_resid_post"])
    resid = seen[last].flatten(0, 1)
    with torch.no_grad():
        ours = unembed(model, final_norm(model, resid))
    torch.testing.assert_close(ours, logits.flatten(0, 1), rtol=1e-5, atol=1e-5)
    assert unembed_input_hook(model) is None  # a causal LM: ln_final of the final residual


def test_unembedding_is_the_heads_weights(model):
    w_u, b_u = unembedding(model)
    assert w_u.shape == (model.cfg.d_model, model.cfg.d_vocab)
    _, seen = _capture(model, [final_resid_hook_name(model)], TOKENS)
    x = final_norm(model, seen[final_resid_hook_name(model)].flatten(0, 1))
    with torch.no_grad():
        expected = unembed(model, x)
        torch.testing.assert_close(x @ w_u + (0 if b_u is None else b_u), expected)


def test_unembedding_without_model_level_weights_reads_the_unembed_module():
    """The fallback for models that expose W_U on their unembed module only, and no b_U."""
    w = torch.randn(4, 7)
    bare = SimpleNamespace(unembed=SimpleNamespace(W_U=w))
    w_u, b_u = unembedding(bare)
    assert w_u is w and b_u is None


def test_unembed_input_hook_of_a_masked_lm_is_the_unembeddings_input():
    """BERT-style bridges are read at unembed.hook_in, when they have it."""
    cfg = SimpleNamespace(architecture="BertForMaskedLM")
    assert unembed_input_hook(SimpleNamespace(cfg=cfg, hook_dict={"unembed.hook_in": 0})) == (
        "unembed.hook_in"
    )
    assert unembed_input_hook(SimpleNamespace(cfg=cfg, hook_dict={})) is None


def test_mlp_w_out_is_a_live_view_of_what_the_neurons_write(model):
    """Writing to it changes the MLP's output (so edits stick); its rows are the neurons."""
    w = mlp_w_out(model, 0)
    assert w.shape == (model.cfg.d_mlp, model.cfg.d_model)
    storages = {p.untyped_storage().data_ptr() for p in mlp_parameters(model, 0)}
    assert w.untyped_storage().data_ptr() in storages
    _, before = _capture(model, ["blocks.0.hook_mlp_out"], TOKENS)
    saved = w[3].clone()
    try:
        with torch.no_grad():
            w[3] += 1.0
        _, after = _capture(model, ["blocks.0.hook_mlp_out"], TOKENS)
    finally:
        with torch.no_grad():
            w[3] = saved
    assert not torch.equal(before["blocks.0.hook_mlp_out"], after["blocks.0.hook_mlp_out"])


def test_mlp_w_out_of_the_wrong_shape_is_refused(model):
    lying = SimpleNamespace(blocks=model.blocks, cfg=SimpleNamespace(d_mlp=64))
    with pytest.raises(ValueError, match=r"blocks.1.mlp.W_out has shape \(128, 64\)"):
        mlp_w_out(lying, 1)


def test_mlp_parameters_are_the_mlps_own(model):
    ours = {id(p) for p in mlp_parameters(model, 1)}
    assert ours == {id(p) for p in model.blocks[1].mlp.parameters()}
    assert ours.isdisjoint({id(p) for p in model.blocks[0].parameters()})


def test_is_bridge_tells_the_generations_apart(model):
    assert is_bridge(model) == (type(model).__name__ == "TransformerBridge")


class _Probed:
    """A bridge-shaped stand-in over a real Hugging Face model whose forward pass does what it
    is told: raise, or return a given cache; it records every call."""

    def __init__(self, outcome, original_model=None):
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_positions=8, n_embd=8, n_layer=1, n_head=2, vocab_size=11)
        self.original_model = original_model or GPT2LMHeadModel(config)
        self.cfg = SimpleNamespace(
            architecture="GPT2LMHeadModel", is_encoder_decoder=False, d_vocab=11, n_layers=1
        )
        self.outcome, self.calls, self.fwd_hooks = outcome, [], []

    def parameters(self):
        return self.original_model.parameters()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks):
        self.fwd_hooks = list(fwd_hooks)
        try:
            yield
        finally:
            self.fwd_hooks = []

    def _output(self, tokens, kwargs, width):
        return torch.zeros(*tokens.shape, width)

    def __call__(self, tokens, **kwargs):
        self.calls.append(kwargs)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        for name, hook in self.fwd_hooks:  # the residual leaving the (only) block
            if name == "blocks.0.hook_resid_post":
                hook(self._output(tokens, kwargs, 8), None)
        logits = self._output(tokens, kwargs, 11)
        return (logits, self.outcome) if kwargs.get("return_type") == "logits_and_cache" else logits


def _filled_cache(n_tokens=2):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, n_tokens, 4), torch.zeros(1, 2, n_tokens, 4), 0)
    return cache


def test_supports_kv_cache_is_decided_by_the_cache_a_hugging_face_decoder_fills():
    yes = _Probed(_filled_cache())
    assert supports_kv_cache(yes)
    assert yes.calls[0] == {"use_cache": True, "return_type": "logits_and_cache"}
    assert not supports_kv_cache(_Probed(None))
    assert not supports_kv_cache(_Probed(TypeError("unexpected keyword argument 'use_cache'")))
    assert not supports_kv_cache(_Probed(NotImplementedError("no cache")))


def test_a_cache_left_empty_or_inexact_is_refused_with_a_warning():
    """transformer-lens 4.3 under transformers 5.24+ leaves the cache it is handed empty (its
    attention reads ``past_key_values``; the blocks pass ``cache``): cached rows would see no
    prefix, so such a model takes the general path, and says why."""
    from transformers import DynamicCache

    with pytest.warns(UserWarning, match="does not reproduce its full forward pass"):
        assert not supports_kv_cache(_Probed(DynamicCache()))

    class _Inexact(_Probed):
        def _output(self, tokens, kwargs, width):
            out = super()._output(tokens, kwargs, width)
            return out + 1.0 if "past_key_values" in kwargs else out

    with pytest.warns(UserWarning, match="does not reproduce its full forward pass"):
        assert not supports_kv_cache(_Inexact(_filled_cache()))


def test_supports_kv_cache_lets_real_failures_through():
    """The probe used to swallow RuntimeError (out of memory included), ValueError and
    AttributeError, silently choosing the slow path for a model that cannot run."""
    for error in (RuntimeError("CUDA out of memory"), ValueError("bad"), AttributeError("x")):
        with pytest.raises(type(error)):
            supports_kv_cache(_Probed(error))


def test_supports_kv_cache_without_a_run_for_models_that_are_not_hugging_face_decoders(model):
    """HookedTransformer, native bridges (a TransformerLens model inside), encoder-decoders and
    masked LMs are decided from their structure: the model is never called."""
    from transformers import DynamicCache

    native = _Probed(DynamicCache(), original_model=torch.nn.Linear(2, 2))
    encoder_decoder = _Probed(DynamicCache())
    encoder_decoder.cfg.is_encoder_decoder = True
    masked = _Probed(DynamicCache())
    masked.cfg.architecture = "BertForMaskedLM"
    for probed in (native, encoder_decoder, masked):
        assert not supports_kv_cache(probed)
        assert probed.calls == []

    calls = []

    def count(tokens, hook):
        calls.append(1)

    with model.hooks(fwd_hooks=[("hook_embed", count)]):
        assert not supports_kv_cache(model)  # the tiny model: HookedTransformer or native
    assert calls == []


@pytest.fixture(scope="module")
def hf_bridge(tmp_path_factory):
    if not HAS_BRIDGE:
        pytest.skip("needs TransformerLens 4.x")
    from transformer_lens import TransformerBridge

    directory = save_hf_model("gpt2", tmp_path_factory.mktemp("gpt2"))
    return TransformerBridge.boot_transformers(str(directory)).eval()


def test_kv_cache_forward_returns_the_logits_and_the_filled_cache(hf_bridge):
    assert supports_kv_cache(hf_bridge)
    with torch.no_grad():
        logits, cache = kv_cache_forward(hf_bridge, TOKENS)
        torch.testing.assert_close(logits, hf_bridge(TOKENS))
    assert type(cache).__name__ == "DynamicCache"
    assert cache.layers[0].keys.shape[-2] == TOKENS.shape[1]


# ---------------------------------------------------------------- one module owns the surface

PACKAGE = Path(__file__).parent.parent / "tl_capability"
SURFACE = (
    "hook_resid",
    "hook_post",
    "hook_pre",
    "hook_in",
    "hook_dict",
    '"blocks.',
    ".blocks[",
    "W_U",
    "b_U",
    "W_out",
    ".ln_final",
    ".unembed(",
    "original_model",
    "logits_and_cache",
)


def _code(source: str) -> list[str]:
    """The source's lines without comments and docstrings (string statements)."""
    prose: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            prose.update(range(node.lineno, node.end_lineno + 1))
    lines: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or tok.start[0] in prose:
            continue
        lines[tok.start[0]] = lines.get(tok.start[0], "") + tok.string
    return list(lines.values())


def _surface_uses(source: str) -> list[str]:
    return [word for line in _code(source) for word in SURFACE if word in line]


def test_the_surface_scan_sees_code_and_skips_prose():
    source = '''"""Docstring: W_U and blocks.0.hook_resid_post."""
# a comment on model.W_U
x = model.W_U  # the code
name = f"blocks.{layer}.hook_resid_pre"
'''
    assert _surface_uses(source) == ["W_U", "hook_resid", '"blocks.']
    assert _surface_uses((PACKAGE / "sites" / "support.py").read_text())  # where it all lives


def test_only_sites_knows_the_model_surface():
    """Hook names, head and MLP weights, the KV-cache call: the sites package only."""
    found = {
        path.relative_to(PACKAGE).as_posix(): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "sites"
        and (uses := _surface_uses(path.read_text()))
    }
    assert found == {}


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


def test_run_until_names_a_hook_point_the_pass_never_reached(model):
    def stop(act, hook):
        raise StopForward

    tokens = torch.tensor([[0, 1, 2]])
    last = final_resid_hook_name(model)
    early = [(resid_pre_hook_name(0), stop)]
    with pytest.raises(HookNotReached, match=last):
        run_until(model, last, tokens, early)
    assert run_until(model, last, tokens, []).shape[:2] == (1, 3)
