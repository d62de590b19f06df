"""The probes behind all-position attribution's fast paths, each kept per model until its hooks
change.

- A batch that grows inside the forward pass: rows of ``width`` positions share the layers
  below the scaled one where the model is causal and, on a bridge, runs a batch grown under one
  broadcast 4-D causal mask as it runs the batch itself
  ([`expands`][tl_capability.attribution._all_position_probes.expands]).
- The last block's MLP run at the positions the rows read only
  ([`ReadsOnly`][tl_capability.attribution._all_position_probes.ReadsOnly],
  [`packed_last_mlp`][tl_capability.attribution._all_position_probes.packed_last_mlp]).
"""

from __future__ import annotations

import warnings
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from tl_capability._answer_head import final_residual
from tl_capability.sites import (
    ProbeMemo,
    attention_window,
    hooks_are_position_free,
    is_bridge,
    is_masked_lm,
    kept_until_hooks_change,
    mlp_io_hook_names,
    model_device,
    probe_tolerance,
    resid_pre_hook_name,
    unembedding,
)


def expands(model: Any, width: int) -> bool:
    """Whether rows of ``width`` positions can share the layers below the scaled one: a causal
    model, and on a bridge one whose batch may grow inside the forward pass under one broadcast
    causal mask ([`batch_grows`][tl_capability.attribution._all_position_probes.batch_grows], kept
    per model until its hooks change) with no attention window narrower than the rows: an explicit
    4-D mask replaces the model's own, sliding window included
    ([`attention_window`][tl_capability.sites.attention_window])."""
    if is_masked_lm(model):
        return False
    if not is_bridge(model):
        return True
    window = attention_window(model)
    if window is not None and width > window:
        return False
    return kept_until_hooks_change(_GROWS, model, None, lambda: batch_grows(model))


_GROWS: ProbeMemo = WeakKeyDictionary()


def batch_grows(model: Any) -> bool:
    """Two prompts run as the model runs them, and again with a copy of the first appended
    before the first block under
    [`causal_mask`][tl_capability.attribution._all_position_probes.causal_mask]: the grown batch
    must give the same last residuals. Some attentions refuse a mask whose batch is not theirs (XGLM
    checks its shape, Bloom builds ALiBi from a 2-D mask): then a warning, and rows re-run the
    prompt."""
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
                **causal_mask(model, tokens.shape[1], device),
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


def causal_mask(model: Any, width: int, device: torch.device) -> dict[str, Any]:
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


class ReadsOnly:
    """Hooks that run the last block's MLP only where it is read: at the positions the rows
    read (and at every position of the batch's first ``whole`` sequences, whose activations
    there are kept).

    A row's metric reads the last block's output at its answer positions only, and the MLP is
    the last thing a block does (its output is added to the residual there), so the MLP at any
    other position of a row feeds nothing that is read: its input is packed to the read
    positions, ``[whole·pos + reads, 1, d_model]``, and its output scattered back (zeros
    elsewhere). The MLP is two thirds of a block's multiply-adds, and the last block the one
    every row runs. Used where
    [`packed_last_mlp`][tl_capability.attribution._all_position_probes.packed_last_mlp] holds.
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


def packed_last_mlp(model: Any) -> tuple[str, str] | None:
    """The last MLP's hook points where rows may run it at their read positions only
    ([`ReadsOnly`][tl_capability.attribution._all_position_probes.ReadsOnly]): a bridge whose MLP
    module has input and output hook points, every hook attached to the model position-free (a hook
    on the last MLP sees the packed positions), and, checked once per model until its hooks
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
    packed = ReadsOnly(names, 1, *last)
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
