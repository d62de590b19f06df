"""The answer-position methods: how one batch's targets are scored, one function per method.

[`METHODS`][tl_capability.attribution._methods.METHODS] maps each method's name to its
function; a new method is one function over a [`Pass`][tl_capability.attribution._methods.Pass]
and one entry there (and its name in ``options.AttributionMethod``). The all-position methods
have a table of their own ([`_all_positions`][tl_capability.attribution._all_positions]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability.attribution._first_call import FirstCall
from tl_capability.attribution._layered_rows import layered_ig_grad_sum, layered_rows_exact
from tl_capability.attribution._row_gradients import layer_row_gradients, row_gradients
from tl_capability.attribution._rows import CleanRun, clean_run, neg_direction, rows_for
from tl_capability.data import Batch
from tl_capability.options import IGRule, check_option, check_positive_int
from tl_capability.sites import NeuronSite

# Below this many rows per layer, layers share an integrated-gradients pass (measured with
# benchmarks/peers.py: on CPU a pass of a few dozen one-token rows costs streaming the weights).
_ROWS_PER_PASS = 128


def ig_alphas(steps: int, rule: IGRule = "midpoint") -> Float[Tensor, " steps"]:
    """The scales ``α_k`` at which integrated gradients evaluates the gradient.

    Args:
        steps: Number of evaluation points ``S``.
        rule: ``"midpoint"`` (``(k - ½)/S``), ``"left"`` (``(k - 1)/S``, Dai et al.) or
            ``"right"`` (``k/S``), for ``k = 1..S``.
    """
    check_positive_int(steps, "steps")
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    offsets = {"midpoint": 0.5, "left": 1.0, "right": 0.0}
    return ((k - offsets[check_option(rule, IGRule, "rule")]) / steps).float()


@dataclass(frozen=True)
class Pass:
    """One batch's clean run and what a method needs to score its targets.

    Attributes:
        model: The model.
        site: The neuron hooks.
        batch: The batch.
        run: Its clean run (activations at the targets, the key/value cache where usable).
        metric: ``"prob"`` or ``"logprob"``.
        alphas: The integrated-gradients scales.
        max_rows: Rows per forward/backward pass.
        first: The checks a model's first call still owes, read off this batch's passes.
    """

    model: Any
    site: NeuronSite
    batch: Batch
    run: CleanRun
    metric: str
    alphas: Tensor
    max_rows: int
    first: FirstCall | None

    def cache(self) -> Any:
        """The cache rows run over: the clean run's, or where the first call still checks the
        model, the one its checks leave."""
        if self.first is not None:
            return self.first.rows_checked(self.batch, self.run)
        return self.run.cache


def _activation(p: Pass) -> Float[Tensor, "target layer d_mlp"]:
    """``|a_m|``."""
    return p.run.acts.abs()


def _gradients(p: Pass) -> Float[Tensor, "target layer d_mlp"]:
    """``∂P_m/∂a_m`` at every layer, ``max_rows`` targets a pass."""
    cache = p.cache()
    n_targets = len(p.batch.target_row)
    device = p.batch.tokens.device
    grads = []
    for start in range(0, n_targets, p.max_rows):
        t = torch.arange(start, min(start + p.max_rows, n_targets), device=device)
        rows = rows_for(p.batch, t, cache)
        grads.append(row_gradients(p.model, p.site, rows, p.metric, None))
    return torch.cat(grads)


def _grad_x_act(p: Pass) -> Float[Tensor, "target layer d_mlp"]:
    """``a_m · ∂P_m/∂a_m``."""
    return _gradients(p) * p.run.acts


def _neurgrad(p: Pass) -> Float[Tensor, "target layer d_mlp"]:
    """``∂P_m/∂a_m · sign(a_m)``, ``sign(0) = +1``."""
    return _gradients(p) * neg_direction(p.run.acts)


def _ig(p: Pass) -> Float[Tensor, "target layer d_mlp"]:
    """``a_m · (1/S) Σ_k ∂P_m/∂a (a ← α_k a_m)``: layered rows where the model allows them,
    else one row per (target, layer, step)."""
    model, site, batch, run, first = p.model, p.site, p.batch, p.run, p.first
    acts, device = run.acts, batch.tokens.device
    alphas = p.alphas.to(device)
    if first is not None and run.cache is not None:
        grad_sum = first.ig_grad_sum(batch, run, alphas, p.metric, p.max_rows)
        if grad_sum is not None:
            return acts * grad_sum / len(alphas)
    cache = p.cache()
    if first is None and cache is not None and layered_rows_exact(model, site):
        grad_sum = layered_ig_grad_sum(
            model, site, batch, cache, acts, alphas, p.metric, p.max_rows
        )
        return acts * grad_sum / len(alphas)
    return acts * _ig_grad_sum(p, cache, alphas) / len(alphas)


def _ig_grad_sum(p: Pass, cache: Any, alphas: Tensor) -> Float[Tensor, "target layer d_mlp"]:
    """``Σ_k ∂P_m/∂a (a ← α_k a_m)`` with one row per (target, layer, step).

    A pass differentiates a few adjacent layers, so its backward pass stops at the lowest of
    them instead of running down to the embeddings; when the rows of one layer are few, several
    layers share a pass, because then a pass costs reading the weights, not the arithmetic on
    its rows.
    """
    site, batch, acts = p.site, p.batch, p.run.acts
    device = batch.tokens.device
    n_targets, n_steps = len(batch.target_row), len(alphas)
    per_layer = n_targets * n_steps
    group = max(1, min(site.n_layers, _ROWS_PER_PASS // per_layer))
    grad_sum = torch.zeros(n_targets, site.n_layers, site.d_mlp, device=device)
    for top in range(site.n_layers, 0, -group):
        layers = torch.arange(max(0, top - group), top)
        t_idx, l_idx, k_idx = (
            x.flatten().to(device)
            for x in torch.meshgrid(
                torch.arange(n_targets), layers, torch.arange(n_steps), indexing="ij"
            )
        )
        for start in range(0, len(t_idx), p.max_rows):
            t, lay, k = (x[start : start + p.max_rows] for x in (t_idx, l_idx, k_idx))
            value = alphas[k, None] * acts[t, lay]
            rows = rows_for(batch, t, cache)
            g = layer_row_gradients(p.model, site, rows, p.metric, lay, value)
            grad_sum.index_put_((t, lay), g, accumulate=True)
    return grad_sum


#: The answer-position methods: each scores a batch's targets from a
#: [`Pass`][tl_capability.attribution._methods.Pass], ``[target, layer, d_mlp]``.
METHODS: dict[str, Callable[[Pass], Tensor]] = {
    "ig": _ig,
    "grad_x_act": _grad_x_act,
    "neurgrad": _neurgrad,
    "activation": _activation,
}


def target_scores(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    method: str,
    metric: str,
    alphas: Tensor,
    max_rows: int,
    use_cache: bool,
    first: FirstCall | None = None,
) -> Float[Tensor, "target layer d_mlp"]:
    """Every target's score by ``method``, after the batch's clean run (with the first call's
    checks where ``first`` still owes them)."""
    if first is not None:  # the checks the model still owes, read off this batch's passes
        run = first.clean(batch)
    else:
        run = clean_run(model, site, batch, use_cache and method != "activation")
    return METHODS[method](Pass(model, site, batch, run, metric, alphas, max_rows, first))


def per_sample_mean(batch: Batch, scores: Tensor) -> Float[Tensor, "batch layer d_mlp"]:
    """Mean of the target scores of each row (``(1/Y) Σ_m``)."""
    n_rows = batch.tokens.shape[0]
    total = torch.zeros(n_rows, *scores.shape[1:], device=scores.device)
    total.index_add_(0, batch.target_row, scores)
    return total / batch.n_targets[:, None, None].to(scores.dtype)
