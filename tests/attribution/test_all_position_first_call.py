"""All-position IG's first call on a model: its checks in two short passes, with the probes'
verdicts, and the probes themselves where a check fails."""

import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from tests.attribution.helpers import forbid_probes
from tests.attribution.test_all_positions import DATA, reference
from tests.models import HAS_BRIDGE, save_hf_model, tiny_model
from tl_capability.attribution import _all_position_first_call as first_call
from tl_capability.attribution import _all_position_probes as probes_module
from tl_capability.attribution import attribute
from tl_capability.sites import (
    known_until_hooks_change,
    mlp_linearity_known,
    neuron_site,
    width_checked,
)
from tl_capability.sites import support as support_module

pytestmark = pytest.mark.core
KW = {"steps": 3, "positions": "all", "per_sample": True, "progress": False}
needs_bridge = pytest.mark.skipif(not HAS_BRIDGE, reason="needs TransformerLens 4.x")


def _no_probes(monkeypatch) -> None:
    """The all-position call's stand-alone probes fail the test if they run."""
    from tl_capability import _answer_head as head
    from tl_capability.sites import neurons

    forbid_probes(
        monkeypatch,
        [
            (head, "_probe"),
            (neurons, "_check_width"),
            (probes_module, "batch_grows"),
            (probes_module, "_probe_packs"),
            (support_module, "_probe_mlp_output"),
        ],
    )


def _verdicts(model) -> dict[str, bool | None]:
    from tl_capability import _answer_head as head

    return {
        "head": head._CHECKED.get(model),
        "grows": known_until_hooks_change(probes_module._GROWS, model, None),
        "linear": mlp_linearity_known(model),
        "packs": known_until_hooks_change(probes_module._PACKS, model, None),
    }


def _bridge(arch: str):
    from transformer_lens import TransformerBridge

    path = save_hf_model(arch, Path(tempfile.mkdtemp(prefix=f"tlc-{arch}-")))
    return TransformerBridge.boot_transformers(str(path)).eval()


@pytest.mark.parametrize("n_layers", [2, 1, 6])
def test_the_first_call_runs_no_probe_of_its_own(monkeypatch, n_layers):
    """A fresh model's first all-position call settles every check in its two passes, keeps
    the probes' answers, and gives the reference's scores (one layer: the grown copy, the
    packed MLP and the shifted sequence all in the same block; six: the shifts in two
    sequences)."""
    model = tiny_model(n_layers=n_layers)
    _no_probes(monkeypatch)
    passes = []
    for name in ("_plain_pass", "_grown_pass"):
        original = getattr(first_call, name)
        monkeypatch.setattr(
            first_call, name, lambda *a, _f=original, _n=name, **k: passes.append(_n) or _f(*a, **k)
        )
    scores = attribute(model, DATA, "ig", **KW)
    assert passes == ["_plain_pass", "_grown_pass"]
    assert width_checked(model, neuron_site(model, check_width=False))
    verdicts = _verdicts(model)
    assert verdicts["head"] is True and verdicts["linear"] is True
    if HAS_BRIDGE:  # a HookedTransformer grows per position and packs nothing: no such checks
        assert verdicts["grows"] is True and verdicts["packs"] is True
    expected = reference(model, DATA, steps=3)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)
    attribute(model, DATA, "ig", **KW)
    assert passes == ["_plain_pass", "_grown_pass"]  # nothing left to check


@needs_bridge
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_the_checks_hold_on_hugging_face_architectures(arch, monkeypatch):
    """Sequential and parallel blocks, gated MLPs, rotary positions: every check passes in the
    two passes, and the scores are the reference's."""
    model = _bridge(arch)
    _no_probes(monkeypatch)
    scores = attribute(model, DATA, "ig", **KW)
    assert all(_verdicts(model).values())
    expected = reference(model, DATA, steps=3)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("n_layers", "bent"), [(2, 1), (6, 0), (6, 2), (6, 5)])
def test_a_bent_mlp_output_is_found_by_the_grown_pass(monkeypatch, n_layers, bent):
    """A tanh after one MLP (a hook attached before the first call) fails the linearity test,
    wherever the layer's shift sits among the stacked ones (first, middle or last position of
    a sequence, or the packed last MLP): the grown pass keeps that "no" itself (no probe runs),
    vouches for the rest, and the scores, on the rows that re-run the scaled block, still equal
    the reference."""
    model = tiny_model(n_layers=n_layers)
    _no_probes(monkeypatch)
    hook = model.hook_dict[f"blocks.{bent}.hook_mlp_out"]
    hook.add_hook(lambda out, hook: torch.tanh(out))
    try:
        scores = attribute(model, DATA, "ig", **KW)
        verdicts = _verdicts(model)
        assert verdicts["linear"] is False
        assert verdicts["grows"] is (True if HAS_BRIDGE else None)
        expected = reference(model, DATA, steps=3)
    finally:
        hook.remove_hooks()
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-6)


def test_a_hook_on_some_positions_is_found_by_the_shifts_at_every_position(monkeypatch):
    """A hook that ablates one position's MLP output bends the block's output there only: the
    stacked test, one position per layer, would miss it (3.8e-4 off the reference's 4.4e-3);
    while such a hook is attached every layer is shifted at every position, and finds it."""
    model = tiny_model(n_layers=3)
    _no_probes(monkeypatch)

    def ablate_first(out, hook):
        out = out.clone()
        out[:, 0] = 0
        return out

    hook = model.hook_dict["blocks.1.hook_mlp_out"]
    hook.add_hook(ablate_first)
    try:
        scores = attribute(model, DATA, "ig", **KW)
        assert _verdicts(model)["linear"] is False
        expected = reference(model, DATA, steps=3)
    finally:
        hook.remove_hooks()
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)


def test_half_precision_keeps_what_its_pass_vouches_for(monkeypatch):
    """In bfloat16 the linearity test's 1e-3 may fail as its probe's does; the grown batch and
    the packed MLP, checked at half precision's tolerance, are kept all the same: no probe
    runs again."""
    model = tiny_model().to(torch.bfloat16)
    _no_probes(monkeypatch)
    attribute(model, DATA, "ig", **KW)
    verdicts = _verdicts(model)
    assert verdicts["linear"] is not None
    if HAS_BRIDGE:
        assert verdicts["grows"] is True and verdicts["packs"] is True


def test_a_hook_on_the_head_is_refused_before_any_pass(monkeypatch):
    """Attribution refuses a hook on ``ln_final`` (its rows read the head at chosen positions
    only): the first call says so without spending its passes."""
    model = tiny_model()
    ran = []
    monkeypatch.setattr(first_call, "_plain_pass", lambda *a, **k: ran.append(1))
    head_hook = [("ln_final.hook_normalized", lambda x, hook: x)]
    refused = pytest.raises(ValueError, match="a hook is attached to ln_final")
    with model.hooks(fwd_hooks=head_hook), refused:
        attribute(model, DATA, "ig", **KW)
    assert not ran


@needs_bridge
@pytest.mark.parametrize("arch", ["bloom", "xglm"])
def test_a_model_that_refuses_a_grown_batch_is_found_on_the_first_call(arch):
    """Bloom (ALiBi from a 2-D mask) and XGLM (which checks the mask's batch size) fail the grown
    pass: the grown-batch probe then runs, warns, and rows re-run the prompt."""
    model = _bridge(arch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = attribute(model, DATA, "ig", **KW)
    assert any("grown inside" in str(w.message) for w in caught)
    assert _verdicts(model)["grows"] is False
    expected = reference(model, DATA, steps=3)
    torch.testing.assert_close(scores.per_sample, expected, rtol=1e-4, atol=1e-7)


def test_grad_x_act_checks_the_width_and_the_head_in_one_pass(monkeypatch):
    """All-position grad × act grows no batch: its first call runs the plain pass only, and
    leaves the grown batch's checks to the first IG call."""
    model = tiny_model()
    _no_probes(monkeypatch)
    passes = []
    monkeypatch.setattr(first_call, "_grown_pass", lambda *a, **k: passes.append("grown"))
    attribute(model, DATA, "grad_x_act", **KW)
    assert passes == [] and width_checked(model, neuron_site(model, check_width=False))
    verdicts = _verdicts(model)
    assert verdicts["head"] is True
    assert verdicts["grows"] is None and verdicts["linear"] is None and verdicts["packs"] is None


def test_a_wrong_width_is_refused_by_the_first_call(monkeypatch):
    """The width check rides on the plain pass and raises as its probe does."""
    model = tiny_model()
    monkeypatch.setattr(model.cfg, "d_mlp", 64)
    with pytest.raises(ValueError, match="carries 128 values per position but cfg.d_mlp is 64"):
        attribute(model, DATA, "ig", **KW)
    assert not width_checked(model, neuron_site(model, check_width=False))
