"""Attribution: exact against plain references, complete, and independent of batching."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_capability import CapabilityDataset, tokenize
from tl_capability._storage import tensors_digest
from tl_capability.attribution import (
    AttributionConfig,
    NeuronScores,
    attribute,
    ig_alphas,
    neuron_order,
)

pytestmark = pytest.mark.core

DATA = CapabilityDataset.from_pairs(
    ["12+34=", "rev abc:", "the day was", "q"], ["46", "cba", " fun", "xy"], name="mixed"
)


def _metric(model, tokens, target, metric):
    logp = model(tokens)[0, -1].float().log_softmax(-1)[target]
    return logp if metric == "logprob" else logp.exp()


def reference_scores(model, ds, method, steps=4, rule="midpoint", metric="prob", layers=None):
    """Obviously correct and slow: the whole model re-run per sample, answer token, layer, step
    (``layers``: only these layers, in this order; default all)."""
    n_layers = model.cfg.n_layers
    chosen = range(n_layers) if layers is None else layers
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
            for layer in chosen:
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
                    layer_scores.append(g * torch.where(a < 0, -1.0, 1.0))  # sign(0) = +1
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
        model,
        DATA,
        steps=3,
        metric="logprob",
        per_sample=True,
        progress=False,
        config=AttributionConfig(rule="left"),
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
        progress=False,
        per_sample=True,
        config=AttributionConfig(max_rows=max_rows),
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
        attribute(model, DATA, config=AttributionConfig(site="gate"))
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
    """max_rows=-1 used to give all-zero IG scores; batch_size=0 a ZeroDivisionError. The
    settings of AttributionConfig are refused when the config is made."""
    config = {k: kwargs.pop(k) for k in ("max_rows", "checkpoint_every") if k in kwargs}
    with pytest.raises(ValueError, match="must be a positive integer"):
        settings = AttributionConfig(checkpoint_dir=tmp_path, **config)
        attribute(model, DATA, "ig", progress=False, **kwargs, config=settings)


# ---------------------------------------------------------------------- checkpoints and files


def _checkpoint(tmp_path):
    return tmp_path / "attribution-rank0-of-1.safetensors"


def _checkpointed(model, method, folder, **kwargs):
    """One attribution that checkpoints into ``folder``."""
    return attribute(
        model,
        DATA,
        method,
        progress=False,
        config=AttributionConfig(checkpoint_dir=folder),
        **kwargs,
    )


def test_checkpoint_of_edited_weights_is_refused(model, tmp_path):
    """Editing the weights between two runs used to resume to the pre-edit scores."""
    from tl_capability.edits import erase_weights
    from tl_capability.masks import NeuronMask

    clean = _checkpointed(model, "grad_x_act", tmp_path)
    mask = NeuronMask.from_indices([(0, 3), (1, 5)], model.cfg.n_layers, model.cfg.d_mlp)
    with erase_weights(model, mask):
        edited = attribute(model, DATA, "grad_x_act", progress=False)
        assert not torch.equal(edited.values, clean.values)
        with pytest.raises(ValueError, match="another run"):
            _checkpointed(model, "grad_x_act", tmp_path)
    resumed = _checkpointed(model, "grad_x_act", tmp_path)
    assert torch.equal(resumed.values, clean.values)


def test_checkpoint_of_another_dtype_is_refused(model, tmp_path):
    _checkpointed(model, "activation", tmp_path)
    model.to(torch.float64)
    try:
        with pytest.raises(ValueError, match="another run"):
            _checkpointed(model, "activation", tmp_path)
    finally:
        model.to(torch.float32)


def _rewrite(path, **changes):
    from tl_capability._storage import load_atomic, save_atomic

    state, meta = load_atomic(path)
    for key, value in changes.items():
        if key in meta:
            meta[key] = value
        else:
            state[key] = value(state[key])
    save_atomic(path, state, meta)


@pytest.mark.parametrize(
    "change",
    [
        dict(total=lambda t: t * float("nan")),
        dict(total_sq=lambda t: t + float("inf")),
        dict(batches_done=99),
        dict(batches_done=-1),
        dict(batches_done="1"),
        dict(count=lambda c: c + 1),
        dict(total=lambda t: t[:1]),
        dict(per_sample=lambda t: t[:2]),
        dict(per_sample=lambda t: t * float("nan")),
    ],
)
def test_corrupt_checkpoint_is_refused_naming_the_file(model, tmp_path, change):
    _checkpointed(model, "activation", tmp_path, per_sample=True)
    _rewrite(_checkpoint(tmp_path), **change)
    with pytest.raises(ValueError, match="attribution-rank0-of-1.safetensors"):
        _checkpointed(model, "activation", tmp_path, per_sample=True)


@pytest.mark.parametrize("where", [12, -3])
def test_checkpoint_with_flipped_bytes_is_refused(model, tmp_path, where):
    _checkpointed(model, "activation", tmp_path)
    path = _checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="attribution-rank0-of-1.safetensors"):
        _checkpointed(model, "activation", tmp_path)


def _saved_scores(model, tmp_path):
    scores = attribute(model, DATA, "activation", per_sample=True, progress=False)
    scores.save(tmp_path / "s")
    return scores


@pytest.mark.parametrize(
    "tensors,meta",
    [
        (dict(values=lambda t: t[0]), {}),
        (dict(std=lambda t: t[:, :3]), {}),
        (dict(values=lambda t: t * float("nan")), {}),
        (dict(std=lambda t: t.long()), {}),
        (dict(per_sample=lambda t: t[1:]), {}),
        (dict(per_sample=lambda t: t[..., :5]), {}),
        ({}, dict(n=0)),
        ({}, dict(n="4")),
        ({}, dict(n=3)),
        ({}, dict(method="magic")),
        ({}, dict(params=[1, 2])),
        ({}, dict(method=None)),
        ({}, dict(params={"n_layers": 7})),
        ({}, dict(params={"d_mlp": 3})),
    ],
)
def test_scores_load_validates_the_files(model, tmp_path, tensors, meta):
    """A tampered or foreign scores folder used to load silently."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _saved_scores(model, tmp_path)
    folder = tmp_path / "s"
    state = load_file(folder / "scores.safetensors")
    with safe_open(folder / "scores.safetensors", framework="pt") as f:
        header = f.metadata()
    for key, fn in tensors.items():
        state[key] = fn(state[key]).contiguous()
    # Re-sign the tensors, so that the checks of their values, not the checksum, must notice.
    header["sha256"] = tensors_digest(state)
    save_file(state, folder / "scores.safetensors", metadata=header)
    info = json.loads((folder / "scores.json").read_text())
    info.update(meta)
    (folder / "scores.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="does not hold valid scores:") as err:
        NeuronScores.load(folder)
    assert str(folder) in str(err.value)
    assert "checksum" not in str(err.value)


def test_scores_load_refuses_unreadable_files(model, tmp_path):
    _saved_scores(model, tmp_path)
    folder = tmp_path / "s"
    (folder / "scores.json").write_text("{not json")
    with pytest.raises(ValueError, match="scores.json"):
        NeuronScores.load(folder)
    _saved_scores(model, tmp_path)
    (folder / "scores.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="scores.safetensors"):
        NeuronScores.load(folder)


def test_scores_save_is_atomic_across_both_files(model, tmp_path, request):
    """A failure between writing the tensors and the JSON used to leave a mismatched pair."""
    first = _saved_scores(model, tmp_path)
    second = attribute(model, DATA.select([0, 1]), "activation", progress=False)
    monkeypatch = request.getfixturevalue("json_writes_fail")
    with pytest.raises(OSError, match="disk full"):
        second.save(tmp_path / "s")
    with pytest.raises(OSError, match="disk full"):
        second.save(tmp_path / "fresh")
    monkeypatch.undo()
    back = NeuronScores.load(tmp_path / "s")
    assert back.n == first.n and torch.equal(back.values, first.values)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "scores.json",
        "scores.safetensors",
    ]
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())


def test_scores_pair_half_replaced_does_not_load(model, tmp_path, monkeypatch):
    """A crash between the two renames leaves a pair that is refused, never one that loads."""
    import os

    _saved_scores(model, tmp_path)
    second = attribute(model, DATA.select([0, 1]), "activation", progress=False)
    real, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        second.save(tmp_path / "s")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="do not belong together"):
        NeuronScores.load(tmp_path / "s")


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.data(),
)
def test_top_and_ranking_agree_with_sorting_every_neuron(n_layers, d_mlp, data):
    values = torch.tensor(
        data.draw(
            st.lists(st.integers(-3, 3), min_size=n_layers * d_mlp, max_size=n_layers * d_mlp)
        ),
        dtype=torch.float32,
    ).view(n_layers, d_mlp)
    scores = NeuronScores(values, torch.zeros_like(values), 1, "ig")
    for absolute in (False, True):
        key = values.abs() if absolute else values
        # Obviously correct: every (layer, index) sorted by score, ties by flat index.
        expected = sorted(
            ((layer, j) for layer in range(n_layers) for j in range(d_mlp)),
            key=lambda p: (-float(key[p]), p[0] * d_mlp + p[1]),
        )
        assert scores.ranking(absolute=absolute).tolist() == [list(p) for p in expected]
        k = data.draw(st.integers(0, n_layers * d_mlp))
        assert scores.top(k, absolute=absolute).tolist() == [list(p) for p in expected[:k]]


@pytest.mark.parametrize("k", [-1, 7, 2.0, True])
def test_top_refuses_impossible_counts(k):
    scores = NeuronScores(torch.zeros(2, 3), torch.zeros(2, 3), 1, "ig")
    with pytest.raises(ValueError, match="k must be an integer"):
        scores.top(k)


@pytest.mark.parametrize("rows_per_pass", [1, 10**6])
def test_layers_sharing_a_pass_give_the_same_scores(model, monkeypatch, rows_per_pass):
    """Integrated-gradients rows of several layers in one pass (few rows per layer) equal one
    layer per pass (many rows per layer)."""
    import tl_capability.attribution._methods as methods

    kwargs = {"steps": 3, "per_sample": True, "progress": False}
    expected = reference_scores(model, DATA, "ig", steps=3)
    monkeypatch.setattr(methods, "_ROWS_PER_PASS", rows_per_pass)
    scores = attribute(model, DATA, **kwargs)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["values", "std", "per_sample"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_scores_that_load_would_refuse_are_refused_at_save(tmp_path, name, bad):
    """Scores holding NaN (or infinite) values used to save, and then not load."""
    tensors = {"values": torch.zeros(2, 3), "std": torch.zeros(2, 3)}
    tensors["per_sample"] = torch.zeros(4, 2, 3)
    tensors[name].view(-1)[1] = bad
    scores = NeuronScores(tensors["values"], tensors["std"], 4, "ig", {}, tensors["per_sample"])
    with pytest.raises(ValueError, match=f"{name} holds NaN or infinite values"):
        scores.save(tmp_path / "scores")
    assert not (tmp_path / "scores").exists()


def test_the_config_is_checked_when_it_is_made(tmp_path):
    with pytest.raises(TypeError):
        AttributionConfig("pre")  # keywords only: a positional setting would be ambiguous
    with pytest.raises(TypeError, match="use_cache"):
        AttributionConfig(use_cache="yes")
    with pytest.raises(TypeError, match="checkpoint_dir"):
        AttributionConfig(checkpoint_dir=3)
    with pytest.raises(TypeError, match="AttributionConfig"):
        attribute(None, DATA, config={"rule": "left"})
    assert AttributionConfig(checkpoint_dir=tmp_path, max_rows=3).max_rows == 3


def test_attribute_keeps_to_ten_parameters():
    import inspect

    assert len(inspect.signature(attribute).parameters) <= 10


def test_neuron_order_is_descending_with_ties_by_flat_index():
    s = torch.tensor([[1.0, 3.0, 1.0], [3.0, 0.0, 2.0]])
    assert neuron_order(s).tolist() == [[0, 1], [1, 0], [1, 2], [0, 0], [0, 2], [1, 1]]
