"""The logits at the positions that are read, without the unembedding at every other one.

Evaluation, learned masks and fine-tuning read the logits at a sample's answer-predicting
positions only, a few of a prompt's tokens; a full forward pass unembeds every position, a
``[batch, pos, vocab]`` product that on a 50,257-token vocabulary costs a third of a GPT-2-small
pass and most of its memory. [`answer_logits`][tl_capability.head.answer_logits] runs the
blocks, stops at the last one, and applies ``ln_final`` and the unembedding to the positions
read, the path attribution's rows take
([`unembed_input`][tl_capability.rows.unembed_input]).

That path equals the model's own logits only if nothing transforms them after the unembedding.
Some models do (Gemma 2's final logit soft-cap, ``cfg.output_logits_soft_cap``), and so does a
hook a user put on ``ln_final`` or ``unembed``.
[`head_is_separable`][tl_capability.head.head_is_separable] checks it once per model (and
again when the hooks outside the blocks change) by comparing both on a short pass; where they
differ, ``answer_logits`` runs the full forward pass and attribution refuses the model with a
clear error instead of attributing logits the model never produces.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.rows import unembed_input
from tl_capability.sites import head_hook_signature, is_block_hook, model_device, unembed

_SEPARABLE: WeakKeyDictionary[Any, tuple[tuple[int, ...], bool]] = WeakKeyDictionary()


def head_is_separable(model: Any) -> bool:
    """Whether ``ln_final`` and the unembedding applied to the last block's output at chosen
    positions give the model's own logits there (no soft-cap or other transform after the
    unembedding, no hook on the head that depends on the sequence).

    Probed with one three-token pass; the answer is kept per model until the hooks outside its
    blocks change.
    """
    signature = head_hook_signature(model)
    known = _SEPARABLE.get(model)
    if known is None or known[0] != signature:
        known = _SEPARABLE[model] = (signature, _probe(model))
    return known[1]


def _probe(model: Any) -> bool:
    device = model_device(model)
    tokens = torch.tensor([[0, 1, 2]], device=device) % model.cfg.d_vocab
    seq, pos = torch.zeros(3, dtype=torch.long, device=device), torch.arange(3, device=device)
    training = model.training
    try:
        model.eval()  # dropout would make the two passes differ
        with torch.no_grad():
            full = model(tokens)[0].float()
            rows = unembed(model, unembed_input(model, tokens, [], seq, pos)).float()
    except KeyError:  # the hook it stops at never fired: not a path this model has
        return False
    finally:
        model.train(training)
    if rows.shape != full.shape:
        return False
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    scale = max(float(full.abs().max()), 1.0)
    return float((rows - full).abs().max()) <= (2e-2 if half else 1e-4) * scale


def require_separable_head(model: Any) -> None:
    """Raises unless [`head_is_separable`][tl_capability.head.head_is_separable]: attribution
    reads the logits of its rows through the head alone.

    Raises:
        ValueError: For a model whose logits are transformed after the unembedding.
    """
    if not head_is_separable(model):
        raise ValueError(
            "this model's logits are not ln_final + unembed of the last block's output (a "
            "final logit soft-cap, output_logits_soft_cap, or a hook on ln_final / unembed?): "
            "attribution reads its rows' logits through that head and would attribute logits "
            "the model never produces. Remove the hook, or disable the soft-cap."
        )


def answer_logits(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    seq: Int[Tensor, " target"],
    pos: Int[Tensor, " target"],
    fwd_hooks: list | None = None,
) -> Float[Tensor, "target vocab"]:
    """The model's logits at ``(seq[t], pos[t])`` for every target ``t``, under ``fwd_hooks``.

    Unembeds only those positions when the head is separable and every hook is inside a block
    ([`is_block_hook`][tl_capability.sites.is_block_hook]); otherwise runs the full forward
    pass and indexes it. Gradients flow as through the model.
    """
    hooks = list(fwd_hooks or [])
    if all(is_block_hook(name) for name, _ in hooks) and head_is_separable(model):
        return unembed(model, unembed_input(model, tokens, hooks, seq, pos))
    with model.hooks(fwd_hooks=hooks):
        return model(tokens)[seq, pos]
