"""Causal tracing (ROME): the identities of restoring, the batched restorations against a plain
loop of one run per (layer, token) with the same noise, the located layer and the refusals."""

import numpy as np
import pytest
import torch

import tl_capability as tlc
from tests.helpers import KINDS, traced_facts_fixture, traced_model_fixture, traces_fixture  # noqa: F401 (fixtures used by name)
from tests.models import HAS_BRIDGE, save_hf_model
from tl_capability.sites import hook_points_in_use
from tl_capability.tracing import (
    EMBED_HOOK,
    CausalTrace,
    embedding_std,
    subject_ranges,
    trace_hook_name,
    window_layers,
)

pytestmark = pytest.mark.core


@torch.no_grad()
def plain_trace(model, prompt, answer, span, noise, kind, window):
    """The reference: one run per (token, layer) of ``samples`` rows, full logits, as
    TransformerLens's ``generic_activation_patch`` runs its patches."""
    n_layers, (first, end) = model.cfg.n_layers, span
    tokens = torch.tensor([prompt])
    clean = {}
    names = [trace_hook_name(layer, kind) for layer in range(n_layers)]
    with model.hooks(
        fwd_hooks=[(n, lambda x, hook, n=n: clean.__setitem__(n, x[0])) for n in names]
    ):
        model(tokens)

    def add_noise(x, hook):
        x = x.clone()
        x[:, first:end] += noise.to(x)
        return x

    def restore(name, t):
        def hook(x, hook):
            x = x.clone()
            x[:, t] = clean[name][t]
            return x

        return hook

    scores = torch.zeros(len(prompt), n_layers)
    for t in range(len(prompt)):
        for layer in range(n_layers):
            layers = [layer] if kind is None else window_layers(layer, n_layers, window)
            hooks = [(EMBED_HOOK, add_noise)] + [(names[j], restore(names[j], t)) for j in layers]
            logits = model.run_with_hooks(tokens.expand(len(noise), -1), fwd_hooks=hooks)
            scores[t, layer] = logits[:, -1].float().softmax(-1)[:, answer].mean()
    return scores


def noise_of(result, i, d_model):
    first, end = result.subject_ranges[i]
    rng = np.random.RandomState(result.seed)
    return torch.from_numpy(rng.randn(result.samples, end - first, d_model) * result.noise_std)


def test_restoring_the_last_token_after_the_last_block_gives_the_clean_probability(traces):
    result = traces[None]
    for i, scores in enumerate(result.scores):
        assert scores[-1, -1] == pytest.approx(float(result.high[i]), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_restoring_a_token_before_the_subject_gives_the_corrupted_probability(traces, kind):
    result = traces[kind]
    for i, scores in enumerate(result.scores):
        first, _ = result.subject_ranges[i]
        assert first > 0
        torch.testing.assert_close(scores[:first], torch.full_like(scores[:first], result.low[i]))


@pytest.mark.parametrize("kind", KINDS)
def test_batched_restorations_equal_a_plain_loop_with_the_same_noise(model, facts, kind):
    # batch_size 7 with 3 samples: two restorations a pass, the last pass shorter.
    result = tlc.causal_trace(model, facts, kind=kind, samples=3, window=3, batch_size=7)
    tokens = tlc.tokenize(model, facts)
    for i, sample in enumerate(tokens):
        noise = noise_of(result, i, model.cfg.d_model)
        reference = plain_trace(
            model, sample.prompt, sample.answer[0], result.subject_ranges[i], noise, kind, 3
        )
        torch.testing.assert_close(result.scores[i], reference, rtol=1e-5, atol=1e-6)
    assert not hook_points_in_use(model)


def test_the_batch_size_does_not_change_the_scores(model, facts, traces):
    small = tlc.causal_trace(model, facts, kind="mlp", samples=3, batch_size=1)
    for a, b in zip(small.scores, traces["mlp"].scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_effects_located_layer_and_masks(model, traces):
    result = traces["mlp"]
    assert isinstance(result, CausalTrace) and result.kind == "mlp"
    last = torch.stack(
        [s[end - 1] for s, (_, end) in zip(result.scores, result.subject_ranges, strict=True)]
    )
    torch.testing.assert_close(result.indirect_effects, last - result.low[:, None])
    torch.testing.assert_close(result.aie, (last - result.low[:, None]).mean(0))
    assert result.located == tuple(int(i) for i in last.argmax(1))
    assert result.aie_peak == int(result.aie.argmax())
    assert result.total_effect == pytest.approx(float((result.high - result.low).mean()))
    for i, mask in enumerate(result.masks):
        assert isinstance(mask, tlc.NeuronMask)
        assert mask.tensor.shape == (model.cfg.n_layers, model.cfg.d_mlp)
        assert mask.tensor[result.located[i]].all() and len(mask) == model.cfg.d_mlp
    assert len(result.rows) == len(result.scores) * model.cfg.n_layers
    assert "Causal trace" in result.to_markdown()


def test_the_clean_and_corrupted_runs_do_not_depend_on_the_kind(traces):
    for kind in ("mlp", "attn"):
        torch.testing.assert_close(traces[kind].high, traces[None].high)
        torch.testing.assert_close(traces[kind].low, traces[None].low)


def test_the_noise_is_seeded_and_scaled_by_the_subject_embeddings_std(model, facts, traces):
    again = tlc.causal_trace(model, facts, kind=None, samples=3)
    torch.testing.assert_close(again.low, traces[None].low, rtol=0, atol=0)
    other = tlc.causal_trace(model, facts, kind=None, samples=3, seed=1)
    assert not torch.equal(other.low, traces[None].low)
    std = embedding_std(model, facts)
    assert traces[None].embedding_std == pytest.approx(std)
    ranges, prompts = subject_ranges(model, facts), [s.prompt for s in tlc.tokenize(model, facts)]
    table = model.W_E if hasattr(model, "W_E") else model.embed.W_E
    ids = torch.tensor([t for p, (a, b) in zip(prompts, ranges, strict=True) for t in p[a:b]])
    assert std == pytest.approx(float(table[ids].double().std()), rel=1e-5)
    half = tlc.causal_trace(model, facts, kind=None, samples=3, noise=1.5, std=2 * std)
    torch.testing.assert_close(half.low, traces[None].low)


def test_window_layers_follow_rome():
    assert window_layers(0, 12, 10) == range(0, 5)
    assert window_layers(6, 12, 10) == range(1, 11)
    assert window_layers(11, 12, 10) == range(6, 12)
    assert window_layers(3, 12, 1) == range(3, 4)
    assert window_layers(3, 12, 3) == range(2, 5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "resid"},
        {"samples": 0},
        {"samples": 2.0},
        {"samples": True},
        {"noise": 0.0},
        {"noise": -1.0},
        {"noise": float("inf")},
        {"noise": float("nan")},
        {"window": 0},
        {"batch_size": 0},
        {"seed": -1},
        {"std": 0.0},
    ],
)
def test_bad_arguments_are_refused(model, facts, kwargs):
    with pytest.raises(ValueError):
        tlc.causal_trace(model, facts, **kwargs)


def test_facts_without_subjects_are_refused(model):
    facts = tlc.CapabilityDataset.from_pairs(["the cat is"], [" x"])
    with pytest.raises(ValueError, match="subject"):
        tlc.causal_trace(model, facts)
    with pytest.raises(TypeError):
        tlc.causal_trace(model, ["the cat is"])
    with pytest.raises(ValueError):
        tlc.CapabilityDataset.from_pairs([], [], subjects=[])


def test_training_mode_and_long_prompts_are_refused(model):
    facts = tlc.CapabilityDataset.from_pairs(["x" * 60 + "bob"], [" x"], subjects=["bob"])
    with pytest.raises(ValueError, match="context"):
        tlc.causal_trace(model, facts)
    short = tlc.CapabilityDataset.from_pairs(["bob is"], [" x"], subjects=["bob"])
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            tlc.causal_trace(model, short)
    finally:
        model.eval()


def test_hooks_are_removed_after_an_exception(model, facts, monkeypatch):
    import tl_capability.tracing as tracing

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    real = tracing.answer_logits
    monkeypatch.setattr(tracing, "answer_logits", failing)
    with pytest.raises(RuntimeError, match="boom"):
        tlc.causal_trace(model, facts, samples=2)
    assert not hook_points_in_use(model)


@pytest.mark.skipif(not HAS_BRIDGE, reason="needs TransformerLens 4.x")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hugging_face_bridges(arch, tmp_path):
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_transformers(str(save_hf_model(arch, tmp_path))).eval()
    facts = tlc.CapabilityDataset.from_pairs(["the cat of bob is"], [" x"], subjects=["bob"])
    sample = tlc.tokenize(model, facts)[0]
    for kind in KINDS:
        result = tlc.causal_trace(model, facts, kind=kind, samples=2, window=2)
        noise = noise_of(result, 0, model.cfg.d_model)
        reference = plain_trace(
            model, sample.prompt, sample.answer[0], result.subject_ranges[0], noise, kind, 2
        )
        torch.testing.assert_close(result.scores[0], reference, rtol=1e-5, atol=1e-6)
        if kind is None:
            assert result.scores[0][-1, -1] == pytest.approx(float(result.high[0]), abs=1e-6)
