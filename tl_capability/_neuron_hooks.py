"""The forward hooks that apply an intervention to a set of neurons (private): what
[`NeuronMask.hooks`][tl_capability.masks.NeuronMask.hooks] returns. Below both ``masks`` and
``interventions``: it needs only the options and the model surface (``sites``), so that
``masks`` imports nothing of ``interventions``.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_capability.options import InterventionMode, Site, check_option
from tl_capability.sites import neuron_hook_name, position_free


def neuron_hooks(
    tensor: Bool[Tensor, "layer d_mlp"],
    site: Site,
    mode: InterventionMode = "zero",
    *,
    factor: float = 2.0,
    shift: float = 1.0,
    value: float = 0.0,
    means: Float[Tensor, "layer d_mlp"] | None = None,
    positions: Bool[Tensor, "batch pos"] | None = None,
) -> list[tuple[str, Any]]:
    """Forward hooks applying ``mode`` to the neurons ``tensor`` marks at ``site`` (one hook
    per layer with any). Each hook refuses activations of another width than the mask's
    before it indexes them (a mask made for another model).

    Raises:
        ValueError: For an unknown mode or site, ``"mean"`` without ``means`` of the mask's
            shape.
    """
    check_option(mode, InterventionMode, "mode")
    check_option(site, Site, "the mask's site")
    if mode == "mean":
        if means is None:
            raise ValueError("mode='mean' needs means=mean_activations(model, dataset)")
        if tuple(means.shape) != tuple(tensor.shape):
            raise ValueError(
                f"means of shape {tuple(means.shape)} for a mask of shape {tuple(tensor.shape)}"
            )
    out = []
    for layer in range(tensor.shape[0]):
        index = tensor[layer].nonzero()[:, 0]
        if len(index):
            layer_means = None if means is None else means[layer, index]
            fn = _make_hook(index, tensor.shape, mode, factor, shift, value, layer_means, positions)
            out.append((neuron_hook_name(layer, site), fn))
    return out


def _make_hook(
    index: Tensor,
    shape: tuple[int, ...],
    mode: InterventionMode,
    factor: float,
    shift: float,
    value: float,
    means: Tensor | None,
    positions: Tensor | None,
) -> Any:
    def hook(act: Tensor, hook: Any) -> Tensor:
        if act.shape[-1] != shape[1]:
            raise ValueError(
                f"a mask for {shape[0]} layers of {shape[1]} neurons hooked on {hook.name} "
                f"of {act.shape[-1]} neurons: the mask was made for another model"
            )
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
