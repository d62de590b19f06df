"""Weight edits on located neurons, each with an exact undo, and masked fine-tuning.

A neuron ``j`` of layer ``l`` writes ``a_j · W_out[l][j]`` into the residual stream: row ``j`` of
``W_out`` is its *value slot*. Edits change those rows in place and return an
[`EditHandle`][tl_capability.edits.EditHandle] whose [`undo`][tl_capability.edits.EditHandle.undo]
restores every touched weight bit-exactly; handles are also context managers. Edits of one model are
undone last-made first: an out-of-order undo is refused
([`EditHandle.undo`][tl_capability.edits.EditHandle.undo]).

- [`erase_weights`][tl_capability.edits.erase_weights]: zero the value slots — a permanent version
  of zero ablation.
- [`edit_knowledge`][tl_capability.edits.edit_knowledge]: Dai et al.'s fact edit,
  ``w ← w − λ1·e(old) + λ2·e(new)``, where ``e(t)`` is the **unembedding** direction of the answer's
  first token (``W_U[:, t]``, the direction the residual stream must point to for the model to say
  ``t``; earlier tools used the input embedding), and each ``λ`` is scaled by ``‖w‖/‖e‖`` so the
  edit has the slot's size.
- [`finetune_neurons`][tl_capability.edits.finetune_neurons]: train only the masked neurons'
  parameters (CNL's enhancement).

Edits go through ``model.blocks[l].mlp.W_out`` (and ``W_in``, ``b_in``, ``W_gate``), which are
views of the underlying parameters on both TransformerLens generations, so they stick; the
stacked ``model.W_out`` is a copy and is never written. [`tl_capability.sites`][tl_capability.sites]
reads them ([`mlp_w_out`][tl_capability.sites.mlp_w_out],
[`mlp_parameters`][tl_capability.sites.mlp_parameters],
[`unembedding`][tl_capability.sites.unembedding]).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability._answer_head import answer_logits
from tl_capability.data import CapabilityDataset, batches, model_tokenizer, tokenize
from tl_capability.masks import NeuronMask
from tl_capability.sites import (
    mlp_parameters,
    mlp_w_out,
    neuron_site,
    require_eval,
    unembedding,
)


@dataclass
class EditHandle:
    """Undo information of one weight edit.

    Edits of one model are undone in reverse order (last made, first undone): a later edit
    may have saved rows that an earlier one changed, so undoing the earlier one first would
    leave them wrong. [`undo`][tl_capability.edits.EditHandle.undo] refuses an out-of-order undo and
    changes nothing.

    Attributes:
        description: What the edit did.
        saved: ``(tensor_view, index, original_rows)`` for every touched weight.
        active: Whether the edit is still in the weights.
        live: The model's live edits, oldest first (one list shared by all its handles).
    """

    description: str
    saved: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)
    active: bool = True
    live: list[EditHandle] | None = field(default=None, repr=False, compare=False)

    def undo(self) -> None:
        """Restores every weight the edit touched, bit-exactly.

        Raises:
            RuntimeError: When the edit was already undone.
            ValueError: When a later edit of the same model is still live (naming it): undo
                that one first.
        """
        if not self.active:
            raise RuntimeError(f"edit already undone: {self.description}")
        live = self.live if self.live is not None else [self]
        position = next((i for i, h in enumerate(live) if h is self), None)
        later = live[position + 1 :] if position is not None else []
        if later:
            names = ", ".join(repr(h.description) for h in reversed(later))
            raise ValueError(
                f"undo {names} first: edits of a model are undone in reverse order, and "
                f"{self.description!r} came before"
            )
        with torch.no_grad():
            for view, index, original in reversed(self.saved):
                view[index] = original
        self.active = False
        if position is not None and self.live is not None:
            del self.live[position]

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.undo()


_LIVE_EDITS: weakref.WeakKeyDictionary[Any, list[EditHandle]] = weakref.WeakKeyDictionary()
"""Each model's live edits, oldest first."""


def _register(model: Any, handle: EditHandle) -> EditHandle:
    """Puts ``handle`` on top of the model's live edits."""
    live = _LIVE_EDITS.setdefault(model, [])
    handle.live = live
    live.append(handle)
    return handle


def _check(model: Any, mask: NeuronMask) -> None:
    require_eval(model)
    site = neuron_site(model, "post", check_width=False)
    mask.check_fits(site.n_layers, site.d_mlp)
    if mask.site != "post":
        raise ValueError(
            "weight edits act on the neurons the MLP's output weights read: use a mask of site "
            "'post'"
        )


def erase_weights(model: Any, mask: NeuronMask) -> EditHandle:
    """Zeroes the value slots (rows of ``W_out``) of the mask's neurons.

    Equivalent to zero-ablating them at every position (``ablate(model, mask)``), permanently
    until [`EditHandle.undo`][tl_capability.edits.EditHandle.undo].

    Raises:
        ValueError: For a model in training mode, or a mask of another shape or site.
    """
    _check(model, mask)
    handle = EditHandle(f"erase {len(mask)} neurons")
    with torch.no_grad():
        for layer in range(mask.n_layers):
            index = mask.tensor[layer].nonzero()[:, 0]
            if len(index):
                w = mlp_w_out(model, layer)
                idx = index.to(w.device)
                handle.saved.append((w, idx, w[idx].clone()))
                w[idx] = 0
    return _register(model, handle)


def _first_token(model: Any, text: str) -> int:
    ids = model_tokenizer(model)(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} tokenizes to no tokens")
    return ids[0]


def edit_knowledge(
    model: Any,
    mask: NeuronMask,
    old_answer: str,
    new_answer: str,
    *,
    lambda_old: float = 1.0,
    lambda_new: float = 8.0,
) -> EditHandle:
    """Rewrites a fact in the value slots of its knowledge neurons (Dai et al., ACL 2022).

    For each neuron's slot ``w``: ``w ← w − λ_old·‖w‖/‖e_old‖·e_old + λ_new·‖w‖/‖e_new‖·e_new``,
    with ``e`` the unembedding column of the answer's first token (answers are tokenized alone,
    as datasets write them, e.g. ``" Paris"``). The λ defaults are Dai et al.'s (1 and 8).

    Raises:
        ValueError: For a model in training mode, a mask of another shape or site, or an
            answer that tokenizes to nothing.
    """
    _check(model, mask)
    w_u, _ = unembedding(model)
    e_old = w_u[:, _first_token(model, old_answer)].detach().float()
    e_new = w_u[:, _first_token(model, new_answer)].detach().float()
    handle = EditHandle(f"edit {old_answer!r} -> {new_answer!r} in {len(mask)} neurons")
    with torch.no_grad():
        for layer in range(mask.n_layers):
            index = mask.tensor[layer].nonzero()[:, 0]
            if not len(index):
                continue
            w = mlp_w_out(model, layer)
            idx = index.to(w.device)
            rows = w[idx].float()
            norms = rows.norm(dim=1, keepdim=True)
            delta = (lambda_new * norms / e_new.norm()) * e_new.to(w.device) - (
                lambda_old * norms / e_old.norm()
            ) * e_old.to(w.device)
            handle.saved.append((w, idx, w[idx].clone()))
            w[idx] = (rows + delta).to(w.dtype)
    return _register(model, handle)


def _neuron_parameters(model: Any, mask: NeuronMask) -> list[tuple[Tensor, Tensor]]:
    """``(parameter, gradient mask)`` for every MLP parameter that holds per-neuron weights.

    A parameter belongs to neuron ``j`` along its single axis of size ``d_mlp`` (``W_in``
    columns, ``b_in``, ``W_gate`` columns, ``W_out`` rows in whatever layout the model stores
    them); parameters without such an axis (``b_out``) are not trained.
    """
    d_mlp, d_model = model.cfg.d_mlp, model.cfg.d_model
    if d_mlp == d_model:
        raise ValueError("d_mlp == d_model: cannot tell neuron axes from model axes")
    out = []
    for layer in range(mask.n_layers):
        keep = mask.tensor[layer]
        for p in mlp_parameters(model, layer):
            axes = [i for i, size in enumerate(p.shape) if size == d_mlp]
            if len(axes) != 1:
                continue
            shape = [1] * p.dim()
            shape[axes[0]] = d_mlp
            out.append((p, keep.view(shape).expand_as(p).to(p.device)))
    return out


def finetune_neurons(
    model: Any,
    mask: NeuronMask,
    dataset: CapabilityDataset,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Trains only the parameters of the mask's neurons on the dataset's answers.

    Cross-entropy on every answer token (teacher forced), Adam without weight decay, gradients
    of every other entry zeroed, and those entries restored after each step so that they stay
    bit-identical. The model is left in eval mode.

    Returns:
        The mean loss of every step, in order.
    """
    _check(model, mask)
    params = _neuron_parameters(model, mask)
    if not params:
        raise ValueError("found no MLP parameter with a d_mlp axis to train")
    frozen = {id(p): p.requires_grad for p in model.parameters()}
    originals = [(p, m, p.detach().clone()) for p, m in params]
    samples = tokenize(model, dataset)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p, _ in params], lr=lr, weight_decay=0.0)
    losses: list[float] = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p, _ in params:
            p.requires_grad_(True)
        for _ in tqdm(range(epochs), disable=not progress, desc="finetune"):
            order = torch.randperm(len(samples), generator=gen).tolist()
            shuffled = [samples[i] for i in order]
            for batch in batches(model, shuffled, batch_size, sort_by_length=False):
                logits = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos)
                loss = torch.nn.functional.cross_entropy(logits.float(), batch.target_token)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p, m in params:
                    if p.grad is not None:
                        p.grad.mul_(m)
                opt.step()
                with torch.no_grad():
                    for p, m, orig in originals:
                        p.copy_(torch.where(m, p, orig))
                losses.append(loss.item())
    finally:
        for p in model.parameters():
            p.requires_grad_(frozen[id(p)])
            p.grad = None
        model.eval()
    return losses
