"""Interventions on a set of neurons, as TransformerLens forward hooks.

``mask.hooks(mode)`` returns ``(hook_name, fn)`` pairs that go wherever TransformerLens takes
hooks — ``model.hooks(fwd_hooks=...)``, ``run_with_hooks``, ``run_with_cache`` — next to the
user's own. [`ablate`][tl_capability.interventions.ablate] is the context manager most code wants:
it checks that the mask fits the model, attaches the hooks, and removes exactly them on exit, also
after an exception.

Modes (``a`` is the neuron's activation):

- ``"zero"``: ``a ← 0`` (suppression, Dai et al.; erasure, Huang et al.)
- ``"scale"``: ``a ← factor · a`` (amplification: ``factor=2``, Dai et al.)
- ``"mean"``: ``a ← mean`` over a reference dataset
  ([`mean_activations`][tl_capability.interventions.mean_activations])
- ``"add"``: ``a ← a + shift · sign(a)`` (the NEG intervention, Zhao et al.)
- ``"value"``: ``a ← value``

By default every position is changed (the erasure the papers evaluate, and what generation
needs); ``positions`` restricts the change to a boolean ``[batch, pos]`` selection, e.g. the
positions that predict answer tokens
([`answer_positions`][tl_capability.interventions.answer_positions]).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, get_args

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_capability.data import Batch, CapabilityDataset, batches
from tl_capability.options import InterventionMode, Site, check_option
from tl_capability.sites import (
    neuron_hook_name,
    neuron_site,
    position_free,
    require_eval,
    run_until,
)

if TYPE_CHECKING:
    from tl_capability.masks import NeuronMask

MODES = get_args(InterventionMode)


def answer_positions(batch: Batch) -> Bool[Tensor, "batch pos"]:
    """The positions of a batch whose logits predict an answer token."""
    out = torch.zeros_like(batch.mask)
    out[batch.target_row, batch.target_pos] = True
    return out


def mask_hooks(
    mask: NeuronMask,
    mode: InterventionMode = "zero",
    *,
    factor: float = 2.0,
    shift: float = 1.0,
    value: float = 0.0,
    means: Float[Tensor, "layer d_mlp"] | None = None,
    positions: Bool[Tensor, "batch pos"] | None = None,
) -> list[tuple[str, Any]]:
    """Forward hooks applying ``mode`` to the neurons of ``mask`` (one hook per layer with any).

    Raises:
        ValueError: For an unknown mode or site, ``"mean"`` without ``means`` of the mask's
            shape.
    """
    check_option(mode, InterventionMode, "mode")
    check_option(mask.site, Site, "the mask's site")
    if mode == "mean":
        if means is None:
            raise ValueError("mode='mean' needs means=mean_activations(model, dataset)")
        if tuple(means.shape) != tuple(mask.tensor.shape):
            raise ValueError(
                f"means of shape {tuple(means.shape)} for a mask of shape "
                f"{tuple(mask.tensor.shape)}"
            )
    out = []
    for layer in range(mask.n_layers):
        index = mask.tensor[layer].nonzero()[:, 0]
        if len(index):
            layer_means = None if means is None else means[layer, index]
            fn = _make_hook(index, mode, factor, shift, value, layer_means, positions)
            out.append((neuron_hook_name(layer, mask.site), fn))
    return out


def _make_hook(
    index: Tensor,
    mode: InterventionMode,
    factor: float,
    shift: float,
    value: float,
    means: Tensor | None,
    positions: Tensor | None,
) -> Any:
    def hook(act: Tensor, hook: Any) -> Tensor:
        idx = index.to(act.device)
        old = act[..., idx]
        if mode == "zero":
            new = torch.zeros_like(old)
        elif mode == "scale":
            new = old * factor
        elif mode == "mean":
            new = means.to(act.device, act.dtype).expand_as(old)
        elif mode == "add":
            new = old + shift * torch.where(old < 0, -1.0, 1.0).to(old.dtype)
        else:
            new = torch.full_like(old, value)
        if positions is not None:
            if tuple(positions.shape) != tuple(act.shape[:2]):
                raise ValueError(
                    f"positions of shape {tuple(positions.shape)} for "
                    f"activations of shape {tuple(act.shape[:2])}"
                )
            new = torch.where(positions.to(act.device)[..., None], new, old)
        # Clone, edit, return: editing in place breaks points that also carry backward hooks.
        act = act.clone()
        act[..., idx] = new
        return act

    return hook if positions is not None else position_free(hook)


@contextmanager
def ablate(
    model: Any, mask: NeuronMask, mode: InterventionMode = "zero", **kwargs: Any
) -> Iterator[Any]:
    """Applies an intervention to the mask's neurons inside a ``with`` block.

    Example:
        >>> with ablate(model, mask):                 # zero the neurons everywhere
        ...     acc = accuracy(model, data)
        >>> with ablate(model, mask, "scale", factor=2.0):
        ...     logits = model(tokens)

    Args:
        model: A TransformerLens model.
        mask: The neurons; must fit the model's shape and site.
        mode: See the module docstring; keyword arguments go to
            [`NeuronMask.hooks`][tl_capability.masks.NeuronMask.hooks].

    Raises:
        ValueError: For a model in training mode, a mask from a model of another shape, or bad
            intervention arguments.
    """
    require_eval(model)
    site = neuron_site(model, mask.site, check_width=False)
    mask.check_fits(site.n_layers, site.d_mlp, mask.site)
    hooks = mask.hooks(mode, **kwargs)
    with model.hooks(fwd_hooks=hooks):
        yield model


def mean_activations(
    model: Any, dataset: CapabilityDataset, site: Site = "post", batch_size: int = 32
) -> Float[Tensor, "layer d_mlp"]:
    """Mean activation of every neuron over all real (non-padding) positions of a dataset,
    for ``mode="mean"``.

    Raises:
        ValueError: For a model in training mode or an unknown site.
    """
    require_eval(model)
    resolved = neuron_site(model, site)
    total = torch.zeros(resolved.n_layers, resolved.d_mlp, dtype=torch.float64)
    count = 0

    def add(layer: int, keep: Tensor):
        def hook(act: Tensor, hook: Any) -> None:
            total[layer] += act[keep].double().sum(0).cpu()

        return hook

    with torch.no_grad():
        for batch in batches(model, dataset, batch_size):
            fwd = [
                (resolved.hook_name(layer), add(layer, batch.mask))
                for layer in range(resolved.n_layers)
            ]
            # Stops after the last layer's hook: the unembedding is not needed.
            run_until(model, resolved.hook_name(resolved.n_layers - 1), batch.tokens, fwd)
            count += int(batch.mask.sum())
    return (total / count).float()
