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

import warnings
from typing import Any, get_args
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability.data import Batch
from tl_capability.layered_rows import plan
from tl_capability.options import AllPositionMethod, Metric, check_option
from tl_capability.rows import Rows, _metric_surrogate, final_residual
from tl_capability.sites import (
    NeuronSite,
    ProbeMemo,
    attention_window,
    hooks_are_position_free,
    is_bridge,
    is_masked_lm,
    kept_until_hooks_change,
    mlp_io_hook_names,
    mlp_output_adds_linearly,
    mlp_w_out,
    model_device,
    probe_tolerance,
    resid_post_hook_name,
    resid_pre_hook_name,
    unembedding,
)

ALL_POSITION_METHODS = get_args(AllPositionMethod)


def check_all_position_method(method: str) -> AllPositionMethod:
    """Returns ``method`` when ``positions="all"`` supports it.

    Raises:
        ValueError: Naming the supported methods.
    """
    return check_option(
        method, AllPositionMethod, "method", note="positions='all' supports no other"
    )


def _expands(model: Any, width: int) -> bool:
    """Whether rows of ``width`` positions can share the layers below the scaled one: a causal
    model, and on a bridge one whose batch may grow inside the forward pass under one broadcast
    causal mask ([`_batch_grows`][tl_capability.all_positions._batch_grows], kept per model
    until its hooks change) with no attention window narrower than the rows: an explicit 4-D
    mask replaces the model's own, sliding window included
    ([`attention_window`][tl_capability.sites.attention_window])."""
    if is_masked_lm(model):
        return False
    if not is_bridge(model):
        return True
    window = attention_window(model)
    if window is not None and width > window:
        return False
    return kept_until_hooks_change(_GROWS, model, None, lambda: _batch_grows(model))


_GROWS: ProbeMemo = WeakKeyDictionary()


def _batch_grows(model: Any) -> bool:
    """Two prompts run as the model runs them, and again with a copy of the first appended
    before the first block under [`_causal_mask`][tl_capability.all_positions._causal_mask]:
    the grown batch must give the same last residuals. Some attentions refuse a mask whose
    batch is not theirs (XGLM checks its shape, Bloom builds ALiBi from a 2-D mask): then a
    warning, and rows re-run the prompt."""
    device = model_device(model)
    tokens = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]], device=device) % model.cfg.d_vocab

    def grow(resid: Tensor, hook: Any) -> Tensor:
        return torch.cat([resid, resid[:1]])

    try:
        with torch.no_grad():
            own = final_residual(model, tokens, [])
            grown = final_residual(
                model,
                tokens,
                [(resid_pre_hook_name(0), grow)],
                **_causal_mask(model, tokens.shape[1], device),
            )
        tol = probe_tolerance(own.dtype)
        scale = float(own.abs().max())
        same = grown.shape[0] == 3 and all(
            float((grown[i] - own[j]).abs().max()) <= tol * scale
            for i, j in ((0, 0), (1, 1), (2, 0))
        )
        why = "its last residuals differ"
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as error:
        same, why = False, f"{type(error).__name__}: {error}"
    if not same:
        warnings.warn(
            "this model does not run a batch grown inside the forward pass under one broadcast "
            f"causal mask as it runs the batch itself ({why}); all-position rows re-run the "
            "prompt (exact, slower)",
            stacklevel=4,
        )
    return same


def _causal_mask(model: Any, width: int, device: torch.device) -> dict[str, Any]:
    """Forward kwargs that let a batch grow inside the model (bridges over HF models only): a
    4-D causal mask, and the position ids, which some models (OPT) would otherwise derive from
    the mask as if it were 2-D."""
    if not is_bridge(model):
        return {}  # HookedTransformer builds its causal mask per position, not per batch
    dtype = unembedding(model)[0].dtype
    mask = torch.full((1, 1, width, width), torch.finfo(dtype).min, dtype=dtype, device=device)
    return {
        "attention_mask": mask.triu(1),
        "position_ids": torch.arange(width, device=device)[None],
    }


class _ReadsOnly:
    """Hooks that run the last block's MLP only where it is read: at the positions the rows
    read (and at every position of the batch's first ``whole`` sequences, whose activations
    there are kept).

    A row's metric reads the last block's output at its answer positions only, and the MLP is
    the last thing a block does (its output is added to the residual there), so the MLP at any
    other position of a row feeds nothing that is read: its input is packed to the read
    positions, ``[whole·pos + reads, 1, d_model]``, and its output scattered back (zeros
    elsewhere). The MLP is two thirds of a block's multiply-adds, and the last block the one
    every row runs. Used where [`_packs`][tl_capability.all_positions._packs] holds.
    """

    def __init__(self, names: tuple[str, str], whole: int, seq: Tensor, pos: Tensor):
        self.names, self.whole, self.seq, self.pos = names, whole, seq, pos
        self.shape: tuple[int, int] = (0, 0)
        self.reads = (seq, pos)

    def hooks(self) -> list:
        return [(self.names[0], self._take), (self.names[1], self._put)]

    def _take(self, x: Tensor, hook: Any) -> Tensor:
        n, width = x.shape[:2]
        here = self.seq < n  # rows already in the batch at this block
        self.shape, self.reads = (n, width), (self.seq[here], self.pos[here])
        whole = x[: self.whole].flatten(0, 1)
        return torch.cat([whole, x[self.reads]])[:, None]

    def _put(self, y: Tensor, hook: Any) -> Tensor:
        (n, width), cut = self.shape, self.whole * self.shape[1]
        if y.shape[:2] != (cut + len(self.reads[0]), 1):
            raise RuntimeError(f"the last MLP's output has shape {tuple(y.shape)}, not its input's")
        out = y.new_zeros(n, width, y.shape[-1])
        out[: self.whole] = y[:cut, 0].unflatten(0, (self.whole, width))
        out[self.reads] = y[cut:, 0]
        return out

    def whole_part(self, act: Tensor) -> Tensor:
        """The first ``whole`` sequences of a tensor read inside the packed MLP."""
        return act[: self.whole * self.shape[1], 0].unflatten(0, (self.whole, self.shape[1]))


def _packs(model: Any) -> tuple[str, str] | None:
    """The last MLP's hook points where rows may run it at their read positions only
    ([`_ReadsOnly`][tl_capability.all_positions._ReadsOnly]): a bridge whose MLP module has
    input and output hook points, every hook attached to the model position-free (a hook on
    the last MLP sees the packed positions), and, checked once per model until its hooks
    change, a pass that packs a copy of a prompt to its last position ends it as the prompt
    itself does."""
    names = mlp_io_hook_names(model, model.cfg.n_layers - 1)
    if names is None or not is_bridge(model) or not hooks_are_position_free(model):
        return None
    exact = kept_until_hooks_change(_PACKS, model, None, lambda: _probe_packs(model, names))
    return names if exact else None


_PACKS: ProbeMemo = WeakKeyDictionary()


def _probe_packs(model: Any, names: tuple[str, str]) -> bool:
    device = model_device(model)
    tokens = torch.tensor([[0, 1, 2, 3]], device=device).expand(2, -1) % model.cfg.d_vocab
    last = torch.tensor([1], device=device), torch.tensor([3], device=device)
    packed = _ReadsOnly(names, 1, *last)
    try:
        with torch.no_grad():
            out = final_residual(model, tokens, packed.hooks())
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError):
        return False
    want, got = out[0, 3].float(), out[1, 3].float()
    scale = max(float(want.abs().max()), 1.0)
    return float((got - want).abs().max()) <= probe_tolerance(out.dtype) * scale


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
    max_rows: int,
) -> Float[Tensor, "batch layer d_mlp"]:
    """Each sample's all-position score of every neuron (see the module docstring)."""
    check_all_position_method(method)
    device = batch.tokens.device
    n_samples = batch.tokens.shape[0]
    real = batch.mask.to(device)
    weight = 1.0 / batch.n_targets.to(device).float()
    if method == "activation":
        return _activation(model, site, batch, real)
    if method == "grad_x_act":
        return _grad_x_act(model, site, batch, metric, real, weight)
    expand = _expands(model, batch.tokens.shape[1])
    kwargs = _causal_mask(model, batch.tokens.shape[1], device) if expand else {}
    # Rows can even share the scaled layer's own block when the post-activations reach the
    # residual stream only through W_out: then a row's block output is the clean one plus
    # (α a − a) W_out, and the attention, norm, input projection and activation function of
    # that block run once per sample instead of once per (sample, α).
    late = expand and site.kind == "post" and mlp_output_adds_linearly(model)
    packs = _packs(model)  # the last block's MLP at the read positions only, where it may
    alphas = alphas.to(device)
    n_steps = len(alphas)
    out = torch.zeros(n_samples, site.n_layers, site.d_mlp, device=device)
    if late:
        # Every layer in one pass: the batch grows at each scaled block's output, so rows of
        # all layers share the blocks above theirs, the unembedding and one backward pass.
        group, chunk, per_pass = plan(site.n_layers, n_steps, max_rows)
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
    [`_ReadsOnly`][tl_capability.all_positions._ReadsOnly])."""
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
        fwd += _ReadsOnly(packs, 0, rows.seq, rows.pos).hooks()
    with torch.enable_grad():
        _, surrogate = _metric_surrogate(model, rows, metric, fwd, weight)
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
    position of the clean samples: [`_ReadsOnly`][tl_capability.all_positions._ReadsOnly]).
    """
    b, c = len(samples), len(alpha)
    local = torch.arange(b, device=samples.device).repeat_interleave(c)
    clean: dict[int, Tensor] = {}
    grown: dict[int, Tensor] = {}
    row_sample = samples[local].repeat(len(layers))
    rows, t = _rows(batch, row_sample, batch.tokens[samples], kwargs, offset=b)
    last = None if packs is None else _ReadsOnly(packs, b, rows.seq, rows.pos)
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
        _, surrogate = _metric_surrogate(model, rows, metric, fwd, weight[batch.target_row[t]])
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
    real: Tensor,
    weight: Tensor,
) -> Float[Tensor, "batch layer d_mlp"]:
    """``Σ_p a ∂f/∂a`` at the clean run, every layer in one forward and backward pass."""
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
        _, surrogate = _metric_surrogate(model, rows, metric, fwd, weight[batch.target_row[t]])
        grads = torch.autograd.grad(surrogate, held, allow_unused=True)
    out = [
        torch.zeros_like(a[:, 0]) if g is None else (a.detach() * g * real[..., None]).sum(1)
        for a, g in zip(held, grads, strict=True)
    ]
    return torch.stack(out, dim=1).float()


def _activation(
    model: Any, site: NeuronSite, batch: Batch, real: Tensor
) -> Float[Tensor, "batch layer d_mlp"]:
    """Mean ``|a|`` over each sample's real positions."""
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
