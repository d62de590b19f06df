"""The answer head: the logits at the positions that are read, without the unembedding at
every other one.

Evaluation, learned masks, fine-tuning and attribution's rows read the logits at a sample's
answer-predicting positions only, a few of a prompt's tokens; a full forward pass unembeds every
position, a ``[batch, pos, vocab]`` product that on a 50,257-token vocabulary costs a third of a
GPT-2-small pass and most of its memory. [`answer_logits`][tl_capability._answer_head.answer_logits]
runs the blocks, stops at the last one
([`final_residual`][tl_capability._answer_head.final_residual]), and applies ``ln_final`` and the
unembedding to the positions read ([`unembed_input`][tl_capability._answer_head.unembed_input]).

That path applies the model's [`logit_transform`][tl_capability.sites.logit_transform] (Gemma
2's final soft-cap, Granite's or Cohere's logit scale), so it equals the model's own logits;
a hook a user put on ``ln_final`` or ``unembed`` would see other shapes there, so
[`head_is_separable`][tl_capability._answer_head.head_is_separable] is false while one is
attached, and a three-token pass checks the rest once per model (or attribution's first clean
pass does, with [`head_matches`][tl_capability._answer_head.head_matches]). Where it is false,
``answer_logits`` runs the full forward pass and attribution refuses the model with a clear
error instead of attributing logits the model never produces.

A private module: the evaluation, editing, tracing, learning and attribution modules share it.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.sites import (
    HookNotReached,
    final_norm,
    final_resid_hook_name,
    head_has_hooks,
    hook_points_in_use,
    is_head_hook,
    model_device,
    probe_tolerance,
    run_until,
    unembed,
    unembed_input_hook,
)


def final_residual(
    model: Any, tokens: Tensor, fwd_hooks: list, **forward_kwargs: Any
) -> Float[Tensor, "seq pos d_model"]:
    """Runs the model up to the end of its last block and returns the residual stream there.

    A hook raises once the last block is done, so the unembedding never runs; callers apply
    ``ln_final`` and ``unembed`` to the positions they read.
    """
    last = final_resid_hook_name(model)
    return run_until(model, last, tokens, fwd_hooks, **forward_kwargs)


def unembed_input(
    model: Any, tokens: Tensor, fwd_hooks: list, seq: Tensor, pos: Tensor, **forward_kwargs: Any
) -> Float[Tensor, "row d_model"]:
    """What the unembedding reads at ``(seq, pos)``: ``ln_final`` of the last block's output.

    Masked-LM bridges (BERT) put a transform (dense, activation) before ``ln_final`` that is not
    exposed as modules, so there the forward pass stops at the hook point
    [`unembed_input_hook`][tl_capability.sites.unembed_input_hook] names instead.
    """
    hook = unembed_input_hook(model)
    if hook is not None:
        x = run_until(model, hook, tokens, fwd_hooks, **forward_kwargs)
        return x[seq, pos]
    resid = final_residual(model, tokens, fwd_hooks, **forward_kwargs)
    return final_norm(model, resid[seq, pos])


# The numeric check of the head, once per model: run only in eval mode and while no hook point
# carries a temporary hook (the user's hooks would run in it, see what it feeds them, and could
# make it fail for reasons that are not the head's).
_CHECKED: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()
_NOT_REACHED: WeakKeyDictionary[Any, str] = WeakKeyDictionary()  # why the probe could not run


def head_is_separable(model: Any) -> bool:
    """Whether ``ln_final``, the unembedding and the model's
    [`logit_transform`][tl_capability.sites.logit_transform] applied to the last block's output
    at chosen positions give the model's own logits there.

    False while the head has a hook
    ([`head_has_hooks`][tl_capability.sites.head_has_hooks]: a hook on ``ln_final`` would see
    ``[row, 1, d_model]`` there, not the sequence). Otherwise a three-token pass compares both
    ways once per model, the first time the model is in eval mode with no temporary hook on
    any hook point (until then the declared transform is trusted), and the answer is kept.
    """
    if head_has_hooks(model):
        return False
    known = _CHECKED.get(model)
    if known is None:
        if model.training or hook_points_in_use(model):
            return True
        known = _CHECKED[model] = _probe(model)
    return known


def _probe(model: Any) -> bool:
    device = model_device(model)
    tokens = torch.tensor([[0, 1, 2]], device=device) % model.cfg.d_vocab
    # One pass: the model's own logits, and what its head reads, taken on the way.
    name = unembed_input_hook(model) or final_resid_hook_name(model)
    seen: dict[str, Tensor] = {}

    def read(x: Tensor, hook: Any) -> None:
        seen["x"] = x.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, read)]):
        full = model(tokens)
    return head_matches(model, full[0], seen["x"][0] if "x" in seen else None, name)


def head_matches(
    model: Any,
    logits: Float[Tensor, "pos vocab"],
    before: Float[Tensor, "pos d_model"] | None,
    name: str,
) -> bool:
    """Whether the head applied to ``before`` (what hook point ``name`` carried in a full pass,
    ``None`` where it never ran) gives ``logits`` (that pass's own at the same positions), kept
    as [`head_is_separable`][tl_capability._answer_head.head_is_separable]'s answer: the check of
    its probe, on a pass a caller runs anyway (attribution's first clean pass on a model)."""
    try:
        if before is None:
            raise HookNotReached(
                f"the forward pass never ran hook point {name!r}: this model does not route its "
                "computation through the hook points TransformerLens names for it"
            )
        with torch.no_grad():
            x = before if unembed_input_hook(model) else final_norm(model, before)
            rows = unembed(model, x).float()
    except (HookNotReached, AttributeError) as error:  # no such path (e.g. no ln_final)
        _NOT_REACHED[model] = str(error)
        _CHECKED[model] = False
        return False
    full = logits.detach().float()
    scale = max(float(full.abs().max()), 1.0)
    tol = probe_tolerance(next(model.parameters()).dtype)
    _CHECKED[model] = ok = float((rows - full).abs().max()) <= tol * scale
    return ok


def check_pending(model: Any) -> bool:
    """Whether [`head_is_separable`][tl_capability._answer_head.head_is_separable] would run its
    probe now (no hook on the head, not yet checked, eval mode, no temporary hook on any hook
    point): a caller that runs a full pass anyway can check it there with
    [`head_matches`][tl_capability._answer_head.head_matches]."""
    return not (
        head_has_hooks(model) or model in _CHECKED or model.training or hook_points_in_use(model)
    )


def require_separable_head(model: Any) -> None:
    """Raises unless [`head_is_separable`][tl_capability._answer_head.head_is_separable]:
    attribution reads the logits of its rows through the head alone.

    Raises:
        ValueError: For a model whose logits the head alone does not reproduce.
    """
    if head_has_hooks(model):
        raise ValueError(
            "a hook is attached to ln_final or unembed: attribution reads its rows' logits "
            "through ln_final and the unembedding at those rows only, where such a hook would "
            "see other shapes. Remove it, or attach interventions to the blocks."
        )
    if not head_is_separable(model):
        if model in _NOT_REACHED:
            raise ValueError(
                "attribution reads its rows' logits through ln_final and the unembedding of the "
                f"last block's output, which this model does not expose: {_NOT_REACHED[model]}"
            )
        raise ValueError(
            "this model's logits are not ln_final + unembed (+ its declared logit transform) "
            "of the last block's output (a transform after the unembedding that its "
            "TransformerLens adapter does not declare?): attribution reads its rows' logits "
            "through that head and would attribute logits the model never produces."
        )


def answer_logits(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    seq: Int[Tensor, " target"],
    pos: Int[Tensor, " target"],
    fwd_hooks: list | None = None,
) -> Float[Tensor, "target vocab"]:
    """The model's logits at ``(seq[t], pos[t])`` for every target ``t``, under ``fwd_hooks``.

    Unembeds only those positions when the head is separable and no hook is on the head
    ([`is_head_hook`][tl_capability.sites.is_head_hook]); otherwise runs the full forward
    pass and indexes it. Gradients flow as through the model.
    """
    hooks = list(fwd_hooks or [])
    if not any(is_head_hook(name) for name, _ in hooks) and head_is_separable(model):
        return unembed(model, unembed_input(model, tokens, hooks, seq, pos))
    with model.hooks(fwd_hooks=hooks):
        return model(tokens)[seq, pos]
