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
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_capability.data import Batch, CapabilityDataset, batches
from tl_capability.masks import NeuronMask
from tl_capability.options import InterventionMode, Site
from tl_capability.sites import neuron_site, require_eval, run_until


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
    """Forward hooks applying ``mode`` to the neurons of ``mask`` (one hook per layer with any):
    [`NeuronMask.hooks`][tl_capability.masks.NeuronMask.hooks] as a function.

    Raises:
        TypeError: When ``mask`` is not a [`NeuronMask`][tl_capability.masks.NeuronMask].
        ValueError: For an unknown mode or site, ``"mean"`` without ``means`` of the mask's
            shape.
    """
    if not isinstance(mask, NeuronMask):
        raise TypeError(f"expected a NeuronMask, got {type(mask).__name__}")
    return mask.hooks(
        mode, factor=factor, shift=shift, value=value, means=means, positions=positions
    )


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
