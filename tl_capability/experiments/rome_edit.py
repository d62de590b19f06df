"""A simplified ROME rank-one edit of one MLP's ``W_out`` (Meng et al., NeurIPS 2022), with an
exact undo.

ROME treats an MLP's output weights as a linear key–value memory: the neurons' activation at
the subject's last token (``hook_post``, what ``W_out`` reads; for gated MLPs the input of
``down_proj``) is the key ``k``, the MLP's output there the value. To make the model say a new
object it finds the value change ``δ`` (added to the MLP's output at that position) that raises
``log P(new object)`` on the request prompt, then writes it into the weights with a rank-one
update that maps ``k`` to ``k·W_out + δ``.

What [`rome_edit`][tl_capability.experiments.rome_edit.rome_edit] does, and how that differs
from ROME's full method:

- ``W_out ← W_out + k δᵀ / (kᵀk)``: the least-norm rank-one update with ``k ↦ k·W_out + δ``
  exactly. ROME uses ``C⁻¹k`` instead of ``k``, with ``C`` the uncentred covariance of keys
  estimated on Wikipedia text, so that other keys move as little as possible; here ``C = I``.
- The key is read from the request prompt alone; ROME averages it over the subject in a few
  dozen random text prefixes.
- ``δ`` is optimised with ``steps`` Adam steps on the teacher-forced negative log-likelihood of
  the new object on the request prompt, its norm clamped to ``clamp`` times the original
  value's; ROME adds a KL term on "{subject} is a" prompts, weight decay and random prefixes.

The edit goes through ``sites.mlp_w_out(model, layer)`` (a view of the parameter, see
[`tl_capability.edits`][tl_capability.edits]) and returns an
[`EditHandle`][tl_capability.edits.EditHandle] whose ``undo`` restores the weight bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.utilities import get_act_name

from tl_capability._answer_head import answer_logits
from tl_capability.data import CapabilityDataset, tokenize
from tl_capability.edits import EditHandle, _register
from tl_capability.sites import mlp_w_out, model_device, neuron_hook_name, require_eval, run_until
from tl_capability.tracing import subject_ranges


@dataclass(frozen=True)
class RomeEdit:
    """What [`rome_edit`][tl_capability.experiments.rome_edit.rome_edit] wrote.

    Attributes:
        layer: The MLP edited.
        position: The token position of the key (the request's last subject token, BOS
            counted).
        key: ``k``: the neurons' activation there, ``[d_mlp]``.
        delta: ``δ``: the MLP output change the edit writes for ``k``, ``[d_model]``.
        loss: The new object's mean negative log-likelihood on the request, before and after
            the optimisation of ``δ`` (with ``δ`` added by a hook, not yet in the weights).
    """

    layer: int
    position: int
    key: Tensor
    delta: Tensor
    loss: tuple[float, float]


def _teacher_forced(model: Any, prompt: tuple[int, ...], answer: tuple[int, ...]) -> tuple:
    tokens = torch.tensor([list(prompt) + list(answer[:-1])], device=model_device(model))
    pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(answer), device=tokens.device)
    target = torch.tensor(answer, device=tokens.device)
    return tokens, pos, target


def compute_rome_edit(
    model: Any,
    request: CapabilityDataset,
    layer: int,
    *,
    steps: int = 20,
    lr: float = 0.5,
    clamp: float = 4.0,
) -> RomeEdit:
    """The key and value change of a rank-one edit (nothing is written to the model).

    Args:
        model: The model, in eval mode.
        request: One sample: the prompt, the **new** object as its answer, and its subject.
        layer: The MLP to edit.
        steps: Adam steps on ``δ``.
        lr: Their learning rate.
        clamp: ``‖δ‖`` is kept at most ``clamp`` times the norm of the MLP's original output
            at the key's position.

    Raises:
        ValueError: For a model in training mode, a request of more or fewer than one sample,
            without subject, or whose subject is not in its prompt.
    """
    require_eval(model)
    if len(request) != 1:
        raise ValueError(f"a ROME edit takes one request prompt, got {len(request)}")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range for {model.cfg.n_layers} layers")
    position = subject_ranges(model, request)[0][1] - 1
    sample = tokenize(model, request)[0]
    tokens, pos, target = _teacher_forced(model, sample.prompt, sample.answer)
    with torch.no_grad():
        key = run_until(model, neuron_hook_name(layer, "post"), tokens, [])[0, position]
        old = run_until(model, get_act_name("mlp_out", layer), tokens, [])[0, position]
    key, limit = key.detach().float(), clamp * float(old.float().norm())
    delta = torch.zeros(model.cfg.d_model, device=tokens.device, requires_grad=True)

    def add(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        x[:, position] = x[:, position] + delta.to(x.dtype)
        return x

    hooks = [(get_act_name("mlp_out", layer), add)]
    rows = torch.zeros_like(pos)
    opt = torch.optim.Adam([delta], lr=lr)
    losses = []
    with torch.enable_grad():
        for step in range(steps + 1):
            logits = answer_logits(model, tokens, rows, pos, hooks).float()
            loss = torch.nn.functional.cross_entropy(logits, target)
            losses.append(float(loss.detach()))
            if step == steps:
                break
            (grad,) = torch.autograd.grad(loss, [delta])
            delta.grad = grad
            opt.step()
            with torch.no_grad():
                norm = float(delta.norm())
                if norm > limit > 0:
                    delta.mul_(limit / norm)
    return RomeEdit(layer, position, key, delta.detach(), (losses[0], losses[-1]))


def apply_rome_edit(model: Any, edit: RomeEdit) -> EditHandle:
    """Writes ``W_out ← W_out + k δᵀ / (kᵀk)`` into ``edit.layer``'s MLP.

    Returns:
        The handle whose ``undo`` restores ``W_out`` bit for bit.

    Raises:
        ValueError: For a model in training mode or a zero key.
    """
    require_eval(model)
    key = edit.key
    norm2 = float(key @ key)
    if norm2 == 0:
        raise ValueError(f"the key at layer {edit.layer} is zero: no rank-one edit maps it")
    w = mlp_w_out(model, edit.layer)
    handle = EditHandle(f"rank-one edit of layer {edit.layer}'s MLP output weights")
    with torch.no_grad():
        index = torch.arange(w.shape[0], device=w.device)
        handle.saved.append((w, index, w[index].clone()))
        update = torch.outer(key.to(w.device), edit.delta.to(w.device)) / norm2
        w[index] = (w[index].float() + update).to(w.dtype)
    return _register(model, handle)


def rome_edit(
    model: Any,
    request: CapabilityDataset,
    layer: int,
    *,
    steps: int = 20,
    lr: float = 0.5,
    clamp: float = 4.0,
) -> tuple[EditHandle, RomeEdit]:
    """Computes (see [`compute_rome_edit`][tl_capability.experiments.rome_edit.compute_rome_edit])
    and applies a rank-one edit that makes ``request``'s prompt answer ``request``'s answer.

    Returns:
        The handle (``undo`` restores the weights bit for bit; also a context manager) and
        the edit.
    """
    edit = compute_rome_edit(model, request, layer, steps=steps, lr=lr, clamp=clamp)
    return apply_rome_edit(model, edit), edit
