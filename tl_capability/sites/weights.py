"""The head and the MLP weights: ``ln_final``, the unembedding and what the forward pass does to
the logits after it ([`logit_transform`][tl_capability.sites.logit_transform]); ``W_out`` and the
MLP parameters that edits change. Part of [`tl_capability.sites`][tl_capability.sites]."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability.sites.names import model_device


def final_norm(model: Any, resid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_model"]:
    """``ln_final`` applied to one residual vector per row."""
    return model.ln_final(resid[:, None])[:, 0]


def unembed(model: Any, x: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    """The logits of one unembedding input per row, after the model's
    [`logit_transform`][tl_capability.sites.logit_transform] if it has one."""
    logits = model.unembed(x[:, None])[:, 0]
    transform = logit_transform(model)
    return logits if transform is None else transform(logits)


_PROBE_LOGITS = torch.linspace(-40.0, 40.0, 81)
_TRANSFORMS: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()


def logit_transform(model: Any) -> Callable[[Tensor], Tensor] | None:
    """What the model's forward pass does to its logits after the unembedding (Gemma 2's
    soft-cap ``s·tanh(z/s)``; Granite's, Cohere's or Falcon-H1's scaling), as a function of
    ``[..., vocab]`` logits, or ``None`` when nothing.

    The bridge names it per architecture (``adapter.apply_output_logits_transform``, what its
    own logit lens applies); a ``HookedTransformer`` has only ``cfg.output_logits_soft_cap``.
    """
    transform = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
    if callable(transform):
        # Whether it is the identity, probed once per model (it is called once per pass).
        known = _TRANSFORMS.get(model)
        if known is None:
            probe = _PROBE_LOGITS.to(model_device(model))
            out = transform(probe)
            known = _TRANSFORMS[model] = not (out is probe or torch.equal(out, probe))
        return transform if known else None
    cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", None)
    if isinstance(cap, int | float) and cap > 0:
        return lambda z: cap * torch.tanh(z / cap)
    return None


def unembedding(
    model: Any,
) -> tuple[Float[Tensor, "d_model vocab"], Float[Tensor, " vocab"] | None]:
    """The unembedding's weights ``W_U`` and bias ``b_U`` (``None`` for a model without one)."""
    w_u = model.W_U if hasattr(model, "W_U") else model.unembed.W_U
    return w_u, getattr(model, "b_U", None)


def mlp_w_out(model: Any, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of ``layer``'s MLP: row ``j`` is what neuron ``j`` writes (its value slot).

    ``model.blocks[layer].mlp.W_out`` is a view of the parameter on both TransformerLens
    generations, so writing to it sticks; the stacked ``model.W_out`` is a copy.

    Raises:
        ValueError: When its shape is not ``[d_mlp, d_model]``.
    """
    w = model.blocks[layer].mlp.W_out
    if w.shape[0] != model.cfg.d_mlp:
        raise ValueError(
            f"blocks.{layer}.mlp.W_out has shape {tuple(w.shape)}, expected "
            f"[d_mlp={model.cfg.d_mlp}, d_model]"
        )
    return w


def mlp_parameters(model: Any, layer: int) -> Iterator[torch.nn.Parameter]:
    """Every parameter of ``layer``'s MLP (``W_in``, ``b_in``, ``W_gate``, ``W_out``, ...)."""
    return model.blocks[layer].mlp.parameters()
