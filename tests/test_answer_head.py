import pytest
import torch

import tl_capability._answer_head as head_module
import tl_capability.attribution._row_gradients as rows_module
import tl_capability.sites.weights as site_weights
from tl_capability import CapabilityDataset, answer_correct, attribute
from tl_capability._answer_head import answer_logits, head_is_separable
from tl_capability.data import batches, tokenize
from tl_capability.sites import hook_points_in_use, logit_transform, neuron_hook_name

from .attribution.test_all_positions import reference as all_positions_reference
from .attribution.test_attribute import reference_scores
from .models import HAS_BRIDGE, save_hf_model, tiny_model
from .test_empirical_neg import test_delta_matches_a_manual_intervention as neg_delta_check
from .test_evaluate import _reference_correct

pytestmark = pytest.mark.core

DATA = CapabilityDataset.from_pairs(["ab", "hello", "1+2=", "q"], ["c", "zz", "3", "rst"])


def _batch(model):
    return next(iter(batches(model, tokenize(model, DATA), 8)))


def _full(model, batch, hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        return model(batch.tokens)[batch.target_row, batch.target_pos]


def _zero(act, hook):
    return act * 0


def test_answer_logits_equal_the_full_pass(model):
    batch = _batch(model)
    before = _full(model, batch)
    hooks = [(neuron_hook_name(0), _zero)]
    for fwd in ([], hooks):
        with torch.no_grad():
            got = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos, fwd)
        torch.testing.assert_close(got, _full(model, batch, fwd), rtol=1e-5, atol=1e-5)
    assert head_is_separable(model)
    assert not hook_points_in_use(model)  # nothing left attached
    torch.testing.assert_close(_full(model, batch), before, rtol=0, atol=0)


def test_hooks_attached_at_the_first_call_are_not_run_by_the_check():
    """The first call on a model that already carries an intervention: the check waits for a
    model without hooks rather than run (and feed, and be misled by) the user's hooks."""
    fresh = tiny_model(seed=5)
    batch = _batch(fresh)
    seen = []

    def record(act, hook):
        seen.append(tuple(act.shape[:2]))

    def noise(act, hook):
        return act + 100.0 * torch.randn_like(act)

    hooks = [(neuron_hook_name(0), record), (neuron_hook_name(1), noise)]
    with fresh.hooks(fwd_hooks=hooks), torch.no_grad():
        answer_logits(fresh, batch.tokens, batch.target_row, batch.target_pos)
    assert seen == [tuple(batch.tokens.shape)]  # one pass: the caller's
    assert head_is_separable(fresh)
    attribute(fresh, DATA, steps=2, progress=False)  # not refused after the noise


def test_answer_logits_carry_gradients(model):
    batch = _batch(model)
    gate = torch.ones(model.cfg.d_mlp, requires_grad=True)
    fwd = [(neuron_hook_name(1), lambda act, hook: act * gate)]
    # autograd.grad, not backward: the shared model's parameters must not collect gradients.
    logits = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos, fwd)
    (mine,) = torch.autograd.grad(logits.sum(), gate)
    with model.hooks(fwd_hooks=fwd):
        full = model(batch.tokens)[batch.target_row, batch.target_pos]
    (theirs,) = torch.autograd.grad(full.sum(), gate)
    assert float(mine.abs().max()) > 0
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def _check_capped(model):
    """The soft-cap is declared, bends the logits, and every path reproduces it."""
    assert logit_transform(model) is not None
    assert head_is_separable(model)
    assert head_module._CHECKED[model] is True  # checked against the model's own pass
    batch = _batch(model)
    full = _full(model, batch)
    with torch.no_grad():
        got = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert answer_correct(model, DATA).tolist() == _reference_correct(model, DATA)
    ref = reference_scores(model, DATA, "ig", steps=3)
    mine = attribute(model, DATA, steps=3, per_sample=True, progress=False)
    torch.testing.assert_close(mine.per_sample, ref, rtol=1e-4, atol=1e-7)
    ref = all_positions_reference(model, DATA, "ig", steps=3, metric="logprob")
    mine = attribute(
        model, DATA, steps=3, positions="all", metric="logprob", per_sample=True, progress=False
    )
    torch.testing.assert_close(mine.per_sample, ref, rtol=1e-4, atol=1e-7)


def test_a_soft_capped_model_is_attributed_through_its_cap():
    capped = tiny_model(soft_cap=0.5)
    assert float(_full(capped, _batch(capped)).abs().max()) <= 0.5  # the cap is really applied
    _check_capped(capped)
    neg_delta_check(capped)  # empirical NEG's interventions, against model(z)'s own logits


def test_a_transform_the_model_does_not_declare_is_caught(monkeypatch):
    capped = tiny_model(soft_cap=0.5)
    monkeypatch.setattr(site_weights, "logit_transform", lambda model: None)
    assert not head_is_separable(capped)
    batch = _batch(capped)
    with torch.no_grad():
        got = answer_logits(capped, batch.tokens, batch.target_row, batch.target_pos)
    torch.testing.assert_close(got, _full(capped, batch), rtol=0, atol=0)  # the full pass
    with pytest.raises(ValueError, match="does not declare"):
        attribute(capped, DATA, steps=2, progress=False)


@pytest.mark.skipif(not HAS_BRIDGE, reason="the Gemma 2 bridge is TransformerLens 4")
def test_gemma2_soft_cap_through_the_bridge(tmp_path):
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_transformers(str(save_hf_model("gemma2", tmp_path))).eval()
    assert model.cfg.output_logits_soft_cap == 0.5
    _check_capped(model)


def test_hooks_given_on_the_head_take_the_full_pass(model):
    batch = _batch(model)

    def last_only(x, hook):
        x = x.clone()
        x[:, -1] = 0
        return x

    hooks = [("ln_final.hook_normalized", last_only)]
    with torch.no_grad():
        got = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos, hooks)
    torch.testing.assert_close(got, _full(model, batch, hooks), rtol=0, atol=0)
    assert not torch.equal(got, _full(model, batch))  # the hook did change the logits


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_a_hook_on_the_head_is_seen_and_forgotten(model, direction):
    batch = _batch(model)
    assert head_is_separable(model)

    def last_only(x, hook):  # depends on the sequence: the rows-only head cannot reproduce it
        x = x.clone()
        x[:, -1] = 0
        return x

    def keep(grad, hook):
        return None

    name = "ln_final.hook_normalized"
    hooked = (
        model.hooks(fwd_hooks=[(name, last_only)])
        if direction == "fwd"
        else model.hooks(bwd_hooks=[(name, keep)])
    )
    with hooked:
        assert not head_is_separable(model)
        if direction == "fwd":
            with torch.no_grad():
                got = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos)
            torch.testing.assert_close(got, _full(model, batch), rtol=0, atol=0)
        with pytest.raises(ValueError, match="ln_final"):
            attribute(model, DATA, steps=2, progress=False)
    assert head_is_separable(model)


def test_the_check_waits_for_eval_mode_and_keeps_every_flag():
    fresh = tiny_model(seed=3)
    fresh.train()
    fresh.blocks[0].eval()  # a mixed state, as a user may leave it
    flags = [m.training for m in fresh.modules()]
    assert head_is_separable(fresh)
    assert [m.training for m in fresh.modules()] == flags
    assert fresh not in head_module._CHECKED
    fresh.eval()
    assert head_is_separable(fresh)
    assert head_module._CHECKED[fresh] is True


def test_the_transformed_head_in_chunks_gives_the_same_scores(monkeypatch):
    capped = tiny_model(soft_cap=0.5)
    whole = attribute(capped, DATA, steps=3, per_sample=True, progress=False)
    monkeypatch.setattr(rows_module, "_TRANSFORM_CHUNK", 2 * capped.cfg.d_vocab)  # 2 rows each
    parts = attribute(capped, DATA, steps=3, per_sample=True, progress=False)
    torch.testing.assert_close(parts.per_sample, whole.per_sample, rtol=1e-5, atol=1e-8)


def test_only_temporary_hooks_count_as_the_users():
    fresh = tiny_model(seed=7)
    point = fresh.hook_dict[neuron_hook_name(0)]
    assert not hook_points_in_use(fresh)
    point.add_perma_hook(lambda act, hook: None)  # as TransformerLens wires some bridges
    assert not hook_points_in_use(fresh)
    with fresh.hooks(fwd_hooks=[(neuron_hook_name(1), lambda act, hook: None)]):
        assert hook_points_in_use(fresh)
    assert not hook_points_in_use(fresh)


@pytest.mark.skipif(not HAS_BRIDGE, reason="a bf16 bridge over a Hugging Face model")
@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])  # the closed form; a soft-capped head
def test_a_half_precision_head_runs_in_its_own_precision(tmp_path, arch):
    """The vocabulary products of a bf16 model's rows run in bf16, as the model's own head and
    its backward pass do (no float32 copy of ``W_U`` per call), and the scores agree with the
    plain reference run in the same precision."""
    from torch.overrides import TorchFunctionMode
    from transformer_lens import TransformerBridge

    directory = save_hf_model(arch, tmp_path)
    model = TransformerBridge.boot_transformers(str(directory), dtype=torch.bfloat16).eval()
    vocab = model.cfg.d_vocab

    class Products(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: list[torch.dtype] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("matmul", "__matmul__", "mm", "addmm"):
                operands = [a for a in args if isinstance(a, torch.Tensor)]
                if any(vocab in a.shape for a in operands):
                    self.dtypes += [a.dtype for a in operands]
            return func(*args, **(kwargs or {}))

    attribute(model, DATA, steps=3, progress=False)  # the one-time checks, outside the spy
    with Products() as products:
        mine = attribute(model, DATA, steps=3, per_sample=True, progress=False)
    assert products.dtypes and set(products.dtypes) == {torch.bfloat16}
    ref = reference_scores(model, DATA, "ig", steps=3)
    error = float((mine.per_sample - ref.float()).abs().max() / ref.float().abs().max())
    assert error < 2e-2, error
