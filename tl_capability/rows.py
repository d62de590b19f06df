"""Teacher-forced rows: the forward (and backward) passes that attribution and NEG share.

A *row* reads one answer token: ``P(answer[m] | z_m)`` at the last position of
``z_m = prompt ⊕ answer[:m]``, the only position whose neurons are patched or differentiated.
Two ways to build rows give identical numbers:

- the general path re-runs ``z_m`` itself (any TransformerLens model);
- the cached path runs only the last token of ``z_m``, attending to the keys and values of the
  clean run (TransformerBridge over a Hugging Face decoder). Changing an activation at the last
  position changes nothing before it, so this is exact, and a row costs one token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.data import Batch
from tl_capability.options import Metric
from tl_capability.sites import (
    NeuronSite,
    attention_window,
    check_widths,
    final_norm,
    final_resid_hook_name,
    kv_cache_forward,
    logit_transform,
    new_kv_cache,
    probe_tolerance,
    run_until,
    unembed,
    unembed_input_hook,
    unembedding,
    width_checked,
)
from tl_capability.sites import supports_kv_cache as supports_kv_cache  # moved; re-exported


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


def row_metric(model: Any, rows: Rows, metric: Metric, fwd_hooks: list) -> Float[Tensor, " row"]:
    """``P(target | row)`` (or its log) of every row, unembedding the rows' positions only."""
    x = unembed_input(model, rows.tokens, fwd_hooks, rows.seq, rows.pos, **rows.forward_kwargs)
    logits = unembed(model, x)
    logp = logits.float().log_softmax(-1).gather(1, rows.target[:, None])[:, 0]
    return logp if metric == "logprob" else logp.exp()


_HEAD_VOCAB: ContextVar[int | None] = ContextVar("_HEAD_VOCAB", default=None)


@contextlib.contextmanager
def probe_head(n_vocab: int = 64) -> Iterator[None]:
    """Within: the rows' metric reads only the first ``n_vocab`` logits. For probes that compare
    two ways of running the same rows (the head is the same on both, so a small one tests them
    as well), where the whole vocabulary's weights, read again by every small pass, cost more
    than the blocks (50,257 × 768 floats: 0.06 s a pass on a CPU)."""
    token = _HEAD_VOCAB.set(n_vocab)
    try:
        yield
    finally:
        _HEAD_VOCAB.reset(token)


def _metric_surrogate(
    model: Any, rows: Rows, metric: Metric, fwd_hooks: list, weight: Tensor | None = None
) -> tuple[Float[Tensor, " row"], Tensor]:
    """The rows' metric and a scalar whose gradient upstream of ``ln_final`` equals that of the
    metric's sum over rows (weighted by ``weight`` when given).

    The vocabulary-sized part of the backward pass is done in closed form:
    ``∂ log P_y / ∂x = W_U[:, y] − softmax(x W_U + b_U) W_Uᵀ`` (times ``P_y`` for ``"prob"``;
    ``W_U``, ``b_U`` from [`unembedding`][tl_capability.sites.unembedding]),
    so autograd only sees ``(x · g).sum()`` with ``g`` constant — no ``[row, vocab]`` tensors
    in the graph.
    """
    x = unembed_input(model, rows.tokens, fwd_hooks, rows.seq, rows.pos, **rows.forward_kwargs)
    w_u, b_u = unembedding(model)
    limit = _HEAD_VOCAB.get()
    if limit is not None:
        w_u, b_u = w_u[:, :limit], None if b_u is None else b_u[:limit]
    transform = logit_transform(model)
    if transform is not None:
        return _transformed_surrogate(x, w_u, b_u, transform, rows.target, metric, weight)
    with torch.no_grad():
        w = _product_weights(w_u)
        xw = x.to(w.dtype)
        # One [vocab, row] buffer, vocabulary-major (W_Uᵀ xᵀ): on CPU the GEMM whose output rows
        # are a vocabulary long runs ~1.3x slower, and softmax is done in place along it with
        # the normaliser folded into the gradient: no [row, vocab] copies (benchmarks/peers.py).
        if b_u is not None and not b_u.any():
            b_u = None  # bridges expose a zero b_U; adding it costs a pass over the buffer
        z = w.T @ xw.T if b_u is None else torch.addmm(b_u.to(w.dtype)[:, None], w.T, xw.T)
        z = z.float()  # no copy for a float32 model
        top = z.amax(0)
        z_y = z.gather(0, rows.target[None])[0]
        e = z.sub_(top).exp_()  # exp(z - max), in place
        total = e.sum(0)
        logp = z_y - top - total.log()
        grad = w[:, rows.target].T.float() - (e.T.to(w.dtype) @ w.T).float() / total[:, None]
        if metric == "prob":
            value = logp.exp()
            grad *= value[:, None]
        else:
            value = logp
        if weight is not None:
            grad *= weight[:, None].to(grad.dtype)
    return value, (x * grad.to(x.dtype)).sum()


def _product_weights(w_u: Float[Tensor, "d_model vocab"]) -> Float[Tensor, "d_model vocab"]:
    """``W_U`` in the precision of the vocabulary products: a half-precision model's own (as its
    unembedding and its backward pass run them; the softmax between them stays float32), else
    float32. Up-casting a bf16 ``W_U`` copied it every call and ran the products at the float32
    rate: 1.7x slower on a CPU with bf16 units (docs/speed.md), more on a GPU."""
    w = w_u.detach()
    return w if w.dtype in (torch.float16, torch.bfloat16) else w.float()


def _transformed_surrogate(
    x: Float[Tensor, "row d_model"],
    w_u: Float[Tensor, "d_model vocab"],
    b_u: Float[Tensor, " vocab"] | None,
    transform: Any,
    target: Int[Tensor, " row"],
    metric: Metric,
    weight: Tensor | None,
) -> tuple[Float[Tensor, " row"], Tensor]:
    """[`_metric_surrogate`][tl_capability.rows._metric_surrogate] for a model that transforms
    its logits after the unembedding (a soft-cap, a scale): the transform is the model's own
    function, so its derivative comes from autograd on the ``[row, vocab]`` logits, not from a
    closed form; still no vocabulary-sized tensor in the blocks' graph."""
    w = _product_weights(w_u)
    xf = x.detach().to(w.dtype)
    values, grads = [], []
    # Autograd keeps several [row, vocab] tensors (logits, transformed, log-softmax and their
    # gradients): chunks of rows keep them near the closed form's one buffer.
    step = max(1, _TRANSFORM_CHUNK // w.shape[1])
    for start in range(0, xf.shape[0], step):
        part = slice(start, start + step)
        with torch.enable_grad():
            z = xf[part] @ w if b_u is None else torch.addmm(b_u.to(w.dtype), xf[part], w)
            z = z.float().requires_grad_(True)
            logp = transform(z).log_softmax(-1).gather(1, target[part, None])[:, 0]
            value = logp if metric == "logprob" else logp.exp()
            chosen = value if weight is None else value * weight[part].to(value.dtype)
            (dz,) = torch.autograd.grad(chosen.sum(), z)
        values.append(value.detach())
        grads.append((dz.to(w.dtype) @ w.T).float())
    grad = torch.cat(grads)
    return torch.cat(values), (x * grad.to(x.dtype)).sum()


#: Rows × vocabulary entries per chunk of the transformed head (2^24: 64 MiB in float32).
_TRANSFORM_CHUNK = 2**24


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
    """What [`clean_run`][tl_capability.rows.clean_run] read of a batch's clean pass.

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
    """[`clean_pass`][tl_capability.rows.clean_pass], reading more on the way: each target's
    residual leaving the last block (``final``), and the model's own logits (``logits``: the
    pass runs to the end, the unembedding of every position included). With ``own_cache`` the
    pass is [`kv_cache_forward`][tl_capability.sites.kv_cache_forward]: the cache is the one the
    model's forward pass makes itself (its class is part of what
    [`supports_kv_cache`][tl_capability.sites.supports_kv_cache] checks), returned unfiltered
    (see [`usable_cache`][tl_capability.rows.usable_cache]).

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


def row_gradients(
    model: Any,
    site: NeuronSite,
    rows: Rows,
    metric: Metric,
    layer: int | None,
    patch_value: Float[Tensor, "row d_mlp"] | None = None,
) -> Float[Tensor, "row layer d_mlp"]:
    """Gradient of each row's metric w.r.t. the neurons at the row's position.

    Args:
        layer: Differentiate at this layer only (the backward pass then stops there), or at
            every layer when ``None``.
        patch_value: With ``layer``, each row's activation there is first replaced by its
            ``patch_value``, so the gradient is taken at that point (integrated gradients).

    Returns:
        ``[row, layer, d_mlp]``; the layer axis has one entry when ``layer`` is given.
    """
    layers = range(site.n_layers) if layer is None else [layer]
    outputs: list[Tensor] = []
    seq, pos = rows.seq, rows.pos

    def capture(act: Tensor, hook: Any) -> Tensor:
        new = act.clone()
        if patch_value is not None:
            new[seq, pos] = patch_value.to(new.dtype)
        if not new.requires_grad:  # frozen parameters: start the graph here
            new.requires_grad_(True)
        outputs.append(new)
        return new

    fwd = [(site.hook_name(lay), capture) for lay in layers]
    with torch.enable_grad():
        _, surrogate = _metric_surrogate(model, rows, metric, fwd)
        grads = torch.autograd.grad(surrogate, outputs, allow_unused=True)
    out = [
        torch.zeros(len(seq), site.d_mlp, device=seq.device) if g is None else g[seq, pos]
        for g in grads
    ]
    return torch.stack(out, dim=1).float()


class RowsInexact(Exception):
    """Rows that a pass checked left the clean run before their patch: their activation at
    their own layer, before it was replaced, was not the clean pass's."""


def layer_row_gradients(
    model: Any,
    site: NeuronSite,
    rows: Rows,
    metric: Metric,
    row_layer: Int[Tensor, " row"],
    patch_value: Float[Tensor, "row d_mlp"],
    clean: Float[Tensor, "row d_mlp"] | None = None,
) -> Float[Tensor, "row d_mlp"]:
    """Gradient of each row's metric at its own layer, its activation there first replaced by
    its ``patch_value`` (integrated gradients' rows of several layers in one pass).

    Rows are independent (each sees the clean prefix and itself), so a row patched at layer
    ``l`` is unchanged below ``l`` and its gradient there is that of a pass patching ``l``
    alone. The backward pass stops at the lowest layer in ``row_layer``.

    With ``clean`` (each row's clean activation at its own layer), the activation a row
    reaches its layer with, before it is replaced, must equal it (relative difference within
    [`probe_tolerance`][tl_capability.sites.probe_tolerance]), else
    [`RowsInexact`][tl_capability.rows.RowsInexact].
    """
    layers = sorted(set(row_layer.tolist()))
    outputs: list[Tensor] = []
    chosen = {layer: (row_layer == layer).nonzero()[:, 0] for layer in layers}
    off: list[int] = []  # the layers whose rows left the clean run

    def capture(layer: int):
        def hook(act: Tensor, hook: Any) -> Tensor:
            new = act.clone()
            r = chosen[layer]
            if clean is not None and not _same(act[rows.seq[r], rows.pos[r]], clean[r]):
                off.append(layer)
            new[rows.seq[r], rows.pos[r]] = patch_value[r].to(new.dtype)
            if not new.requires_grad:  # frozen parameters: start the graph here
                new.requires_grad_(True)
            outputs.append(new)
            return new

        return hook

    fwd = [(site.hook_name(layer), capture(layer)) for layer in layers]
    with torch.enable_grad():
        _, surrogate = _metric_surrogate(model, rows, metric, fwd)
        if off:
            raise RowsInexact(f"rows reached layer {off[0]} off the clean run")
        grads = torch.autograd.grad(surrogate, outputs, allow_unused=True)
    out = torch.zeros(len(rows.seq), site.d_mlp, device=rows.seq.device)
    for layer, g in zip(layers, grads, strict=True):
        r = chosen[layer]
        if g is not None:
            out[r] = g[rows.seq[r], rows.pos[r]].float()
    return out


def _same(got: Tensor, want: Tensor) -> bool:
    """Whether ``got`` (in the model's precision) equals ``want`` within the probes' relative
    tolerance for that precision, and is finite."""
    tol = probe_tolerance(got.dtype)
    got, want = got.detach().float(), want.detach().float()
    scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
    return bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= tol * scale
