"""What a row reads, and its gradients: the metric at the rows' positions and the backward pass.

A row's metric is ``P(answer token)`` (or its log) at its position, read through the answer head
([`unembed_input`][tl_capability._answer_head.unembed_input]: the blocks, then ``ln_final`` and
the unembedding at the rows only). Its gradient at the neurons comes from a surrogate whose
vocabulary-sized part is done in closed form
([`metric_surrogate`][tl_capability.attribution._row_gradients.metric_surrogate]), so autograd
sees no ``[row, vocab]`` tensor; the rows themselves are built in
[`_rows`][tl_capability.attribution._rows].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability._answer_head import unembed_input
from tl_capability.attribution._rows import Rows
from tl_capability.options import Metric
from tl_capability.sites import (
    NeuronSite,
    logit_transform,
    probe_tolerance,
    unembed,
    unembedding,
)


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


def metric_surrogate(
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
    """[`metric_surrogate`][tl_capability.attribution._row_gradients.metric_surrogate] for a model
    that transforms its logits after the unembedding (a soft-cap, a scale): the transform is the
    model's own function, so its derivative comes from autograd on the ``[row, vocab]`` logits, not
    from a closed form; still no vocabulary-sized tensor in the blocks' graph."""
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
        _, surrogate = metric_surrogate(model, rows, metric, fwd)
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
    [`RowsInexact`][tl_capability.attribution._row_gradients.RowsInexact].
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
        _, surrogate = metric_surrogate(model, rows, metric, fwd)
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
