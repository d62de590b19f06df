"""Teacher-forced rows: the inputs of the forward (and backward) passes that attribution and NEG
share, and the clean pass they start from.

A *row* reads one answer token: ``P(answer[m] | z_m)`` at the last position of
``z_m = prompt ⊕ answer[:m]``, the only position whose neurons are patched or differentiated.
Two ways to build rows give identical numbers:

- the general path re-runs ``z_m`` itself (any TransformerLens model);
- the cached path runs only the last token of ``z_m``, attending to the keys and values of the
  clean run (TransformerBridge over a Hugging Face decoder). Changing an activation at the last
  position changes nothing before it, so this is exact, and a row costs one token.

What a row's metric reads and its gradients are in
[`_row_gradients`][tl_capability.attribution._row_gradients].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability._answer_head import final_residual
from tl_capability.data import Batch
from tl_capability.sites import (
    NeuronSite,
    attention_window,
    check_widths,
    final_resid_hook_name,
    kv_cache_forward,
    new_kv_cache,
    width_checked,
)


@dataclass(frozen=True)
class Rows:
    """Inputs of one forward pass, and where each of its rows reads one answer token.

    Row ``r`` lives at ``(seq[r], pos[r])`` of ``tokens``: the position whose neurons are
    patched or differentiated and whose logits predict ``target[r]``. On the general path each
    row is a sequence of its own, ``z_m``. On the cached path each row is a single token at
    the end of ``z_m``; the rows of one target share a sequence, each attending to the clean
    run's keys and values of ``z_m[:-1]`` and to itself only (a 4-D attention mask), so the
    cache is stored once per target, not once per row.
    """

    tokens: Int[Tensor, "seq pos"]
    seq: Int[Tensor, " row"]
    pos: Int[Tensor, " row"]
    target: Int[Tensor, " row"]
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


def neg_direction(acts: Tensor) -> Tensor:
    """``sign(a)`` with ``sign(0) = +1``: the direction NEG shifts a neuron along (Zhao et al.),
    which NeurGrad's gradient is read along too (``torch.sign(0) = 0`` would silence every
    inactive ReLU neuron)."""
    return torch.where(acts < 0, -1.0, 1.0).to(acts.dtype)


def general_rows(batch: Batch, targets: Tensor) -> Rows:
    """One sequence ``z_m`` per target, cut to the longest one (whole, for masked LMs)."""
    pos = batch.target_pos[targets]
    width = int(pos.max()) + 1 if batch.causal else batch.tokens.shape[1]
    tokens = batch.tokens[batch.target_row[targets], :width]
    seq = torch.arange(len(targets), device=pos.device)
    return Rows(tokens, seq, pos, batch.target_token[targets])


#: Rows sharing one sequence on the cached path, at most (attention grows with its square).
ROWS_PER_SEQUENCE = 64


def cached_rows(batch: Batch, cache: Any, targets: Tensor, group: int = ROWS_PER_SEQUENCE) -> Rows:
    """Rows of one token each over the clean run's cached keys/values (``targets`` sorted).

    Changing an activation at the last position of ``z_m`` changes nothing at earlier
    positions (causal attention), so their keys and values are the clean run's: this is exact,
    and a row costs one token instead of ``len(z_m)``. Up to ``group`` rows of the same target
    share one sequence and one copy of the cache; a 4-D mask lets each see the cache and itself
    only (bigger groups would make attention quadratic in the number of rows).
    """
    device = targets.device
    if (targets[1:] < targets[:-1]).any():
        raise ValueError("cached rows need their targets sorted")
    n = len(targets)
    first = torch.ones(n, dtype=torch.bool, device=device)
    first[1:] = targets[1:] != targets[:-1]
    run_start = torch.cummax(torch.where(first, torch.arange(n, device=device), 0), 0).values
    rank = torch.arange(n, device=device) - run_start  # row's index among its target's rows
    new_seq = first | (rank % group == 0)
    seq = new_seq.long().cumsum(0) - 1
    pos = rank % group
    owner = targets[new_seq]  # the target of each sequence
    source, q = batch.target_row[owner], batch.target_pos[owner]
    n_rows = int(pos.max()) + 1
    tokens = torch.zeros(len(owner), n_rows, dtype=torch.long, device=device)
    tokens[seq, pos] = batch.tokens[source[seq], q[seq]]
    kwargs = over_cached_prefix(batch, cache, owner, n_rows)
    return Rows(tokens, seq, pos, batch.target_token[targets], kwargs)


def over_cached_prefix(
    batch: Batch, cache: Any, owner: Int[Tensor, " seq"], n_rows: int
) -> dict[str, Any]:
    """Forward arguments for sequences of ``n_rows`` one-token rows, sequence ``s`` over the
    clean run's keys and values of target ``owner[s]``'s prefix ``z_m[:-1]``: a copy of the cache
    cut to the longest prefix, a 4-D mask letting each row see its prefix and itself only, and
    the position of ``z_m``'s last token for every row."""
    from transformers import DynamicCache

    device = owner.device
    source, q = batch.target_row[owner], batch.target_pos[owner]
    width = int(q.max())
    past = DynamicCache()
    for index, layer in enumerate(cache.layers):
        past.update(layer.keys[source, :, :width], layer.values[source, :, :width], index)
    allowed = torch.zeros(len(owner), n_rows, width + n_rows, dtype=torch.bool, device=device)
    allowed[:, :, :width] = (torch.arange(width, device=device) < q[:, None])[:, None, :]
    own = torch.arange(n_rows, device=device)
    allowed[:, own, width + own] = True
    dtype = cache.layers[0].keys.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return {
        "past_key_values": past,
        "attention_mask": mask[:, None],
        "position_ids": q[:, None].expand(-1, n_rows),
    }


def rows_for(batch: Batch, targets: Tensor, cache: Any = None) -> Rows:
    """Rows for ``targets`` of ``batch``: cached when the clean run left a cache, else general."""
    return general_rows(batch, targets) if cache is None else cached_rows(batch, cache, targets)


def clean_pass(
    model: Any, site: NeuronSite, batch: Batch, use_cache: bool
) -> tuple[Float[Tensor, "target layer d_mlp"], Any]:
    """Each target's clean activation at every layer, and the key/value cache when asked and
    usable: ``None`` where a sliding-window layer kept only its last positions, or where the
    prefix and the rows appended after it could outgrow the model's
    [`attention_window`][tl_capability.sites.attention_window] (the rows would see another
    window than the full pass; they re-run ``z_m`` instead)."""
    run = clean_run(model, site, batch, use_cache)
    return run.acts, run.cache


@dataclass(frozen=True)
class CleanRun:
    """What [`clean_run`][tl_capability.attribution._rows.clean_run] read of a batch's clean pass.

    Attributes:
        acts: Each target's activation at every layer.
        cache: The key/value cache (``None`` where not asked or not usable; with
            ``own_cache``, the one the model's own pass filled, unfiltered).
        final: Each target's residual leaving the last block, where asked (``None`` where
            that hook point never ran).
        logits: The model's own logits at each target (a full pass), where asked.
    """

    acts: Float[Tensor, "target layer d_mlp"]
    cache: Any
    final: Float[Tensor, "target d_model"] | None = None
    logits: Float[Tensor, "target vocab"] | None = None


def clean_run(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    use_cache: bool,
    *,
    final: bool = False,
    logits: bool = False,
    own_cache: bool = False,
) -> CleanRun:
    """[`clean_pass`][tl_capability.attribution._rows.clean_pass], reading more on the way: each
    target's residual leaving the last block (``final``), and the model's own logits (``logits``:
    the pass runs to the end, the unembedding of every position included). With ``own_cache`` the
    pass is [`kv_cache_forward`][tl_capability.sites.kv_cache_forward]: the cache is the one the
    model's forward pass makes itself (its class is part of what
    [`supports_kv_cache`][tl_capability.sites.supports_kv_cache] checks), returned unfiltered
    (see [`usable_cache`][tl_capability.attribution._rows.usable_cache]).

    The neuron hooks' widths are checked on the way until they pass once
    ([`check_widths`][tl_capability.sites.check_widths]: this pass stands in for
    [`neuron_site`][tl_capability.sites.neuron_site]'s own)."""
    acts: list[Tensor] = [torch.empty(0)] * site.n_layers
    widths: dict[int, int] = {}
    kept: dict[str, Tensor] = {}
    at = (batch.target_row, batch.target_pos)

    def grab(layer: int):
        def hook(act: Tensor, hook: Any) -> None:
            widths[layer] = act.shape[-1]
            acts[layer] = act[at].detach().float()

        return hook

    def keep(value: Tensor, hook: Any) -> None:
        kept["final"] = value[at].detach()

    fwd = [(site.hook_name(layer), grab(layer)) for layer in range(site.n_layers)]
    if final:
        fwd.append((final_resid_hook_name(model), keep))
    read = None
    cache = None
    with torch.no_grad():
        if own_cache:
            with model.hooks(fwd_hooks=fwd):
                out = kv_cache_forward(model, batch.tokens)
            out, cache = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
            read = out[at]
        else:
            # Without logits the pass stops after the last block; a cache passed in is filled
            # in place.
            cache = new_kv_cache(model) if use_cache else None
            kwargs = {"past_key_values": cache, "use_cache": True} if use_cache else {}
            if logits:
                with model.hooks(fwd_hooks=fwd):
                    read = model(batch.tokens, **kwargs)[at]
            else:
                final_residual(model, batch.tokens, fwd, **kwargs)
    if not width_checked(model, site):
        check_widths(model, site, widths)
    if not own_cache:
        cache = usable_cache(model, site, cache, batch.tokens.shape[1])
    return CleanRun(torch.stack(acts, dim=1), cache, kept.get("final"), read)


def usable_cache(model: Any, site: NeuronSite, cache: Any, width: int) -> Any:
    """``cache`` (filled by a clean pass of ``width`` tokens), or ``None`` where rows cannot run
    over it: a sliding-window layer kept its window only, or the prefix and the rows after it
    could outgrow the model's [`attention_window`][tl_capability.sites.attention_window]."""
    if cache is None or any(
        layer.keys is None or layer.keys.shape[-2] != width for layer in cache.layers
    ):
        return None  # a sliding-window layer kept its window only: rows re-run z_m instead
    window = attention_window(model)
    # A sequence of rows holds at most ROWS_PER_SEQUENCE of them (cached_rows), or the carrier
    # and one row per layer of a pass (layered_rows), after a prefix shorter than `width`.
    if window is not None and width + max(ROWS_PER_SEQUENCE, site.n_layers) + 1 > window:
        return None
    return cache
