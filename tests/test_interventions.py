"""Interventions: what they do to activations, composition, hygiene, generation."""

import pytest
import torch

from tl_capability import CapabilityDataset, accuracy, batches
from tl_capability.interventions import ablate, answer_positions, mean_activations
from tl_capability.masks import NeuronMask

pytestmark = pytest.mark.core

TOKENS = torch.tensor([[0, 5, 6, 7, 8], [0, 9, 10, 11, 12]])


def _post(model, tokens=TOKENS):
    cache = {}
    hooks = [
        (f"blocks.{lay}.mlp.hook_post", lambda a, hook, lay=lay: cache.__setitem__(lay, a))
        for lay in range(model.cfg.n_layers)
    ]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens)
    return cache


def _mask(model):
    return NeuronMask.from_indices([(0, 3), (0, 7), (1, 11)], model.cfg.n_layers, model.cfg.d_mlp)


def _no_hooks(model):
    return not any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize(
    "mode,kw,expect",
    [
        ("zero", {}, lambda a: torch.zeros_like(a)),
        ("scale", {"factor": 3.0}, lambda a: 3 * a),
        ("add", {"shift": 0.5}, lambda a: a + 0.5 * torch.where(a < 0, -1.0, 1.0)),
        ("value", {"value": 1.25}, lambda a: torch.full_like(a, 1.25)),
    ],
)
def test_modes_change_exactly_the_masked_neurons(model, mode, kw, expect):
    mask = _mask(model)
    clean = _post(model)
    # Observe layer 1 with layer 0 untouched: ablate only layer-1 neurons for a clean read.
    only1 = NeuronMask.from_indices([(1, 11)], model.cfg.n_layers, model.cfg.d_mlp)
    with ablate(model, only1, mode, **kw):
        edited = _post(model)
    torch.testing.assert_close(edited[1][..., 11], expect(clean[1][..., 11]))
    others = torch.ones(model.cfg.d_mlp, dtype=torch.bool)
    others[11] = False
    torch.testing.assert_close(edited[1][..., others], clean[1][..., others])
    assert _no_hooks(model)
    with ablate(model, mask, mode, **kw):
        assert len(_post(model)) == model.cfg.n_layers
    assert _no_hooks(model)


def test_mean_mode_and_positions(model):
    ds = CapabilityDataset.from_pairs(["ab", "cde"], ["x", "yz"])
    means = mean_activations(model, ds)
    assert means.shape == (model.cfg.n_layers, model.cfg.d_mlp)
    only0 = NeuronMask.from_indices([(0, 3)], model.cfg.n_layers, model.cfg.d_mlp)
    with ablate(model, only0, "mean", means=means):
        got = _post(model)[0][..., 3]
    torch.testing.assert_close(got, torch.full_like(got, means[0, 3].item()))
    (batch,) = batches(model, ds, 4)
    pos = answer_positions(batch)
    clean = _post(model, batch.tokens)
    with ablate(model, only0, positions=pos):
        edited = _post(model, batch.tokens)
    assert (edited[0][..., 3][pos] == 0).all()
    torch.testing.assert_close(edited[0][..., 3][~pos], clean[0][..., 3][~pos])
    with pytest.raises(ValueError, match="needs means"):
        only0.hooks("mean")


def test_hooks_are_removed_after_an_exception_and_user_hooks_survive(model):
    seen = []
    model.add_hook("blocks.0.mlp.hook_post", lambda a, hook: seen.append(1))
    try:
        with pytest.raises(RuntimeError, match="boom"), ablate(model, _mask(model)):
            model(TOKENS)
            raise RuntimeError("boom")
        hooks = model.hook_dict["blocks.0.mlp.hook_post"]._forward_hooks
        assert len(hooks) == 1  # the user's hook, not ours
        seen.clear()
        model(TOKENS)
        assert seen == [1]
    finally:
        model.reset_hooks()
    assert _no_hooks(model)


def test_composes_with_run_with_cache_and_a_user_hook(model):
    mask = _mask(model)
    calls = []

    def user(act, hook):
        calls.append(act[..., 3].abs().sum().item())

    with model.hooks(fwd_hooks=[*mask.hooks(), ("blocks.0.mlp.hook_post", user)]):
        _, cache = model.run_with_cache(TOKENS)
    assert calls == [0.0]  # the user's hook ran after the ablation and saw it
    assert (cache["blocks.0.mlp.hook_post"][..., [3, 7]] == 0).all()
    assert (cache["blocks.1.mlp.hook_post"][..., 11] == 0).all()
    assert _no_hooks(model)


def test_ablation_changes_accuracy_only_inside_the_block(model):
    ds = CapabilityDataset.from_pairs(["ab", "cd"], ["x", "y"])
    everything = NeuronMask(torch.ones(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool))
    before = model(TOKENS)
    with ablate(model, everything):
        inside = model(TOKENS)
        accuracy(model, ds)
    assert not torch.allclose(before, inside)
    torch.testing.assert_close(model(TOKENS), before)


def test_foreign_mask_is_refused(model):
    other = NeuronMask.empty(model.cfg.n_layers + 1, model.cfg.d_mlp)
    with pytest.raises(ValueError, match="not 2 x 128"), ablate(model, other):
        pass
    with pytest.raises(ValueError, match="mode must be"):
        _mask(model).hooks("delete")


@pytest.mark.parametrize("extra", [-64, 72])
def test_a_foreign_masks_hooks_refuse_the_model_before_indexing(model, extra):
    """Hooks of a mask made for another width indexed the activations anyway: past d_mlp (an
    IndexError inside the hook), or, for a narrower mask, silently the wrong neurons."""
    other = NeuronMask.from_indices([(0, 1)], model.cfg.n_layers, model.cfg.d_mlp + extra)
    with pytest.raises(ValueError, match="made for another model"):
        model.run_with_hooks(TOKENS, fwd_hooks=other.hooks())


def test_interventions_import_masks_at_the_top_and_masks_import_no_interventions():
    """The circle masks <-> interventions is gone."""
    import ast
    from pathlib import Path

    package = Path(__file__).parent.parent / "tl_capability"

    def imported(path):
        return {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        }

    masks = set().union(*(imported(p) for p in (package / "masks").glob("*.py")))
    assert not any(m.startswith("tl_capability.interventions") for m in masks)
    top = ast.parse((package / "interventions.py").read_text()).body
    assert any(isinstance(n, ast.ImportFrom) and n.module == "tl_capability.masks" for n in top)


def test_ablation_applies_during_generation(zoo_model):
    """Greedy generation with the KV cache under an ablation == greedy re-runs under it."""
    model = zoo_model
    mask = NeuronMask.from_indices(
        [(0, j) for j in range(0, 512, 2)], model.cfg.n_layers, model.cfg.d_mlp
    )
    tokens = model.to_tokens("37+48=")
    with ablate(model, mask), torch.no_grad():
        generated = model.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False)
        seq = tokens
        for _ in range(4):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    with torch.no_grad():
        plain = model.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False)
    assert generated[0, tokens.shape[1] :].tolist() == seq[0, tokens.shape[1] :].tolist()
    assert generated[0].tolist() != plain[0].tolist()  # the ablation did change the answer
    assert _no_hooks(model)


def test_accuracy_with_per_batch_answer_position_hooks(model):
    """Erasing at answer positions only, through accuracy's per-batch hooks, equals doing it
    by hand on each batch; it differs from erasing everywhere."""
    ds = CapabilityDataset.from_pairs(["ab", "cde", "f", "ghij"], ["x", "yz", "q", "rs"])
    everything = NeuronMask(torch.ones(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool))
    from tl_capability import answer_correct

    got = answer_correct(
        model, ds, batch_size=2, hooks=lambda b: everything.hooks(positions=answer_positions(b))
    )
    expected = torch.zeros(len(ds), dtype=torch.bool)
    for batch in batches(model, ds, 2):
        with torch.no_grad(), ablate(model, everything, positions=answer_positions(batch)):
            logits = model(batch.tokens)
        pred = logits[batch.target_row, batch.target_pos].argmax(-1)
        for r in range(batch.tokens.shape[0]):
            ok = (pred[batch.target_row == r] == batch.target_token[batch.target_row == r]).all()
            expected[batch.sample_index[r]] = ok
    assert got.tolist() == expected.tolist()
    assert _no_hooks(model)


@pytest.mark.parametrize("top_level", [True, False])
def test_ablate_and_mean_activations_refuse_training_mode(model, top_level):
    ds = CapabilityDataset.from_pairs(["ab", "cd"], ["x", "y"])
    (model if top_level else model.blocks[0]).train()
    try:
        with pytest.raises(ValueError, match="model.eval()"), ablate(model, _mask(model)):
            pass
        with pytest.raises(ValueError, match="model.eval()"):
            mean_activations(model, ds)
    finally:
        model.eval()
    assert _no_hooks(model)


def test_a_pre_site_mask_changes_the_pre_activation_and_an_unknown_site_is_refused(model):
    """Hook names come from tl_capability.sites; a mask of an unknown site used to fall back
    to the pre-activation silently."""
    from tl_capability.sites import neuron_hook_name

    pre = NeuronMask.from_indices([(1, 4)], model.cfg.n_layers, model.cfg.d_mlp, site="pre")
    assert [name for name, _ in pre.hooks()] == [neuron_hook_name(1, "pre")]
    seen = {}
    read = [(neuron_hook_name(1, "pre"), lambda a, hook: seen.__setitem__("pre", a))]
    with torch.no_grad(), ablate(model, pre), model.hooks(fwd_hooks=read):
        model(TOKENS)
    assert (seen["pre"][..., 4] == 0).all() and (seen["pre"][..., 5] != 0).any()
    odd = NeuronMask.from_indices([(1, 4)], model.cfg.n_layers, model.cfg.d_mlp, site="gate")
    with pytest.raises(ValueError, match="the mask's site must be one of 'post', 'pre'"):
        odd.hooks()
