"""Neuron empirical gradients (NEG) measured by interventions: the ground truth for NeurGrad.

Zhao et al. (ACL 2025, arXiv 2412.18053) shift one neuron's activation by ``x · sign(a)`` for a
range of ``x`` and find that the answer probability changes linearly: ``ΔP ≈ NEG · x``. This
module measures that directly: for every chosen neuron, every shift ``x ∈ ±shifts`` and every
answer token (teacher forced, at the last position of ``z_m``), one patched row; the slope of
``ΔP`` through the origin is the empirical NEG and Pearson's r measures the linearity.

NeurGrad (``attribute(..., method="neurgrad")``) estimates the same slope from one forward and
one backward pass: ``∂P/∂a · sign(a)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability._answer_head import require_separable_head
from tl_capability.attribution._row_gradients import row_metric
from tl_capability.attribution._rows import Rows, clean_pass, neg_direction, rows_for
from tl_capability.data import CapabilityDataset, batches, count_batches, tokenize
from tl_capability.options import Metric, Site, check_option
from tl_capability.sites import NeuronSite, neuron_site, require_eval, resolve_use_cache

__all__ = ["DEFAULT_SHIFTS", "EmpiricalNEG", "empirical_neg"]

DEFAULT_SHIFTS = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class EmpiricalNEG:
    """Interventional NEG of chosen neurons on every sample.

    Attributes:
        neurons: ``(layer, index)`` of each neuron.
        shifts: The signed shifts ``x`` (activation moved by ``x · sign(a)``).
        delta: Mean over the sample's answer tokens of ``ΔP`` at each shift.
        slope: Least-squares slope of ``delta`` against ``shifts`` through the origin.
        r: Pearson correlation of ``delta`` and ``shifts`` (1 = perfectly linear).
        metric: ``"prob"`` or ``"logprob"``.
    """

    neurons: Int[Tensor, "neuron 2"]
    shifts: Float[Tensor, " shift"]
    delta: Float[Tensor, "sample neuron shift"]
    slope: Float[Tensor, "sample neuron"]
    r: Float[Tensor, "sample neuron"]
    metric: str

    @property
    def mean_slope(self) -> Float[Tensor, " neuron"]:
        """The NEG of each neuron averaged over samples."""
        return self.slope.mean(0)


def _as_neuron_list(neurons: Any, site: NeuronSite) -> Int[Tensor, "neuron 2"]:
    """``(layer, index)`` pairs from pairs, a ``[k, 2]`` tensor, a bool ``[layer, d_mlp]``
    tensor or an object with such a ``.tensor`` (a mask).

    Raises:
        ValueError: For an empty selection, a mask of another shape, or an index out of range.
    """
    tensor = getattr(neurons, "tensor", neurons)
    if isinstance(tensor, Tensor) and tensor.dtype == torch.bool:
        if tuple(tensor.shape) != (site.n_layers, site.d_mlp):
            raise ValueError(
                f"neuron mask of shape {tuple(tensor.shape)} does not fit a model with "
                f"{site.n_layers} layers of {site.d_mlp} neurons"
            )
        pairs = tensor.nonzero()
    else:
        pairs = torch.as_tensor(
            tensor if not isinstance(tensor, Sequence) else list(tensor), dtype=torch.long
        ).reshape(-1, 2)
    if len(pairs) == 0:
        raise ValueError("no neurons selected")
    layers, index = pairs[:, 0], pairs[:, 1]
    if (layers < 0).any() or (layers >= site.n_layers).any():
        raise ValueError(f"layer out of range 0..{site.n_layers - 1}")
    if (index < 0).any() or (index >= site.d_mlp).any():
        raise ValueError(f"neuron index out of range 0..{site.d_mlp - 1}")
    return pairs


def _fit(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Slope through the origin and Pearson r along the last axis."""
    slope = (y * x).sum(-1) / (x * x).sum()
    xc, yc = x - x.mean(), y - y.mean(-1, keepdim=True)
    denom = (xc * xc).sum().sqrt() * (yc * yc).sum(-1).sqrt()
    r = torch.where(denom > 0, (xc * yc).sum(-1) / denom.clamp_min(1e-30), torch.zeros_like(denom))
    return slope, r


def empirical_neg(
    model: Any,
    dataset: CapabilityDataset,
    neurons: Any,
    *,
    shifts: Sequence[float] = DEFAULT_SHIFTS,
    metric: Metric = "prob",
    site: Site = "post",
    batch_size: int = 8,
    max_rows: int = 2048,
    progress: bool = True,
    use_cache: bool | None = None,
) -> EmpiricalNEG:
    """Measures each neuron's NEG by shifting its activation and re-reading the answer.

    Args:
        model: A TransformerLens model in eval mode.
        dataset: (prompt, answer) pairs; every answer token is read, teacher forced.
        neurons: Which neurons: ``(layer, index)`` pairs, a ``[k, 2]`` tensor, or a bool
            ``[layer, d_mlp]`` mask (or a mask object with ``.tensor``).
        shifts: Positive magnitudes ``v``; both ``+v`` and ``-v`` are applied (the paper uses
            0.1 to 2.0).
        metric: ``"prob"`` or ``"logprob"``.
        site: ``"post"`` or ``"pre"``.
        batch_size: Samples per batch.
        max_rows: Patched rows per forward pass.
        progress: Show a progress bar.
        use_cache: One-token rows over the clean run's keys/values (see
            [`tl_capability.attribute`][tl_capability.attribution.attribute]); ``None`` uses them
            where the model supports it and every attached hook is
            [`position_free`][tl_capability.sites.position_free]; ``True`` on a model that does
            not support them raises.

    Returns:
        [`EmpiricalNEG`][tl_capability.empirical_neg.EmpiricalNEG], samples in dataset order.
    """
    check_option(metric, Metric, "metric")
    if not shifts or any(v <= 0 for v in shifts):
        raise ValueError("shifts must be positive magnitudes")
    require_eval(model)
    resolved = neuron_site(model, site)
    require_separable_head(model)
    pairs = _as_neuron_list(neurons, resolved)
    samples = tokenize(model, dataset)
    x = torch.tensor(sorted({-v for v in shifts} | set(shifts)), dtype=torch.float32)
    use_cache = resolve_use_cache(model, use_cache)
    n_neurons, n_shifts = len(pairs), len(x)
    delta = torch.zeros(len(samples), n_neurons, n_shifts)
    n_batches = count_batches(samples, batch_size)
    for batch in tqdm(
        batches(model, samples, batch_size),
        total=n_batches,
        disable=not progress,
        desc=f"empirical NEG {dataset.name or ''}".strip(),
    ):
        acts, cache = clean_pass(model, resolved, batch, use_cache)
        device = batch.tokens.device
        n_targets = len(batch.target_row)
        with torch.no_grad():
            clean = row_metric(
                model, rows_for(batch, torch.arange(n_targets, device=device), cache), metric, []
            )
        t_idx, n_idx, s_idx = (
            v.flatten().to(device)
            for v in torch.meshgrid(
                torch.arange(n_targets),
                torch.arange(n_neurons),
                torch.arange(n_shifts),
                indexing="ij",
            )
        )
        layer_of, neuron_of = pairs[:, 0].to(device), pairs[:, 1].to(device)
        d = torch.zeros(n_targets, n_neurons, n_shifts, device=device)
        for start in range(0, len(t_idx), max_rows):
            sl = slice(start, start + max_rows)
            t, n, s = t_idx[sl], n_idx[sl], s_idx[sl]
            layer, neuron = layer_of[n], neuron_of[n]
            a = acts[t, layer, neuron]
            value = a + x.to(device)[s] * neg_direction(a)
            rows = rows_for(batch, t, cache)
            hooks = _patch_hooks(resolved, rows, layer, neuron, value)
            with torch.no_grad():
                d[t, n, s] = row_metric(model, rows, metric, hooks) - clean[t]
        per_row = torch.zeros(batch.tokens.shape[0], n_neurons, n_shifts, device=device)
        per_row.index_add_(0, batch.target_row, d)
        per_row /= batch.n_targets[:, None, None].to(per_row.dtype)
        delta[batch.sample_index.cpu()] = per_row.cpu()
    slope, r = _fit(x, delta)
    return EmpiricalNEG(pairs, x, delta, slope, r, metric)


def _patch_hooks(
    site: NeuronSite,
    rows: Rows,
    layer: Tensor,
    neuron: Tensor,
    value: Tensor,
) -> list:
    """Forward hooks that set row r's neuron ``(layer[r], neuron[r])`` to ``value[r]``."""
    seq, pos = rows.seq, rows.pos

    def patch(target_layer: int):
        def hook(act: Tensor, hook: Any) -> Tensor:
            sel = layer == target_layer
            new = act.clone()
            new[seq[sel], pos[sel], neuron[sel]] = value[sel].to(new.dtype)
            return new

        return hook

    return [(site.hook_name(lay), patch(lay)) for lay in layer.unique().tolist()]
