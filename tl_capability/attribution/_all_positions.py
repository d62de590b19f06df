"""All-position attribution: a neuron scaled at every position at once, as erasure removes it.

The papers' scores ([`tl_capability.attribution`][tl_capability.attribution],
``positions="answer"``) change a neuron only at the position that predicts each answer token.
Erasing a neuron removes it at *every* position, including the prompt positions whose outputs later
positions read through attention, so on models trained with dropout or with gated MLPs the
answer-position score misses most of what erasure does (``docs/findings.md``). Here, for one sample
and layer ``l``, all of the layer's activations are scaled together, ``a ← α·a`` at every real
position, and the metric is read at every answer position (teacher forced):

    ``f(α) = (1/Y) Σ_m P(y_m | x ⊕ y_<m; layer l scaled by α)``   (or its log)

    ``IG_j = Σ_p a_pj · (1/S) Σ_k ∂f/∂a_pj (α_k)``

With ``S → ∞`` the scores of one layer sum to ``f(1) − f(0)``: the effect of zeroing the whole
layer at every position (completeness). ``"grad_x_act"`` is ``Σ_p a_pj ∂f/∂a_pj`` at the clean
run (all layers in one pass); ``"activation"`` is the mean ``|a_pj|`` over real positions.

How it is computed: the model runs the batch's ``B`` sequences clean, once. Where every block
adds its MLP's output linearly
([`mlp_output_adds_linearly`][tl_capability.sites.mlp_output_adds_linearly]), the batch
grows at the output of each block ``l``: one row per ``(sample, α)``, the clean output plus
``(α a − a) W_out``. A row then runs only the blocks above its layer, the rows of every layer
share the unembedding and one backward pass, and the layers below ``l`` and block ``l`` itself run
once per sample, not once per ``(sample, α)``. Otherwise a hook on ``blocks.{l}.hook_resid_pre``
copies each sequence into its rows, one layer per pass, and the row's activation is scaled. Causal
models need an explicit ``[1, 1, T, T]`` causal mask for either (the mask a Hugging Face model
builds has the batch of the input); masked LMs take the plain path, one full sequence per row.
Sequences are right padded and end at their last answer token, so no position after it is run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability._answer_head import final_residual
from tl_capability.attribution._all_position_probes import (
    ReadsOnly,
    causal_mask,
    expands,
    packed_last_mlp,
)
from tl_capability.attribution._layered_rows import plan
from tl_capability.attribution._row_gradients import metric_surrogate
from tl_capability.attribution._rows import Rows
from tl_capability.data import Batch
from tl_capability.options import AllPositionMethod, Metric, check_option
from tl_capability.sites import (
    NeuronSite,
    mlp_output_adds_linearly,
    mlp_w_out,
    resid_post_hook_name,
    resid_pre_hook_name,
)

#: Positions per pass that the default number of rows aims at (``max_rows=None``).
ROW_POSITIONS = 1024
#: Rows per pass at least, by default: fewer, longer sequences run no faster (docs/speed.md).
MIN_ROWS = 64


def all_position_rows(max_rows: int | None, length: int) -> int:
    """Rows (whole sequences of ``length`` positions) per pass: ``max_rows``, or by default
    ``MIN_ROWS``, or more where they are short, up to about ``ROW_POSITIONS`` positions.

    A pass re-reads every weight and holds its rows' activations for the backward pass: on a
    CPU, 64 rows of 16 tokens ran as fast as more, and shorter rows paid for fewer of them
    (six-token prompts: SmolLM2 6 % and a 12-layer GPT-2 16 % faster at 170 rows than at 64;
    ``docs/speed.md``), while 64-token rows ran 21 % slower at 16 rows than at 64.
    """
    if max_rows is not None:
        return max_rows
    return max(MIN_ROWS, ROW_POSITIONS // max(length, 1))


def check_all_position_method(method: str) -> AllPositionMethod:
    """Returns ``method`` when ``positions="all"`` supports it.

    Raises:
        ValueError: Naming the supported methods.
    """
    return check_option(
        method, AllPositionMethod, "method", note="positions='all' supports no other"
    )


def _rows(
    batch: Batch,
    row_sample: Tensor,
    tokens: Tensor,
    kwargs: dict[str, Any],
    offset: int = 0,
) -> tuple[Rows, Tensor]:
    """Rows whose sequence ``offset + r`` (of ``tokens``, or of the batch they grow into) is
    sample ``row_sample[r]``, reading every answer token of it, and the batch target of each
    read."""
    hit = row_sample[:, None] == batch.target_row[None, :]
    r, t = hit.nonzero(as_tuple=True)
    return Rows(tokens, offset + r, batch.target_pos[t], batch.target_token[t], kwargs), t


def all_position_scores(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    method: AllPositionMethod,
    metric: Metric,
    alphas: Float[Tensor, " steps"],
    max_rows: int | None,
) -> Float[Tensor, "batch layer d_mlp"]:
    """Each sample's all-position score of every neuron (see the module docstring), by the
    method's entry in ``METHODS`` (``max_rows``: see
    [`all_position_rows`][tl_capability.attribution._all_positions.all_position_rows])."""
    check_all_position_method(method)
    return METHODS[method](model, site, batch, metric, alphas, max_rows)


def _real_and_weight(batch: Batch) -> tuple[Tensor, Tensor]:
    """The batch's real (unpadded) positions, and each sample's weight ``1/Y`` (its answer
    tokens' mean)."""
    device = batch.tokens.device
    return batch.mask.to(device), 1.0 / batch.n_targets.to(device).float()


def _ig(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    metric: Metric,
    alphas: Float[Tensor, " steps"],
    max_rows: int | None,
) -> Float[Tensor, "batch layer d_mlp"]:
    """Integrated gradients with the layer scaled at every position."""
    device = batch.tokens.device
    max_rows = all_position_rows(max_rows, batch.tokens.shape[1])
    n_samples = batch.tokens.shape[0]
    real, weight = _real_and_weight(batch)
    expand = expands(model, batch.tokens.shape[1])
    kwargs = causal_mask(model, batch.tokens.shape[1], device) if expand else {}
    # Rows can even share the scaled layer's own block when the post-activations reach the
    # residual stream only through W_out: then a row's block output is the clean one plus
    # (α a − a) W_out, and the attention, norm, input projection and activation function of
    # that block run once per sample instead of once per (sample, α).
    late = expand and site.kind == "post" and mlp_output_adds_linearly(model)
    packs = packed_last_mlp(model)  # the last block's MLP at the read positions only, where it may
    alphas = alphas.to(device)
    n_steps = len(alphas)
    out = torch.zeros(n_samples, site.n_layers, site.d_mlp, device=device)
    if late:
        # Every layer in one pass: the batch grows at each scaled block's output, so rows of
        # all layers share the blocks above theirs, the unembedding and one backward pass.
        group, chunk, per_pass = plan(site.n_layers, n_steps, max_rows, sequence_rows=max_rows)
        for top in range(site.n_layers, 0, -group):
            layers = range(max(0, top - group), top)
            for first in range(0, n_steps, chunk):
                k = torch.arange(first, min(first + chunk, n_steps), device=device)
                for start in range(0, n_samples, per_pass):
                    s = torch.arange(start, min(start + per_pass, n_samples), device=device)
                    grown = _grown_scores(
                        model, site, batch, metric, layers, s, alphas[k], weight, kwargs, packs
                    )
                    for layer, per_sample in zip(layers, grown, strict=True):
                        out[:, layer].index_add_(0, s, per_sample)
        return out / n_steps
    s_idx, k_idx = (
        x.flatten().to(device)
        for x in torch.meshgrid(torch.arange(n_samples), torch.arange(n_steps), indexing="ij")
    )
    for layer in range(site.n_layers):
        for start in range(0, len(s_idx), max_rows):
            s, k = s_idx[start : start + max_rows], k_idx[start : start + max_rows]
            rows, t = _rows(batch, s, batch.tokens if expand else batch.tokens[s], kwargs)
            w = weight[batch.target_row[t]]
            last = packs if layer < site.n_layers - 1 else None  # scaled there: every position
            clean, grad = _scaled_gradient(
                model, site, layer, rows, metric, s, alphas[k], expand, w, last
            )
            per_row = (clean * grad * real[s, :, None]).sum(1)
            out[:, layer].index_add_(0, s, per_row)
    return out / n_steps


def _scaled_gradient(
    model: Any,
    site: NeuronSite,
    layer: int,
    rows: Rows,
    metric: Metric,
    row_sample: Tensor,
    alpha: Float[Tensor, " row"],
    expand: bool,
    weight: Float[Tensor, " read"],
    packs: tuple[str, str] | None = None,
) -> tuple[Float[Tensor, "row pos d_mlp"], Float[Tensor, "row pos d_mlp"]]:
    """The clean activations of ``layer`` and the gradient of each row's metric at ``α·a``
    (with ``packs``, the last block's MLP runs at the read positions only:
    [`ReadsOnly`][tl_capability.attribution._all_position_probes.ReadsOnly])."""
    held: dict[str, Tensor] = {}

    def copy_rows(resid: Tensor, hook: Any) -> Tensor:
        return resid.detach().index_select(0, row_sample)

    def scale(act: Tensor, hook: Any) -> Tensor:
        held["clean"] = act.detach().float()
        scaled = (act.detach() * alpha[:, None, None].to(act.dtype)).requires_grad_(True)
        held["scaled"] = scaled
        return scaled

    fwd = [(site.hook_name(layer), scale)]
    if expand:
        fwd.insert(0, (resid_pre_hook_name(layer), copy_rows))
    if packs is not None:
        fwd += ReadsOnly(packs, 0, rows.seq, rows.pos).hooks()
    with torch.enable_grad():
        _, surrogate = metric_surrogate(model, rows, metric, fwd, weight)
        (grad,) = torch.autograd.grad(surrogate, [held["scaled"]])
    return held["clean"], grad.float()


def _grown_scores(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    metric: Metric,
    layers: range,
    samples: Tensor,
    alpha: Float[Tensor, " step"],
    weight: Float[Tensor, " target"],
    kwargs: dict[str, Any],
    packs: tuple[str, str] | None = None,
) -> list[Float[Tensor, "sample d_mlp"]]:
    """For each of ``layers``, each sample's ``Σ_k Σ_p a_p · ∂f/∂a_p (α_k a)`` over the steps
    ``alpha`` and its real positions, all layers in one pass.

    The pass runs the ``samples`` clean; at the output of each block ``l`` of ``layers`` the
    batch grows by one row per (sample, step), the sample's clean output plus
    ``(α − 1) a W_out`` (exact when
    [`mlp_output_adds_linearly`][tl_capability.sites.mlp_output_adds_linearly]: scaling the
    post-activations by ``α`` adds ``(α a − a) W_out``), so a row runs only the blocks above its
    layer, and all rows share the unembedding and one backward pass. ``a W_out`` is computed
    once per sample; the rows' gradient ``G`` at the block's output gives the activations'
    ``G W_outᵀ``, which is linear, so the steps' ``G`` are summed first and multiplied by
    ``W_outᵀ`` once per sample: no ``[row, pos, d_mlp]`` tensor is made, forward or backward.
    With ``packs``, the last block's MLP runs at the rows' read positions only (and at every
    position of the clean samples:
    [`ReadsOnly`][tl_capability.attribution._all_position_probes.ReadsOnly]).
    """
    b, c = len(samples), len(alpha)
    local = torch.arange(b, device=samples.device).repeat_interleave(c)
    clean: dict[int, Tensor] = {}
    grown: dict[int, Tensor] = {}
    row_sample = samples[local].repeat(len(layers))
    rows, t = _rows(batch, row_sample, batch.tokens[samples], kwargs, offset=b)
    last = None if packs is None else ReadsOnly(packs, b, rows.seq, rows.pos)
    top = site.n_layers - 1
    w_outs = {layer: mlp_w_out(model, layer).detach() for layer in layers}

    def keep(layer: int):
        def hook(act: Tensor, hook: Any) -> None:
            whole = act if last is None or layer < top else last.whole_part(act)
            clean[layer] = whole[:b].detach()

        return hook

    def fork(layer: int):
        def hook(resid: Tensor, hook: Any) -> Tensor:
            a = clean[layer]
            shift = (a @ w_outs[layer].to(a.dtype)).index_select(0, local)
            coef = (alpha - 1).repeat(b)[:, None, None].to(shift.dtype)
            base = resid[:b].detach().index_select(0, local)
            grown[layer] = (base + coef * shift).requires_grad_(True)
            return torch.cat([resid, grown[layer]])

        return hook

    fwd = [] if last is None else last.hooks()
    for layer in layers:
        fwd += [(site.hook_name(layer), keep(layer)), (resid_post_hook_name(layer), fork(layer))]
    with torch.enable_grad():
        _, surrogate = metric_surrogate(model, rows, metric, fwd, weight[batch.target_row[t]])
        grads = torch.autograd.grad(surrogate, [grown[layer] for layer in layers])
    real = batch.mask.to(samples.device)[samples, :, None]
    out = []
    for layer, g in zip(layers, grads, strict=True):
        summed = g.float().unflatten(0, (b, c)).sum(1)  # the steps' gradients, per sample
        per_act = summed @ w_outs[layer].float().T
        out.append((clean[layer].float() * per_act * real).sum(1))
    return out


def _grad_x_act(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    metric: Metric,
    alphas: Tensor,
    max_rows: int | None,
) -> Float[Tensor, "batch layer d_mlp"]:
    """``Σ_p a ∂f/∂a`` at the clean run, every layer in one forward and backward pass (one
    pass per batch: no steps, no row limit)."""
    real, weight = _real_and_weight(batch)
    every = torch.arange(batch.tokens.shape[0], device=real.device)
    rows, t = _rows(batch, every, batch.tokens, {})
    held: list[Tensor] = []

    def keep(act: Tensor, hook: Any) -> Tensor:
        new = act.clone()
        if not new.requires_grad:  # frozen parameters: start the graph here
            new.requires_grad_(True)
        held.append(new)
        return new

    fwd = [(site.hook_name(layer), keep) for layer in range(site.n_layers)]
    with torch.enable_grad():
        _, surrogate = metric_surrogate(model, rows, metric, fwd, weight[batch.target_row[t]])
        grads = torch.autograd.grad(surrogate, held, allow_unused=True)
    out = [
        torch.zeros_like(a[:, 0]) if g is None else (a.detach() * g * real[..., None]).sum(1)
        for a, g in zip(held, grads, strict=True)
    ]
    return torch.stack(out, dim=1).float()


def _activation(
    model: Any, site: NeuronSite, batch: Batch, metric: Metric, alphas: Tensor, max_rows: int | None
) -> Float[Tensor, "batch layer d_mlp"]:
    """Mean ``|a|`` over each sample's real positions (no metric, no gradient)."""
    real = _real_and_weight(batch)[0]
    acts: list[Tensor] = [torch.empty(0)] * site.n_layers

    def grab(layer: int):
        def hook(act: Tensor, hook: Any) -> None:
            acts[layer] = (act.detach().float().abs() * real[..., None]).sum(1)

        return hook

    with torch.no_grad():
        final_residual(
            model, batch.tokens, [(site.hook_name(i), grab(i)) for i in range(site.n_layers)]
        )
    return torch.stack(acts, dim=1) / real.sum(1)[:, None, None]


#: The all-position methods: each scores a batch as ``(model, site, batch, metric, alphas,
#: max_rows) -> [batch, layer, d_mlp]``. A new method is one such function and one entry here
#: (and its name in ``options.AllPositionMethod``).
METHODS: dict[str, Callable[..., Tensor]] = {
    "ig": _ig,
    "grad_x_act": _grad_x_act,
    "activation": _activation,
}
