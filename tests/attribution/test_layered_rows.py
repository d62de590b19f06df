"""Layered rows: IG rows that enter a Hugging Face decoder at their own layer."""

from weakref import WeakKeyDictionary

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.attribution.helpers import forbid_probes
from tests.models import HAS_BRIDGE, save_hf_model
from tl_capability import AttributionConfig, CapabilityDataset, attribute, neuron_site
from tl_capability.attribution import _layered_rows as lr
from tl_capability.sites import hook_signature

DS = CapabilityDataset.from_pairs(["12+34=", "rev abc:", "q"], ["46", "cba", "xy"])
KW = {"steps": 3, "per_sample": True, "progress": False}
CUT = lr._cut


@given(n_layers=st.integers(1, 40), n_steps=st.integers(1, 60), max_rows=st.integers(1, 3000))
def test_plan_stays_within_max_rows(n_layers, n_steps, max_rows):
    group, chunk, per_pass = lr.plan(n_layers, n_steps, max_rows)
    assert 1 <= group <= n_layers and 1 <= chunk <= n_steps and per_pass >= 1
    assert group * chunk * per_pass <= max_rows
    assert group * chunk <= max(lr.SEQUENCE_ROWS, group)  # attention stays small
    n_chunks = -(-n_steps // chunk)
    assert n_chunks * chunk - n_steps < n_chunks  # equal chunks: padding under a row each
    cap = max(1, min(n_steps, max_rows // group, lr.SEQUENCE_ROWS // group))
    even = -(-n_steps // -(-n_steps // cap))  # the cap's equal chunks, the plan before
    ours = lr.block_positions(n_layers, n_steps, group, chunk)
    assert ours <= lr.block_positions(n_layers, n_steps, group, even)  # never more block work
    if max_rows >= n_layers * n_steps and n_layers * n_steps <= lr.SEQUENCE_ROWS:
        assert (group, chunk) == (n_layers, n_steps)  # one sequence holds a target's every row


@given(n_layers=st.integers(1, 40), n_steps=st.integers(1, 60), max_rows=st.integers(1, 3000))
def test_plan_of_whole_sequences_takes_every_row_it_may(n_layers, n_steps, max_rows):
    # all-position rows are sequences of their own: only max_rows caps a pass
    group, chunk, per_pass = lr.plan(n_layers, n_steps, max_rows, sequence_rows=max_rows)
    assert group * chunk * per_pass <= max_rows
    if max_rows >= n_layers * n_steps:
        assert (group, chunk) == (n_layers, n_steps)  # one pass holds a sample's every row


def test_plan_picks_the_chunks_with_the_least_block_work():
    # 20 steps over 8 layers: 4 chunks of 5 pad nothing; 3 of 7 pad one row per layer
    assert lr.plan(8, 20, 1024)[:2] == (8, 5)
    assert lr.block_positions(8, 20, 8, 5) < lr.block_positions(8, 20, 8, 7)


@given(n_layers=st.integers(1, 12), n_steps=st.integers(1, 30), group=st.integers(1, 12))
def test_block_positions_counts_what_the_layouts_run(n_layers, n_steps, group):
    group = min(group, n_layers)
    chunk = lr.plan(n_layers, n_steps, group * lr.SEQUENCE_ROWS)[1]
    n_chunks = -(-n_steps // chunk)
    run = 0
    for top in range(n_layers, 0, -group):
        layout = lr.LayeredRows(None, None, None, max(0, top - group), top, chunk, 0)
        run += n_chunks * sum(layout.alive(b) for b in range(layout.lo, n_layers))
    assert run == lr.block_positions(n_layers, n_steps, group, chunk)


needs_bridge = pytest.mark.skipif(not HAS_BRIDGE, reason="needs TransformerLens 4.x")


@pytest.fixture
def gpt2(tmp_path, monkeypatch):
    from transformer_lens import TransformerBridge

    monkeypatch.setattr(lr, "_EXACT", WeakKeyDictionary())
    model = TransformerBridge.boot_transformers(str(save_hf_model("gpt2", tmp_path / "m")))
    return model.eval()


@needs_bridge
@pytest.mark.parametrize(
    "cut",
    [
        lambda value, n_max, n, width: value,  # nothing cut: shapes disagree, the pass fails
        # a mask cut from the wrong end: the pass runs, its numbers are wrong
        lambda value, n_max, n, width: (
            value[..., :n, -(width + n) :]
            if isinstance(value, torch.Tensor) and value.dim() == 4
            else CUT(value, n_max, n, width)
        ),
    ],
)
def test_probe_refuses_a_wrong_cut_and_attribution_keeps_the_plain_rows(gpt2, monkeypatch, cut):
    plain = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=False))
    monkeypatch.setattr(lr, "_cut", cut)
    assert not lr.layered_rows_exact(gpt2, neuron_site(gpt2))
    calls = _count_layered(monkeypatch)
    cached = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=True))
    torch.testing.assert_close(cached.per_sample, plain.per_sample, rtol=1e-4, atol=1e-7)
    assert calls == []


def _count_layered(monkeypatch) -> list:
    from tl_capability.attribution import _first_call as first_call
    from tl_capability.attribution import _methods as methods

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return lr.layered_ig_grad_sum(*args, **kwargs)

    # a model's first call takes them through its checks (first_call), later calls directly
    monkeypatch.setattr(methods, "layered_ig_grad_sum", counted)
    monkeypatch.setattr(first_call, "layered_ig_grad_sum", counted)
    return calls


@needs_bridge
def test_attribution_takes_layered_rows_where_the_probe_accepts_them(gpt2, monkeypatch):
    calls = _count_layered(monkeypatch)
    fast = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=True))
    assert calls == [1]
    plain = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=False))
    torch.testing.assert_close(fast.per_sample, plain.per_sample, rtol=1e-4, atol=1e-7)
    attribute(gpt2, DS, "grad_x_act", progress=False, config=AttributionConfig(use_cache=True))
    assert calls == [1]  # IG only


@needs_bridge
def test_the_probe_is_kept_per_site(gpt2, monkeypatch):
    probes = []
    real = lr._probe
    monkeypatch.setattr(lr, "_probe", lambda m, s: probes.append(s.kind) or real(m, s))
    for name in ("post", "pre", "post", "pre"):
        assert lr.layered_rows_exact(gpt2, neuron_site(gpt2, name))
    assert probes == ["post", "pre"]


@needs_bridge
def test_user_hooks_compose_with_layered_rows(gpt2):
    """A steering vector added to the residual stream of block 1, and a neuron zeroed at layer
    0, reach layered rows as they reach the re-run sequences."""
    gen = torch.Generator().manual_seed(0)
    steer = torch.randn(gpt2.cfg.d_model, generator=gen)

    def add(resid, hook):
        return resid + steer

    def zero(act, hook):
        act[..., 3] = 0
        return act

    hooks = [("blocks.1.hook_resid_pre", add), ("blocks.0.mlp.hook_post", zero)]
    with gpt2.hooks(fwd_hooks=hooks):
        assert lr.layered_rows_exact(gpt2, neuron_site(gpt2))
        fast = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=True))
        slow = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=False))
    torch.testing.assert_close(fast.per_sample, slow.per_sample, rtol=1e-4, atol=1e-7)
    assert fast.per_sample[:, 0, 3].abs().max() == 0
    clean = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=True))
    assert not torch.allclose(clean.per_sample, fast.per_sample)


@needs_bridge
def test_block_hooks_are_removed_after_a_failing_pass(gpt2):
    site = neuron_site(gpt2)
    assert lr.layered_rows_exact(gpt2, site)
    blocks = lr.block_modules(gpt2)
    before = [len(b._forward_pre_hooks) for b in blocks]

    def fail(act, hook):
        raise RuntimeError("user hook failed")

    with gpt2.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", fail)]):
        lr._EXACT[gpt2] = {site: (hook_signature(gpt2), True)}  # skip the probe
        with pytest.raises(RuntimeError, match="user hook failed"):
            attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=True))
    assert [len(b._forward_pre_hooks) for b in blocks] == before


# ------------------------------------------------- the first call checks on its own passes


def _no_probes(monkeypatch) -> None:
    """The answer-position call's stand-alone probes fail the test if they run."""
    from tl_capability import _answer_head as head
    from tl_capability.sites import neurons, support

    forbid_probes(
        monkeypatch,
        [
            (head, "_probe"),
            (support, "_probe_kv_cache"),
            (lr, "_probe"),
            (neurons, "_check_width"),
        ],
    )


@needs_bridge
@pytest.mark.parametrize("method", ["ig", "grad_x_act", "neurgrad"])
def test_the_first_call_checks_on_its_own_passes(gpt2, monkeypatch, method):
    """A fresh model's first call reads the width, head, cache and layered-rows checks off its
    own passes (no probe of their own), keeps what they found, and gives the reference's
    scores."""
    from tests.attribution.test_attribute import reference_scores
    from tl_capability import _answer_head as head
    from tl_capability.sites import kv_cache_known, width_checked

    _no_probes(monkeypatch)
    first = attribute(gpt2, DS, method, **KW)
    site = neuron_site(gpt2, check_width=False)
    assert width_checked(gpt2, site) and head._CHECKED[gpt2] is True
    assert kv_cache_known(gpt2) is True and first.params["kv_cache"]
    if method == "ig":
        assert lr.layered_rows_known(gpt2, site, {False}) is True
    expected = reference_scores(gpt2, DS, method, steps=3)
    torch.testing.assert_close(first.per_sample, expected, rtol=1e-4, atol=1e-7)
    later = attribute(gpt2, DS, method, **KW)
    torch.testing.assert_close(later.per_sample, first.per_sample, rtol=1e-5, atol=1e-8)


@needs_bridge
@pytest.mark.parametrize(
    "cut",
    [
        lambda value, n_max, n, width: value,  # nothing cut: the pass fails
        lambda value, n_max, n, width: (  # a mask cut from the wrong end: wrong numbers
            value[..., :n, -(width + n) :]
            if isinstance(value, torch.Tensor) and value.dim() == 4
            else CUT(value, n_max, n, width)
        ),
    ],
)
def test_the_first_call_refuses_a_wrong_cut_on_its_own_rows(gpt2, monkeypatch, cut):
    """With no probe run before, the first call's rows find the wrong cut: the batch runs on
    the plain cached rows, and layered rows stay refused."""
    plain = attribute(gpt2, DS, **KW, config=AttributionConfig(use_cache=False))
    lr._EXACT.pop(gpt2, None)
    monkeypatch.setattr(lr, "_cut", cut)
    calls = _count_layered(monkeypatch)
    fast = attribute(gpt2, DS, **KW)
    torch.testing.assert_close(fast.per_sample, plain.per_sample, rtol=1e-4, atol=1e-7)
    assert calls == [1] and fast.params["kv_cache"]
    assert lr.layered_rows_known(gpt2, neuron_site(gpt2), {False}) is False
    attribute(gpt2, DS, **KW)
    assert calls == [1]  # not tried again


@needs_bridge
@pytest.mark.parametrize("method", ["ig", "grad_x_act"])
def test_rows_off_the_clean_run_send_the_first_call_to_the_general_path(gpt2, monkeypatch, method):
    """Rows over the cache that do not reproduce the full pass on the call's data (here: run
    one position further than they stand for) are caught by the first call even where the
    cache probe, on its own tokens, passes: a warning, and the general path from then on."""
    from tl_capability.attribution import _rows as rows_module
    from tl_capability.sites import kv_cache_known

    plain = attribute(gpt2, DS, method, **KW, config=AttributionConfig(use_cache=False))
    real = rows_module.over_cached_prefix

    def shifted(*args, **kwargs):
        out = real(*args, **kwargs)
        return out | {"position_ids": out["position_ids"] + 1}

    monkeypatch.setattr(rows_module, "over_cached_prefix", shifted)
    monkeypatch.setattr(lr, "over_cached_prefix", shifted)
    with pytest.warns(UserWarning, match="does not reproduce its full forward pass"):
        fast = attribute(gpt2, DS, method, **KW)
    torch.testing.assert_close(fast.per_sample, plain.per_sample, rtol=1e-4, atol=1e-7)
    assert kv_cache_known(gpt2) is False and not fast.params["kv_cache"]
