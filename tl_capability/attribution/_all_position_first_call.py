"""The first all-position call on a model: its one-time checks in two short passes.

All-position integrated gradients rest on five facts about the model, each with a probe of its
own, kept per model until its hooks change: the neuron hooks carry ``d_mlp`` values
([`neuron_site`][tl_capability.sites.neuron_site]), ``ln_final`` and the unembedding alone give
its logits ([`head_is_separable`][tl_capability._answer_head.head_is_separable]), a batch grown
inside the forward pass under one 4-D causal mask runs as the batch itself
([`batch_grows`][tl_capability.attribution._all_position_probes.batch_grows]), every block adds
its MLP's output linearly
([`mlp_output_adds_linearly`][tl_capability.sites.mlp_output_adds_linearly]) and the last MLP
may run at the read positions only
([`packed_last_mlp`][tl_capability.attribution._all_position_probes.packed_last_mlp]). On a CPU
a short pass costs reading every weight of the model, and the probes took six: +30 % on a
two-prompt call of a 3-layer, 512-wide model, +91 % on a 2-layer, 128-wide one.

[`settle_checks`][tl_capability.attribution._all_position_first_call.settle_checks] runs the
same tests in two passes of the probes' own four-token sequences:

- **plain**, as the model runs itself, to its logits: the hooks' widths, the head (its logits
  against ``ln_final`` and the unembedding of the last block's output), and the reference
  residuals of two prompts;
- **grown**, under the 4-D causal mask: the two prompts, which must end as in the plain pass
  (the mask obeyed; else nothing of the pass is kept), two copies of the first grown before the
  first block, one run whole and one with the last MLP at its last position only, which must
  end as the first prompt does (the grown batch and the packed MLP; kept together, as a failing
  copy does not say which failed), and layer ``l``'s post-activations shifted by ``δ`` at one
  position, whose block output there must move by ``δ W_out`` (linearity: kept whatever it
  finds, as its probe's test would find the same). Four layers share a sequence, each at a
  position before those of the layers below it, which a causal model's position does not see
  (``MlpShifts(stacked=True)``): ``⌈n_layers / 4⌉`` sequences instead of one per layer. While a
  hook that may act on some positions only is attached, one sequence per layer, shifted at
  every position (one position would miss such a hook).

Where a grown-pass check fails or the pass raises, what it cannot vouch for is not kept: each
probe then runs on its own when asked, and decides (with its warning). A width that is not
``d_mlp`` and a head that fails raise as they do from their probes; a hook on the head, which
attribution refuses, spends no pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tl_capability._answer_head import check_pending, head_matches, require_separable_head
from tl_capability.attribution._all_position_probes import _GROWS, _PACKS, ReadsOnly, causal_mask
from tl_capability.sites import (
    MlpShifts,
    NeuronSite,
    attention_window,
    check_widths,
    final_resid_hook_name,
    head_has_hooks,
    hook_signature,
    hooks_are_position_free,
    is_bridge,
    is_masked_lm,
    known_until_hooks_change,
    mlp_io_hook_names,
    mlp_linearity_known,
    model_device,
    neuron_site,
    probe_tolerance,
    record_mlp_linearity,
    record_until_hooks_change,
    resid_post_hook_name,
    resid_pre_hook_name,
    run_until,
    unembed_input_hook,
    width_checked,
)

_WIDTH = 4  # positions of the probes' sequences
_GROWN = ("grows", "linear", "packs")  # the grown pass's checks
_FAILED = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError)


def settle_checks(model: Any, site: NeuronSite, rows: bool = True) -> None:
    """Runs the checks all-position IG still owes ``model`` in two passes (see the module
    docstring), keeping the answers of those that pass. With ``rows=False`` (``grad_x_act``,
    whose one pass per batch grows nothing), the widths and the head only, in the plain pass.

    Raises:
        ValueError: For a neuron hook whose width is not ``d_mlp``, or a head that does not
            give the model's logits (as their own probes do).
    """
    if head_has_hooks(model):
        return  # attribution refuses the call (require_separable_head): no pass to spend
    due = _due(model, site, rows)
    if not any(due.values()):
        return
    grown_due = any(due[name] for name in _GROWN)
    if not (due["head"] or grown_due):
        neuron_site(model, site.kind)  # the width alone: its own one-token pass
        return
    tokens = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]], device=model_device(model))
    tokens = tokens % model.cfg.d_vocab
    widths: dict[int, int] = {}
    final = _plain_pass(model, site, tokens, due["head"], widths)
    if due["widths"]:
        check_widths(model, site, widths)
    if due["head"]:
        require_separable_head(model)  # raises where the plain pass found it failing
    if not grown_due:
        return
    try:
        found = _grown_pass(model, tokens, due, final)
    except torch.OutOfMemoryError:
        raise
    except _FAILED:
        return  # the probes decide, each on its own pass
    # after the passes: a model's first forward pass may attach framework hooks of its own
    signature = hook_signature(model)
    for name, memo in (("grows", _GROWS), ("packs", _PACKS)):
        if due[name] and found.get(name):
            record_until_hooks_change(memo, model, None, True, signature)
    if due["linear"] and "linear" in found:
        record_mlp_linearity(model, found["linear"], signature)


def _due(model: Any, site: NeuronSite, rows: bool) -> dict[str, bool]:
    """Which checks the model still owes (each where its probe would run now; the grown
    batch's three only for ``rows``)."""
    last_mlp = mlp_io_hook_names(model, model.cfg.n_layers - 1)
    bridge = is_bridge(model)
    window = attention_window(model)
    grows = bridge and not is_masked_lm(model) and (window is None or window >= _WIDTH)
    due = {
        "widths": not width_checked(model, site),
        "head": check_pending(model) and unembed_input_hook(model) is None,
        "grows": grows and known_until_hooks_change(_GROWS, model, None) is None,
        "linear": site.kind == "post"
        and not is_masked_lm(model)
        and mlp_linearity_known(model) is None,
        "packs": bool(last_mlp and bridge and hooks_are_position_free(model))
        and known_until_hooks_change(_PACKS, model, None) is None,
    }
    if not rows:
        due.update(dict.fromkeys(_GROWN, False))
    return due


def _plain_pass(
    model: Any, site: NeuronSite, tokens: Tensor, head: bool, widths: dict[int, int]
) -> Tensor:
    """The plain pass: records the neuron hooks' widths, checks the head where ``head`` (to
    the logits), and returns the residual leaving the last block."""
    last = final_resid_hook_name(model)
    seen: dict[str, Tensor] = {}

    def width(layer: int):
        def hook(act: Tensor, hook: Any) -> None:
            widths[layer] = act.shape[-1]

        return hook

    def grab(x: Tensor, hook: Any) -> None:
        seen["final"] = x.detach()

    fwd = [(site.hook_name(layer), width(layer)) for layer in range(site.n_layers)]
    with torch.no_grad():
        if not head:
            return run_until(model, last, tokens, fwd)
        with model.hooks(fwd_hooks=[*fwd, (last, grab)]):
            logits = model(tokens)
    head_matches(model, logits[0], seen["final"][0] if "final" in seen else None, last)
    if "final" not in seen:  # never reached: require_separable_head says why
        require_separable_head(model)
    return seen["final"]


def _grown_pass(model: Any, tokens: Tensor, due: dict[str, bool], plain: Tensor) -> dict[str, bool]:
    """The grown pass (see the module docstring): the verdicts it can give. None where the
    prompts do not end as in the plain pass (the mask not obeyed: nothing of it holds); the
    grown batch and the packed MLP together (a failing packed copy does not say which failed);
    linearity, whatever it finds, once the pass is sound."""
    n_layers, device = model.cfg.n_layers, model_device(model)
    grows = due["grows"] or known_until_hooks_change(_GROWS, model, None) is True
    # sequences: the two prompts, four layers' shifts each (linear), then two copies of
    # prompt 0 (grown before the first block where the grown batch is checked): the first runs
    # whole, the second with the last MLP at its last position only (where that is checked)
    shifts = None
    if due["linear"]:  # layers share sequences, a position each, where no hook picks positions
        stacked = hooks_are_position_free(model)
        shifts = MlpShifts(model, _WIDTH, first=2, rows=_packed_place(n_layers), stacked=stacked)
    lin_rows = 0 if shifts is None else shifts.n_sequences
    batch = torch.cat([tokens, tokens[:1].expand(lin_rows, -1)])
    whole = len(batch) + 1
    kwargs = causal_mask(model, _WIDTH, device) if grows else {}
    fwd: list = []
    if grows:
        fwd.append((resid_pre_hook_name(0), lambda r, hook: torch.cat([r, r[:1], r[:1]])))
    else:
        batch = torch.cat([batch, tokens[:1], tokens[:1]])
    names = mlp_io_hook_names(model, n_layers - 1)
    packed = None
    if due["packs"] and names is not None:
        read = torch.tensor([whole], device=device), torch.tensor([_WIDTH - 1], device=device)
        packed = ReadsOnly(names, whole, *read)
        fwd += packed.hooks()
    if shifts is not None:
        fwd += shifts.hooks()
    seen: dict[int, Tensor] = {}

    def grab(layer: int):
        def hook(resid: Tensor, hook: Any) -> None:
            seen[layer] = resid.detach()

        return hook

    fwd += [(resid_post_hook_name(layer), grab(layer)) for layer in range(n_layers - 1)]
    with torch.no_grad():
        final = run_until(model, final_resid_hook_name(model), batch, fwd, **kwargs)
    seen[n_layers - 1] = final
    want = plain.float()
    tol = probe_tolerance(final.dtype) * max(float(want.abs().max()), 1.0)

    def close(a: Tensor, b: Tensor) -> bool:
        return bool(torch.isfinite(a).all()) and float((a.float() - b.float()).abs().max()) <= tol

    if final.shape[0] != whole + 1 or not close(final[:2], want):
        return {}  # the 4-D mask not obeyed, or the batch not grown: the probes decide
    copies = close(final[whole - 1], want[0]) and close(final[whole, -1], want[0, -1])
    found = {"grows": copies, "packs": copies}
    if shifts is not None:
        found["linear"] = shifts.add_linearly(seen, clean=0)
    return found


def _packed_place(n_layers: int) -> Any:
    """Where a shifted position (``seq``, ``pos``) sits in a layer's post-activations: there, or
    in a last MLP packed to the read positions
    ([`ReadsOnly`][tl_capability.attribution._all_position_probes.ReadsOnly]), among the
    flattened whole sequences."""

    def rows(layer: int, act: Tensor, seq: int, pos: int | slice) -> Any:
        if layer < n_layers - 1 or act.shape[1] != 1:
            return seq, pos
        if isinstance(pos, slice):  # the sequence's every position
            return slice(seq * _WIDTH, (seq + 1) * _WIDTH)
        return seq * _WIDTH + pos

    return rows
