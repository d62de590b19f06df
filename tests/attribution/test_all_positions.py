"""All-position attribution: exact against a plain reference and against Captum, complete, and
independent of how rows are batched."""

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models import HAS_BRIDGE, save_hf_model
from tl_capability import CapabilityDataset, tokenize
from tl_capability.attribution import AttributionConfig, attribute, ig_alphas
from tl_capability.attribution._all_positions import MIN_ROWS, ROW_POSITIONS, all_position_rows

pytestmark = pytest.mark.core

DATA = CapabilityDataset.from_pairs(
    ["12+34=", "rev abc:", "the day was", "q"], ["46", "cba", " fun", "xy"], name="mixed"
)


def _sequence(model, sample):
    """The teacher-forced sequence of one sample and where each answer token is read."""
    tokens = torch.tensor([list(sample.prompt + sample.answer[:-1])])
    reads = [len(sample.prompt) - 1 + m for m in range(len(sample.answer))]
    return tokens, reads


def _f(logits, reads, answer, metric):
    logp = logits[0].float().log_softmax(-1)[reads, list(answer)]
    return (logp if metric == "logprob" else logp.exp()).mean()


def _clean(model, tokens, layer):
    box = {}
    with (
        torch.no_grad(),
        model.hooks(
            fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", lambda a, hook: box.setdefault("a", a[0]))]
        ),
    ):
        model(tokens)
    return box["a"].clone()


def _f_scaled(model, tokens, reads, answer, metric, layer, value):
    """``f`` with layer ``layer``'s activations replaced by ``value`` at every position."""
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", lambda a, hook: value[None])]):
        return _f(model(tokens), reads, answer, metric)


def _per_sample_and_layer(model, ds, layer_score):
    """``[sample, layer, d_mlp]`` of ``layer_score(tokens, reads, answer, layer, a)``, with ``a``
    the layer's clean activations at every position of the sample's sequence."""
    out = []
    for s in tokenize(model, ds):
        tokens, reads = _sequence(model, s)
        out.append(
            torch.stack(
                [
                    layer_score(tokens, reads, s.answer, layer, _clean(model, tokens, layer))
                    for layer in range(model.cfg.n_layers)
                ]
            )
        )
    return torch.stack(out)


def reference(model, ds, method="ig", steps=4, metric="prob"):
    """Obviously correct and slow: the whole model re-run per sample, layer and step."""

    def score(tokens, reads, answer, layer, a):
        if method == "activation":
            return a.abs().mean(0)
        points = ig_alphas(steps) if method == "ig" else torch.ones(1)
        total = torch.zeros_like(a)
        for alpha in points:
            x = (alpha * a).requires_grad_(True)
            with torch.enable_grad():
                value = _f_scaled(model, tokens, reads, answer, metric, layer, x)
                (g,) = torch.autograd.grad(value, x)
            total += g
        return (a * total / len(points)).sum(0)

    return _per_sample_and_layer(model, ds, score)


@pytest.mark.parametrize("method", ["ig", "activation"])
@pytest.mark.parametrize("metric", ["prob", "logprob"])
def test_matches_the_plain_reference(model, method, metric):
    scores = attribute(
        model,
        DATA,
        method,
        steps=4,
        metric=metric,
        positions="all",
        per_sample=True,
        progress=False,
    )
    ref = reference(model, DATA, method, steps=4, metric=metric)
    torch.testing.assert_close(scores.per_sample, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scores.values, ref.mean(0), rtol=1e-4, atol=1e-6)


def test_grad_x_act_is_the_gradient_at_the_clean_run_for_every_layer_at_once(model):
    """One pass for all layers must equal differentiating each layer alone (paths through
    later layers included)."""
    scores = attribute(model, DATA, "grad_x_act", positions="all", per_sample=True, progress=False)
    ref = reference(model, DATA, "grad_x_act")
    torch.testing.assert_close(scores.per_sample, ref, rtol=1e-4, atol=1e-6)


def _captum(model, ds, steps, metric):
    from captum.attr import IntegratedGradients

    def score(tokens, reads, answer, layer, a):
        def forward(x, toks):
            hook = (f"blocks.{layer}.mlp.hook_post", lambda act, hook: x)
            with model.hooks(fwd_hooks=[hook]):
                logp = model(toks).float().log_softmax(-1)[:, reads, list(answer)]
            return (logp if metric == "logprob" else logp.exp()).mean(-1)

        attr = IntegratedGradients(forward).attribute(
            a[None],
            baselines=torch.zeros_like(a[None]),
            additional_forward_args=(tokens,),
            n_steps=steps,
            method="riemann_middle",
        )
        return attr[0].sum(0)

    return _per_sample_and_layer(model, ds, score).mean(0)


def test_matches_captum_integrated_gradients_on_the_layer_activation(model):
    pytest.importorskip("captum", reason="captum is in the dev extra")
    scores = attribute(
        model, DATA, "ig", steps=5, metric="logprob", positions="all", progress=False
    )
    torch.testing.assert_close(
        scores.values, _captum(model, DATA, 5, "logprob"), rtol=1e-4, atol=1e-6
    )


@pytest.mark.skipif(not HAS_BRIDGE, reason="Hugging Face models load through the 4.x bridge")
@pytest.mark.parametrize(
    "arch, grows",
    [
        ("gpt2", True),
        ("llama", True),
        ("gpt_neox", True),
        ("opt", True),
        ("mpt", True),
        ("bloom", False),
        ("xglm", False),
    ],
)
def test_matches_captum_on_hugging_face_architectures(arch, grows):
    """Bridges over Hugging Face models take the path that shares the layers below the scaled
    one across rows (with an explicit 4-D causal mask and position ids, which OPT would
    otherwise derive from the mask); Bloom (ALiBi from a 2-D mask) and XGLM (which checks the
    mask's batch size) refuse a batch grown under one mask, and re-run the prompt per row."""
    import warnings

    from transformer_lens import TransformerBridge

    from tl_capability.attribution._all_position_probes import expands

    path = save_hf_model(arch, Path(tempfile.mkdtemp(prefix=f"tlc-{arch}-")))
    model = TransformerBridge.boot_transformers(str(path))
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert expands(model, 8) == grows
    assert any("grown inside" in str(w.message) for w in caught) == (not grows)
    scores = attribute(model, DATA, "ig", steps=4, positions="all", progress=False)
    torch.testing.assert_close(scores.values, _captum(model, DATA, 4, "prob"), rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not HAS_BRIDGE, reason="Hugging Face models load through the 4.x bridge")
@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_a_sliding_window_narrower_than_the_prompts_is_kept(arch):
    """An explicit 4-D mask replaces the model's own, sliding window included (transformers
    applies no window on top of a mask it is given): prompts wider than the window re-run
    the model's own pass. The grown-batch path gave 45-65 % errors here."""
    from transformer_lens import TransformerBridge

    from tl_capability.attribution._all_position_probes import expands

    path = save_hf_model(arch, Path(tempfile.mkdtemp(prefix=f"tlc-{arch}-")), sliding_window=4)
    model = TransformerBridge.boot_transformers(str(path)).eval()
    assert expands(model, 4) and not expands(model, 5)
    scores = attribute(model, DATA, "ig", steps=4, positions="all", per_sample=True, progress=False)
    expected = reference(model, DATA, "ig", steps=4)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not HAS_BRIDGE, reason="Hugging Face models load through the 4.x bridge")
def test_the_grown_batch_probe_runs_again_when_the_hooks_change():
    """A user's hook that cannot take a grown batch makes the probe say no (with the reason);
    once it is removed, the probe runs again and says yes."""
    from transformer_lens import TransformerBridge

    from tl_capability.attribution._all_position_probes import expands

    path = save_hf_model("gpt2", Path(tempfile.mkdtemp(prefix="tlc-gpt2-")))
    model = TransformerBridge.boot_transformers(str(path)).eval()

    def two_rows_only(resid, hook):
        if resid.shape[0] > 2:
            raise RuntimeError("this hook takes two rows")
        return resid

    model.blocks[1].hook_resid_pre.add_hook(two_rows_only)
    with pytest.warns(UserWarning, match="this hook takes two rows"):
        assert not expands(model, 8)
    model.reset_hooks()
    assert expands(model, 8)


def test_completeness_per_layer(model):
    """Σ_j IG_j of one layer → f(clean) − f(layer zeroed at every position)."""
    ds = DATA.select([0])
    scores = attribute(model, ds, "ig", steps=64, positions="all", progress=False)
    (s,) = tokenize(model, ds)
    tokens, reads = _sequence(model, s)
    with torch.no_grad():
        clean = _f(model(tokens), reads, s.answer, "prob")
        for layer in range(model.cfg.n_layers):
            zeroed = _f_scaled(
                model,
                tokens,
                reads,
                s.answer,
                "prob",
                layer,
                torch.zeros_like(_clean(model, tokens, layer)),
            )
            total = scores.values[layer].sum()
            assert abs(total - (clean - zeroed)) <= 0.02 * abs(clean - zeroed) + 1e-5


@settings(max_examples=6, deadline=None)
@given(batch_size=st.integers(1, 4), max_rows=st.integers(1, 12))
def test_independent_of_batching(model, batch_size, max_rows):
    base = attribute(model, DATA, "ig", steps=3, positions="all", progress=False)
    other = attribute(
        model,
        DATA,
        "ig",
        steps=3,
        positions="all",
        progress=False,
        batch_size=batch_size,
        config=AttributionConfig(max_rows=max_rows),
    )
    torch.testing.assert_close(other.values, base.values, rtol=1e-4, atol=1e-7)


@given(length=st.integers(1, 4096))
def test_default_rows_hold_about_1024_positions_and_at_least_64(length):
    rows = all_position_rows(None, length)
    assert rows >= MIN_ROWS
    assert rows == MIN_ROWS or rows * length <= ROW_POSITIONS < (rows + 1) * length
    assert all_position_rows(7, length) == 7  # a chosen max_rows is kept


def test_short_sequences_take_larger_passes_with_the_same_scores(model):
    short = CapabilityDataset.from_pairs(["ab", "c"], ["d", "e"], name="short")
    assert all_position_rows(None, 3) > MIN_ROWS
    base = attribute(model, short, "ig", steps=20, positions="all", progress=False)
    small = attribute(
        model, short, "ig", steps=20, positions="all", progress=False,
        config=AttributionConfig(max_rows=MIN_ROWS),
    )  # fmt: skip
    torch.testing.assert_close(base.values, small.values, rtol=1e-4, atol=1e-7)


def test_bad_options_are_refused(model):
    with pytest.raises(ValueError, match="positions must be one of"):
        attribute(model, DATA, positions="every", progress=False)
    with pytest.raises(ValueError, match="positions='all' supports"):
        attribute(model, DATA, "neurgrad", positions="all", progress=False)


def test_answer_and_all_position_checkpoints_do_not_mix(model, tmp_path):
    attribute(
        model,
        DATA,
        "ig",
        steps=2,
        progress=False,
        config=AttributionConfig(checkpoint_dir=tmp_path),
    )
    with pytest.raises(ValueError, match="another run"):
        attribute(
            model,
            DATA,
            "ig",
            steps=2,
            progress=False,
            positions="all",
            config=AttributionConfig(checkpoint_dir=tmp_path),
        )


@pytest.mark.parametrize("arch", [None, "gpt2", "llama", "gpt_neox"])
def test_rows_forked_after_the_scaled_block_equal_rows_forked_before_it(model, arch, monkeypatch):
    """Sharing the scaled layer's own block (rows fork after it, adding (α a − a) W_out) gives
    the scores of rows that run that block themselves."""
    import tl_capability.attribution._all_positions as all_positions

    if arch is not None:
        if not HAS_BRIDGE:
            pytest.skip("Hugging Face models load through the 4.x bridge")
        from transformer_lens import TransformerBridge

        path = save_hf_model(arch, Path(tempfile.mkdtemp(prefix=f"tlc-{arch}-")))
        model = TransformerBridge.boot_transformers(str(path)).eval()
    assert all_positions.mlp_output_adds_linearly(model)
    kwargs = {"steps": 3, "positions": "all", "per_sample": True, "progress": False}
    forked = attribute(model, DATA, "ig", **kwargs)
    monkeypatch.setattr(all_positions, "mlp_output_adds_linearly", lambda m: False)
    per_row = attribute(model, DATA, "ig", **kwargs)
    torch.testing.assert_close(forked.per_sample, per_row.per_sample, rtol=1e-4, atol=1e-7)


def test_a_block_whose_mlp_output_is_not_linear_keeps_rows_apart(model):
    """A norm (here a tanh, hooked on the last block after the answer was first kept) after the
    MLP breaks ``δ W_out``: the probe must notice, and the scores must still equal the plain
    reference."""
    from tl_capability import sites

    assert sites.mlp_output_adds_linearly(model)  # kept for this model from now on
    last = model.cfg.n_layers - 1
    hook = model.hook_dict[f"blocks.{last}.hook_mlp_out"]
    hook.add_hook(lambda out, hook: torch.tanh(out))
    try:
        assert not sites.mlp_output_adds_linearly(model)
        scores = attribute(
            model, DATA, "ig", steps=2, positions="all", per_sample=True, progress=False
        )
        ref = reference(model, DATA, "ig", steps=2)
        torch.testing.assert_close(scores.per_sample, ref, rtol=1e-4, atol=1e-6)
    finally:
        hook.remove_hooks()
    assert sites.mlp_output_adds_linearly(model)


def test_swapping_a_hook_for_another_is_probed_again(model):
    """The memo used to count hooks per hook point: an identity hook swapped for a tanh (same
    count) kept the stale "linear" answer, and grown rows gave wrong scores silently."""
    from tl_capability import sites

    hook = model.hook_dict["blocks.0.hook_mlp_out"]
    hook.add_hook(lambda out, hook: out)
    try:
        assert sites.mlp_output_adds_linearly(model)
        hook.remove_hooks()
        hook.add_hook(lambda out, hook: torch.tanh(3 * out))
        assert not sites.mlp_output_adds_linearly(model)
    finally:
        hook.remove_hooks()
    model.blocks[0].register_forward_pre_hook(lambda module, args: None).remove()
    assert sites.mlp_output_adds_linearly(model)


@pytest.mark.skipif(not HAS_BRIDGE, reason="Hugging Face models load through the 4.x bridge")
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_the_last_mlp_runs_where_it_is_read_only(arch, monkeypatch):
    """Rows read the last block's output at their answer positions only, so its MLP runs there
    (and at every position of the clean samples): the same scores as running it everywhere,
    on the grown-batch path and on the rows that re-run the scaled block."""
    from transformer_lens import TransformerBridge

    import tl_capability.attribution._all_positions as all_positions

    path = save_hf_model(arch, Path(tempfile.mkdtemp(prefix=f"tlc-{arch}-")))
    model = TransformerBridge.boot_transformers(str(path)).eval()
    assert all_positions.packed_last_mlp(model) is not None
    kwargs = {"steps": 3, "positions": "all", "per_sample": True, "progress": False}
    packed = attribute(model, DATA, "ig", **kwargs)
    monkeypatch.setattr(all_positions, "mlp_output_adds_linearly", lambda m: False)
    packed_per_row = attribute(model, DATA, "ig", **kwargs)
    monkeypatch.setattr(all_positions, "packed_last_mlp", lambda m: None)
    whole = attribute(model, DATA, "ig", **kwargs)
    torch.testing.assert_close(packed.per_sample, whole.per_sample, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(packed_per_row.per_sample, whole.per_sample, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not HAS_BRIDGE, reason="Hugging Face models load through the 4.x bridge")
def test_a_last_block_that_mixes_positions_after_its_mlp_runs_it_everywhere():
    """A last block that mixes positions after its MLP (here a hook, marked position-free, that
    adds the sum over earlier positions to its output) would make the packed MLP wrong: the
    check finds it, and rows run the MLP everywhere."""
    from transformer_lens import TransformerBridge

    import tl_capability.attribution._all_positions as all_positions
    from tl_capability import position_free

    path = save_hf_model("gpt2", Path(tempfile.mkdtemp(prefix="tlc-gpt2-")))
    model = TransformerBridge.boot_transformers(str(path)).eval()
    last = model.cfg.n_layers - 1
    mix = position_free(lambda out, hook: out + 0.1 * out.cumsum(1))
    with model.hooks(fwd_hooks=[(f"blocks.{last}.hook_resid_post", mix)]):
        assert all_positions.packed_last_mlp(model) is None
        scores = attribute(
            model, DATA, "ig", steps=2, positions="all", per_sample=True, progress=False
        )
        expected = reference(model, DATA, "ig", steps=2)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)
    assert all_positions.packed_last_mlp(model) is not None
