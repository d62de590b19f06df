"""Real Hugging Face architectures loaded offline from local directories by the bridge."""

import pytest
import torch

from tests.models import ARCHITECTURES, GATED, HAS_BRIDGE, save_hf_model
from tl_capability import (
    AttributionConfig,
    CapabilityDataset,
    accuracy,
    answer_correct,
    neuron_site,
    tokenize,
)

pytestmark = pytest.mark.skipif(not HAS_BRIDGE, reason="needs TransformerLens 4.x")


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_model(request, tmp_path_factory):
    from transformer_lens import TransformerBridge

    directory = save_hf_model(request.param, tmp_path_factory.mktemp(request.param))
    model = TransformerBridge.boot_transformers(str(directory))
    model.eval()
    return request.param, directory, model


def test_neuron_site_on_every_architecture(arch_model):
    _, _, model = arch_model
    site = neuron_site(model)
    assert (site.n_layers, site.d_mlp) == (2, 128)
    assert neuron_site(model, "pre").d_mlp == 128


def test_bridge_matches_the_hf_model(arch_model):
    from transformers import AutoModelForCausalLM

    _, directory, model = arch_model
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokens = torch.tensor([[0, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, rtol=1e-4, atol=1e-4)


def test_post_site_is_what_the_down_projection_reads(arch_model):
    """For every architecture, hook_post @ W_out (+ b_out) is the MLP's output.

    On gated MLPs (Llama, Mistral, Qwen2) this pins the neuron: act(gate) * up, the input of
    down_proj, checked against the Hugging Face module.
    """
    arch, directory, model = arch_model
    seen = {}
    with (
        model.hooks(
            fwd_hooks=[
                ("blocks.1.mlp.hook_post", lambda a, hook: seen.__setitem__("post", a)),
                ("blocks.1.mlp.hook_in", lambda a, hook: seen.__setitem__("in", a)),
                ("blocks.1.hook_mlp_out", lambda a, hook: seen.__setitem__("out", a)),
            ]
        ),
        torch.no_grad(),
    ):
        model(torch.tensor([[0, 5, 9, 13, 2, 7]]))
    mlp = model.blocks[1].mlp
    out = seen["post"] @ mlp.W_out
    if getattr(mlp, "b_out", None) is not None:
        out = out + mlp.b_out
    torch.testing.assert_close(out, seen["out"], rtol=1e-4, atol=1e-5)
    if arch in GATED:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(directory).eval()
        hf_mlp = hf.model.layers[1].mlp
        x = seen["in"]
        gated = torch.nn.functional.silu(hf_mlp.gate_proj(x)) * hf_mlp.up_proj(x)
        torch.testing.assert_close(seen["post"], gated, rtol=1e-4, atol=1e-5)


def test_accuracy_agrees_with_hf_greedy_generation(arch_model):
    """Library accuracy on the bridge == greedy generation with the Hugging Face model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, directory, model = arch_model
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    prompts = ["ab", "12+3=", "rev xyz:", "the day was", "q", "sort 321:"]
    answers = []
    for i, p in enumerate(prompts):
        ids = torch.tensor([[tok.bos_token_id, *tok(p, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=1)
        text = tok.decode(out[0, ids.shape[1] :])
        answers.append(text if i % 3 else "zz")  # every third sample made wrong on purpose
    ds = CapabilityDataset.from_pairs(prompts, answers)
    expected = []
    for s in tokenize(model, ds):
        ids = torch.tensor([list(s.prompt)])
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=len(s.answer), do_sample=False, pad_token_id=1)
        expected.append(out[0, ids.shape[1] :].tolist() == list(s.answer))
    assert answer_correct(model, ds, batch_size=4).tolist() == expected
    assert accuracy(model, ds) == pytest.approx(sum(expected) / len(expected))


@pytest.mark.parametrize(
    ("method", "max_rows"), [("ig", 1024), ("ig", 7), ("ig", 1), ("grad_x_act", 1024)]
)
def test_cached_path_equals_the_general_path_and_the_reference(arch_model, method, max_rows):
    """The one-token cached rows give the same scores as re-running z_m, on every architecture.
    IG rows enter at their own layer (layered rows): all layers and steps in one pass, steps
    split over sequences with a padded last chunk (7 rows), one layer per pass (1 row)."""
    from tests.attribution.test_attribute import reference_scores
    from tl_capability.attribution import attribute
    from tl_capability.attribution._layered_rows import layered_rows_exact
    from tl_capability.sites import supports_kv_cache

    _, _, model = arch_model
    assert supports_kv_cache(model)
    assert layered_rows_exact(model, neuron_site(model))
    ds = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
    kw = {"steps": 3, "per_sample": True, "progress": False}
    fast = attribute(
        model, ds, method, **kw, config=AttributionConfig(max_rows=max_rows, use_cache=True)
    )
    slow = attribute(
        model, ds, method, **kw, config=AttributionConfig(max_rows=max_rows, use_cache=False)
    )
    assert fast.params["kv_cache"] and not slow.params["kv_cache"]
    torch.testing.assert_close(fast.per_sample, slow.per_sample, rtol=1e-4, atol=1e-7)
    ref = reference_scores(model, ds, method, steps=3)
    torch.testing.assert_close(fast.per_sample, ref, rtol=1e-4, atol=1e-7)


def test_empirical_neg_cached_equals_general(arch_model):
    from tl_capability.empirical_neg import empirical_neg

    _, _, model = arch_model
    ds = CapabilityDataset.from_pairs(["12+34=", "rev abc:"], ["46", "cba"])
    neurons = [(0, 3), (1, 100), (1, 5)]
    fast = empirical_neg(model, ds, neurons, progress=False, use_cache=True)
    slow = empirical_neg(model, ds, neurons, progress=False, use_cache=False)
    torch.testing.assert_close(fast.delta, slow.delta, rtol=1e-4, atol=1e-8)
    assert fast.delta.abs().max() > 0


def test_cached_rows_split_into_groups_read_the_same_values(arch_model):
    """Rows of one target spread over several sequences give the same metric as one sequence."""
    from tl_capability import batches
    from tl_capability.attribution._row_gradients import row_metric
    from tl_capability.attribution._rows import cached_rows, clean_pass, general_rows

    _, _, model = arch_model
    ds = CapabilityDataset.from_pairs(["12+34=", "rev abc:"], ["46", "cba"])
    (batch,) = batches(model, ds, 8)
    _, cache = clean_pass(model, neuron_site(model), batch, use_cache=True)
    targets = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 3, 4])
    with torch.no_grad():
        one = row_metric(model, cached_rows(batch, cache, targets, group=64), "prob", [])
        split = row_metric(model, cached_rows(batch, cache, targets, group=2), "prob", [])
        plain = row_metric(model, general_rows(batch, targets), "prob", [])
    torch.testing.assert_close(split, one, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one, plain, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="sorted"):
        cached_rows(batch, cache, torch.tensor([1, 0]))


def test_bf16_model_accumulates_in_float32(tmp_path):
    """A bf16 model's scores come back as float32 and agree with the float32 model's."""
    from transformer_lens import TransformerBridge

    from tl_capability.attribution import attribute

    directory = save_hf_model("gpt2", tmp_path / "gpt2")
    full = TransformerBridge.boot_transformers(str(directory))
    low = TransformerBridge.boot_transformers(str(directory), dtype=torch.bfloat16)
    full.eval()
    low.eval()
    ds = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
    ref = attribute(full, ds, "grad_x_act", progress=False)
    got = attribute(low, ds, "grad_x_act", progress=False)
    assert got.values.dtype == torch.float32 and torch.isfinite(got.values).all()
    corr = torch.corrcoef(torch.stack([got.values.flatten(), ref.values.flatten()]))[0, 1]
    assert corr > 0.95, corr


def test_mask_edits_on_every_architecture(arch_model):
    """attribute -> select -> ablate == erase -> edit -> undo bit-exact; finetune touches only
    MLPs."""
    from tl_capability.attribution import attribute
    from tl_capability.edits import edit_knowledge, erase_weights, finetune_neurons
    from tl_capability.interventions import ablate
    from tl_capability.masks import select

    _, _, model = arch_model
    ds = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
    mask = select(attribute(model, ds, steps=2, progress=False), top_k=10)
    assert len(mask) == 10
    tokens = torch.tensor([[0, 5, 9, 13, 2, 7]])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        with ablate(model, mask):
            ablated = model(tokens)
        with erase_weights(model, mask):
            erased = model(tokens)
        clean = model(tokens)
    torch.testing.assert_close(erased, ablated, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ablated, clean)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    handle = edit_knowledge(model, mask, "46", "57")
    with torch.no_grad():
        assert not torch.allclose(model(tokens), clean)
    handle.undo()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    try:
        finetune_neurons(model, mask, ds, epochs=2, lr=1e-2, progress=False)
        after = model.state_dict()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed and all(".mlp." in k for k in changed), changed
    finally:
        model.load_state_dict(before)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from transformer_lens import TransformerBridge

    directory = save_hf_model("bert", tmp_path_factory.mktemp("bert"))
    model = TransformerBridge.boot_transformers(str(directory))
    model.eval()
    return directory, model


BERT_DATA = CapabilityDataset.from_pairs(
    ["paris is in [MASK].", "ab", "rev abc: [MASK].", "q"], ["fr", "c", "cba", "xy"]
)


def _mask_positions(model, data):
    return [s.slots for s in tokenize(model, data)], [s.prompt for s in tokenize(model, data)]


def test_masked_lm_accuracy_reads_the_mask_positions(bert):
    """Accuracy on a BERT-style model = argmax of the Hugging Face model at the [MASK]s."""
    from transformers import AutoModelForMaskedLM

    from tl_capability.sites import is_masked_lm

    directory, model = bert
    assert is_masked_lm(model)
    hf = AutoModelForMaskedLM.from_pretrained(directory).eval()
    slots, inputs = _mask_positions(model, BERT_DATA)
    mask_id = model.tokenizer.mask_token_id
    assert inputs[0].count(mask_id) == 2 and inputs[1][-2] == mask_id  # in place, or appended
    expected = []
    for ids, pos, s in zip(inputs, slots, tokenize(model, BERT_DATA), strict=True):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0]
            torch.testing.assert_close(model(torch.tensor([ids]))[0], logits, rtol=1e-4, atol=1e-4)
        expected.append(
            all(logits[p].argmax().item() == t for p, t in zip(pos, s.answer, strict=True))
        )
    assert answer_correct(model, BERT_DATA, batch_size=3).tolist() == expected


@pytest.mark.parametrize("method", ["ig", "grad_x_act"])
def test_masked_lm_attribution_equals_a_full_rerun_reference(bert, method):
    """IG / grad x act on BERT: every row re-runs the whole bidirectional input."""
    from tl_capability import attribute, ig_alphas

    _, model = bert
    got = attribute(model, BERT_DATA, method, steps=3, batch_size=2, progress=False).values
    alphas = ig_alphas(3) if method == "ig" else torch.ones(1)
    per_sample = []
    for s in tokenize(model, BERT_DATA):
        ids = torch.tensor([list(s.prompt)])
        tokens = []
        for q, target in zip(s.slots, s.answer, strict=True):
            layers = []
            for layer in range(2):
                clean = {}
                name = f"blocks.{layer}.mlp.hook_post"
                with (
                    torch.no_grad(),
                    model.hooks(
                        fwd_hooks=[(name, lambda a, hook: clean.__setitem__("a", a[0, q].clone()))]
                    ),
                ):
                    model(ids)
                a, grads = clean["a"], []
                for alpha in alphas:
                    box = {}

                    def patch(act, hook, alpha=alpha, a=a, box=box, q=q):
                        new = act.clone()
                        new[0, q] = alpha * a
                        box["x"] = new
                        return new

                    with torch.enable_grad(), model.hooks(fwd_hooks=[(name, patch)]):
                        p = model(ids)[0, q].float().softmax(-1)[target]
                        (g,) = torch.autograd.grad(p, box["x"])
                    grads.append(g[0, q])
                layers.append(torch.stack(grads).mean(0) * a)
            tokens.append(torch.stack(layers))
        per_sample.append(torch.stack(tokens).mean(0))
    torch.testing.assert_close(got, torch.stack(per_sample).mean(0), rtol=1e-4, atol=1e-7)


def test_masked_lm_end_to_end(bert):
    """attribute -> select -> ablate == erase_weights -> edit -> undo on a BERT-style model."""
    from tl_capability import ablate, attribute, edit_knowledge, erase_weights, select

    _, model = bert
    mask = select(attribute(model, BERT_DATA, steps=2, progress=False), top_k=10)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([list(tokenize(model, BERT_DATA)[0].prompt)])
    with torch.no_grad():
        clean = model(ids)
        with ablate(model, mask):
            ablated = model(ids)
        with erase_weights(model, mask):
            erased = model(ids)
    assert not torch.allclose(ablated, clean)
    torch.testing.assert_close(erased, ablated, rtol=1e-4, atol=1e-5)
    with edit_knowledge(model, mask, "fr", "it"), torch.no_grad():
        assert not torch.allclose(model(ids), clean)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_sliding_window_shorter_than_the_prompt_takes_the_general_path(tmp_path):
    """A sliding-window cache keeps only the last positions of a long prompt: cached rows would
    read the wrong keys, so such a batch re-runs ``z_m``; the scores are the general path's."""
    from transformer_lens import TransformerBridge

    from tl_capability import attribute
    from tl_capability.attribution._rows import clean_pass
    from tl_capability.data import collate

    directory = save_hf_model("mistral", tmp_path / "m", sliding_window=4)
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["12+34=", "rev abc:"], ["46", "cba"])
    samples = tokenize(model, data)
    batch = collate(samples, range(len(samples)), 1)
    _, cache = clean_pass(model, neuron_site(model), batch, True)
    assert cache is None
    kw = {"steps": 3, "per_sample": True, "progress": False}
    fast = attribute(model, data, **kw)
    slow = attribute(model, data, **kw, config=AttributionConfig(use_cache=False))
    torch.testing.assert_close(fast.per_sample, slow.per_sample, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["ig", "grad_x_act", "neurgrad"])
def test_a_local_window_the_rows_would_outgrow_takes_the_general_path(tmp_path, method):
    """GPT-Neo masks its local layers by a query's index in the sequence it is given, so rows
    appended after a cached prefix would see another window than the full pass once prefix and
    rows outgrow it (the scores were off by 16-32 % here): such batches re-run ``z_m``."""
    from transformer_lens import TransformerBridge

    from tests.attribution.test_attribute import reference_scores
    from tl_capability import attribute

    directory = save_hf_model("gpt_neo", tmp_path / "neo", window_size=8)
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
    scores = attribute(model, data, method, steps=3, per_sample=True, progress=False)
    expected = reference_scores(model, data, method, steps=3)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)


def test_attention_window_reads_the_configs(tmp_path):
    from transformer_lens import TransformerBridge

    from tl_capability.sites import attention_window

    def window(arch: str, **config) -> int | None:
        directory = save_hf_model(arch, tmp_path / f"{arch}{len(config)}", **config)
        return attention_window(TransformerBridge.boot_transformers(str(directory)))

    assert window("gpt2") is None
    assert window("mistral", sliding_window=4) == 4
    assert window("gpt_neo", window_size=8) == 8
    assert window("gpt_neo", window_size=8, attention_layers=["global", "global"]) is None


@pytest.mark.parametrize("arch, warning", [("bloom", "4-D mask"), ("mpt", "MPT's ALiBi")])
def test_a_model_whose_cache_rows_would_differ_takes_the_general_path(tmp_path, arch, warning):
    """Bloom builds its ALiBi biases from a 2-D attention mask and raises on the 4-D mask of
    cached rows; MPT's ALiBi follows the keys' indices, not the position ids, so rows appended
    after a cached prefix would be biased as if further along. The cache probe says no (with a
    warning naming why), attribution re-runs ``z_m``, equal to the reference, and
    ``use_cache=True`` is refused."""
    from transformer_lens import TransformerBridge

    from tests.attribution.test_attribute import reference_scores
    from tl_capability import attribute, empirical_neg
    from tl_capability.sites import supports_kv_cache

    directory = save_hf_model(arch, tmp_path / arch)
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    with pytest.warns(UserWarning, match=warning):
        assert not supports_kv_cache(model)
    data = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
    scores = attribute(model, data, steps=3, per_sample=True, progress=False)
    expected = reference_scores(model, data, "ig", steps=3)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="use_cache=True"):
        attribute(model, data, steps=3, progress=False, config=AttributionConfig(use_cache=True))
    with pytest.raises(ValueError, match="use_cache=True"):
        empirical_neg(model, data, [(0, 0)], use_cache=True, progress=False)


@pytest.mark.parametrize(
    "arch, warning", [("bloom", "4-D mask"), ("mpt", "does not reproduce its full")]
)
@pytest.mark.parametrize("method", ["ig", "grad_x_act"])
def test_the_first_call_finds_such_a_cache_on_its_own_passes(tmp_path, arch, warning, method):
    """The same models, with no probe asked before: the first call's own rows find out, warn as
    the probe does, and the scores are the reference's."""
    from transformer_lens import TransformerBridge

    from tests.attribution.test_attribute import reference_scores
    from tl_capability import attribute
    from tl_capability.sites import kv_cache_known

    directory = save_hf_model(arch, tmp_path / arch)
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
    with pytest.warns(UserWarning, match=warning):
        scores = attribute(model, data, method, steps=3, per_sample=True, progress=False)
    assert kv_cache_known(model) is False and not scores.params["kv_cache"]
    expected = reference_scores(model, data, method, steps=3)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)


def test_a_config_that_misstates_the_mlp_width_is_refused_with_the_reason(tmp_path):
    """TransformerLens's bridge reads OPT's ``d_mlp`` as 4 × width whatever ``ffn_dim`` says: the
    width check refuses such a model (its neurons would be misaddressed) and says why."""
    from transformer_lens import TransformerBridge

    from tl_capability import attribute
    from tl_capability.sites import neuron_site

    directory = save_hf_model("opt", tmp_path / "opt", ffn_dim=96)
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["12+34="], ["46"])
    # attribution checks the widths on its first clean pass, not by a pass of its own
    with pytest.raises(ValueError, match="carries 96 values .* misstates its width"):
        attribute(model, data, steps=2, progress=False)
    with pytest.raises(ValueError, match="carries 96 values .* misstates its width"):
        neuron_site(model)


@pytest.mark.parametrize(
    "arch, config, reason",
    [
        ("openai_gpt", {}, "never ran hook point 'blocks.1.hook_resid_post'"),
        ("opt", {"word_embed_proj_dim": 16}, "no attribute 'ln_final'"),
    ],
)
def test_a_model_that_hides_its_head_is_refused_with_the_reason(tmp_path, arch, config, reason):
    """The original GPT's bridge never runs ``blocks.N.hook_resid_post``, and an OPT that
    projects its last residual down has no ``ln_final`` on the bridge: attribution, which reads
    the rows' logits through them, refuses and names what is missing (it used to blame a logit
    transform, or raise an AttributeError)."""
    from transformer_lens import TransformerBridge

    from tl_capability import attribute

    directory = save_hf_model(arch, tmp_path / arch, **config)
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["12+34="], ["46"])
    with pytest.raises(ValueError, match=reason):
        attribute(model, data, steps=2, progress=False)


def test_neurgrad_of_a_silent_relu_neuron_is_its_slope(tmp_path):
    """OPT's ReLU leaves many activations exactly 0; empirical NEG shifts them along +1, so
    NeurGrad must read their gradient there (``torch.sign(0) = 0`` used to zero them all)."""
    from transformer_lens import TransformerBridge

    from tests.attribution.test_attribute import reference_scores
    from tl_capability import attribute

    directory = save_hf_model("opt", tmp_path / "opt")
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
    kw = {"per_sample": True, "progress": False}
    neurgrad = attribute(model, data, "neurgrad", **kw).per_sample
    silent = attribute(model, data, "grad_x_act", **kw).per_sample == 0
    assert silent.float().mean() > 0.2
    assert (neurgrad[silent] != 0).float().mean() > 0.9
    expected = reference_scores(model, data, "neurgrad")
    torch.testing.assert_close(neurgrad, expected, rtol=1e-4, atol=1e-7)


def test_a_users_positional_hook_sends_rows_to_the_general_path(tmp_path):
    """Cached rows sit at other tensor indices than the positions they stand for: a steering
    hook on positions 3 onwards missed them (scores 35-77x off, silently). Unmarked hooks now
    take the general path (with a warning); the library's own position-free hooks, and hooks
    marked with ``position_free``, keep the cached one."""
    from transformer_lens import TransformerBridge

    from tests.attribution.test_attribute import reference_scores
    from tl_capability import NeuronMask, ablate, attribute, empirical_neg, position_free
    from tl_capability.sites import model_name

    directory = save_hf_model("llama", tmp_path / "llama")
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["rev abcdefg:", "12+34="], ["gfe", "46"])
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))

    def steer(resid, hook):
        resid = resid.clone()
        resid[:, 3:] += vector
        return resid

    kw = {"per_sample": True, "progress": False}
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", steer)]):
        with pytest.warns(UserWarning, match="not marked position-free"):
            scores = attribute(model, data, "grad_x_act", **kw)
        assert scores.params["kv_cache"] is False
        expected = reference_scores(model, data, "grad_x_act")
        torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)
        with pytest.warns(UserWarning, match="not marked position-free"):
            slope = empirical_neg(model, data, [(0, 3), (1, 7)], progress=False).slope
        general = empirical_neg(model, data, [(0, 3), (1, 7)], progress=False, use_cache=False)
        torch.testing.assert_close(slope, general.slope)

    tensor = torch.zeros(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool)
    tensor[0, :5] = True
    with ablate(model, NeuronMask(tensor, model_name(model), "post")):
        assert attribute(model, data, "grad_x_act", **kw).params["kv_cache"] is True
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", position_free(lambda r, hook: r))]):
        assert attribute(model, data, "grad_x_act", **kw).params["kv_cache"] is True


def test_position_free_marks_functions_partials_methods_and_callables(arch_model):
    """Whatever callable a user hooks in, once marked it counts as position-free; any unmarked
    one, forward or backward, does not."""
    from functools import partial

    from tl_capability import position_free
    from tl_capability.sites import hooks_are_position_free

    _, _, model = arch_model

    class Steer:
        def method(self, resid, hook):
            return resid

        def __call__(self, resid, hook):
            return resid

    marked = [
        position_free(lambda resid, hook: resid),
        position_free(partial(lambda resid, hook, k: resid, k=1)),
        position_free(Steer().method),
        position_free(Steer()),
    ]

    class Slotted:
        __slots__ = ()

        def __call__(self, resid, hook):
            return resid

    with pytest.raises(TypeError, match="wrap it in a function"):
        position_free(Slotted())
    name = "blocks.0.hook_resid_pre"
    assert hooks_are_position_free(model)
    with model.hooks(fwd_hooks=[(name, fn) for fn in marked]):
        assert hooks_are_position_free(model)
        with model.hooks(bwd_hooks=[(name, lambda grad, hook: None)]):
            assert not hooks_are_position_free(model)
    assert hooks_are_position_free(model)


def test_permanent_and_plain_pytorch_hooks_of_the_user_count_too(tmp_path):
    """A user's permanent hook point hook (``add_perma_hook``) and a plain PyTorch hook on a
    block (as steering libraries attach) also miss cached rows: both send rows to the general
    path, equal to it; TransformerLens's own permanent hooks (OPT's bridge) do not."""
    from transformer_lens import TransformerBridge

    from tl_capability import attribute
    from tl_capability.sites import hooks_are_position_free

    directory = save_hf_model("llama", tmp_path / "llama")
    model = TransformerBridge.boot_transformers(str(directory)).eval()
    data = CapabilityDataset.from_pairs(["rev abcdefg:", "12+34="], ["gfe", "46"])
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    kw = {"per_sample": True, "progress": False}

    def steer(resid, hook):
        resid = resid.clone()
        resid[:, 3:] += vector
        return resid

    def steer_block(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, 3:] += vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    model.blocks[0].hook_resid_pre.add_perma_hook(steer)
    handle = model.blocks[0].register_forward_hook(steer_block)
    for remove in (
        lambda: model.blocks[0].hook_resid_pre.remove_hooks(including_permanent=True),
        handle.remove,
    ):
        with pytest.warns(UserWarning, match="not marked position-free"):
            scores = attribute(model, data, "grad_x_act", **kw)
        general = attribute(
            model, data, "grad_x_act", **kw, config=AttributionConfig(use_cache=False)
        )
        torch.testing.assert_close(scores.per_sample, general.per_sample)
        remove()
    assert hooks_are_position_free(model)
    assert attribute(model, data, "grad_x_act", **kw).params["kv_cache"] is True
    opt = TransformerBridge.boot_transformers(str(save_hf_model("opt", tmp_path / "opt")))
    assert hooks_are_position_free(opt.eval())
