"""Teacher-forced rows: the forward (and backward) passes that attribution and NEG share.

A *row* reads one answer token: ``P(answer[m] | z_m)`` at the last position of
``z_m = prompt ⊕ answer[:m]``, the only position whose neurons are patched or differentiated.
Two ways to build rows give identical numbers:

- the general path re-runs ``z_m`` itself (any TransformerLens model);
- the cached path runs only the last token of ``z_m``, attending to the keys and values of the
  clean run (TransformerBridge over a Hugging Face decoder). Changing an activation at the last
  position changes nothing before it, so this is exact, and a row costs one token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.data import Batch
from tl_capability.sites import NeuronSite, model_device


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the final residual is captured."""


@dataclass(frozen=True)
class Rows:
    """Inputs of one forward pass whose rows each read one answer token.

    ``pos[r]`` is the position whose neurons are patched or differentiated and whose logits
    predict ``target[r]``. On the general path a row is ``z_m`` itself; on the cached path it
    is the single token at the end of ``z_m``, attending to the clean run's keys and values.
    """

    tokens: Int[Tensor, "row pos"]
    pos: Int[Tensor, " row"]
    target: Int[Tensor, " row"]
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


def general_rows(batch: Batch, targets: Tensor) -> Rows:
    """Rows holding ``z_m`` for the given targets, cut to the longest one."""
    pos = batch.target_pos[targets]
    width = int(pos.max()) + 1
    tokens = batch.tokens[batch.target_row[targets], :width]
    return Rows(tokens, pos, batch.target_token[targets])


def cached_rows(batch: Batch, cache: Any, targets: Tensor) -> Rows:
    """One-token rows that attend to the clean run's cached keys/values of ``z_m[:-1]``.

    Changing an activation at the last position of ``z_m`` changes nothing at earlier
    positions (causal attention), so their keys and values are the clean run's: this is exact,
    and each row costs one token instead of ``len(z_m)``.
    """
    from transformers import DynamicCache

    rows, pos = batch.target_row[targets], batch.target_pos[targets]
    width = int(pos.max())
    past = DynamicCache()
    for index, layer in enumerate(cache.layers):
        past.update(layer.keys[rows, :, :width], layer.values[rows, :, :width], index)
    mask = torch.arange(width + 1, device=pos.device)[None, :] < pos[:, None]
    mask[:, width] = True
    return Rows(
        batch.tokens[rows, pos][:, None],
        torch.zeros_like(pos),
        batch.target_token[targets],
        {"past_key_values": past, "attention_mask": mask.long(), "position_ids": pos[:, None]},
    )


def rows_for(batch: Batch, targets: Tensor, cache: Any = None) -> Rows:
    """Rows for ``targets`` of ``batch``: cached when the clean run left a cache, else general."""
    return general_rows(batch, targets) if cache is None else cached_rows(batch, cache, targets)


def row_metric(model: Any, rows: Rows, metric: str, fwd_hooks: list) -> Float[Tensor, " row"]:
    """``P(target | row)`` (or its log) read at ``rows.pos``, unembedding only there."""
    index = torch.arange(rows.tokens.shape[0], device=rows.tokens.device)
    if rows.forward_kwargs:
        with model.hooks(fwd_hooks=fwd_hooks):
            # Cached rows hold one token: position 0, read as a view (no gather to back-propagate).
            logits = model(rows.tokens, **rows.forward_kwargs)[:, 0]
    else:
        captured: dict[str, Tensor] = {}

        def grab(resid: Tensor, hook: Any) -> None:
            captured["resid"] = resid
            raise StopForward

        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        try:
            with model.hooks(fwd_hooks=[*fwd_hooks, (last, grab)]):
                model(rows.tokens)
        except StopForward:
            pass
        resid = captured["resid"][index, rows.pos][:, None]
        logits = model.unembed(model.ln_final(resid))[:, 0]
    logp = logits.float().log_softmax(-1).gather(1, rows.target[:, None])[:, 0]
    return logp if metric == "logprob" else logp.exp()


def clean_pass(
    model: Any, site: NeuronSite, batch: Batch, use_cache: bool
) -> tuple[Float[Tensor, "target layer d_mlp"], Any]:
    """Each target's clean activation at every layer, and the key/value cache when asked."""
    acts: list[Tensor] = [torch.empty(0)] * site.n_layers

    def grab(layer: int):
        def hook(act: Tensor, hook: Any) -> None:
            acts[layer] = act[batch.target_row, batch.target_pos].detach().float()

        return hook

    fwd = [(site.hook_name(layer), grab(layer)) for layer in range(site.n_layers)]
    cache = None
    with torch.no_grad():
        if use_cache:
            with model.hooks(fwd_hooks=fwd):
                _, cache = model(batch.tokens, use_cache=True, return_type="logits_and_cache")
        else:
            last = f"blocks.{site.n_layers - 1}.hook_resid_post"

            def stop(resid: Tensor, hook: Any) -> None:
                raise StopForward

            try:
                with model.hooks(fwd_hooks=[*fwd, (last, stop)]):
                    model(batch.tokens)
            except StopForward:
                pass
    return torch.stack(acts, dim=1), cache


def supports_kv_cache(model: Any) -> bool:
    """Whether ``model`` takes the fast, exact cached path (a bridge over a Hugging Face
    decoder whose cache is a ``DynamicCache``); other models take the general path."""
    if not hasattr(model, "original_model") or getattr(model.cfg, "is_encoder_decoder", False):
        return False
    try:
        with torch.no_grad():
            out = model(
                torch.zeros(1, 2, dtype=torch.long, device=model_device(model)),
                use_cache=True,
                return_type="logits_and_cache",
            )
    except (TypeError, ValueError, NotImplementedError, RuntimeError, AttributeError):
        return False
    cache = out[1] if isinstance(out, tuple) else None
    return type(cache).__name__ == "DynamicCache" and hasattr(cache, "layers")


def row_gradients(
    model: Any,
    site: NeuronSite,
    rows: Rows,
    metric: str,
    patch_layer: Int[Tensor, " row"] | None = None,
    patch_value: Float[Tensor, "row d_mlp"] | None = None,
) -> Float[Tensor, "row layer d_mlp"]:
    """Gradient of each row's metric w.r.t. the neurons at ``rows.pos``, for every layer.

    With ``patch_layer``/``patch_value``, row ``r``'s activation at ``(patch_layer[r], pos[r])``
    is replaced by ``patch_value[r]`` first, so its gradient there is taken at that point.
    """
    outputs: list[Tensor | None] = [None] * site.n_layers
    index = torch.arange(rows.tokens.shape[0], device=rows.tokens.device)
    pos = rows.pos

    def capture(layer: int):
        def hook(act: Tensor, hook: Any) -> Tensor:
            new = act.clone()
            if patch_layer is not None:
                sel = patch_layer == layer
                if sel.any():
                    new[index[sel], pos[sel]] = patch_value[sel].to(new.dtype)
            if not new.requires_grad:  # frozen parameters: start the graph here
                new.requires_grad_(True)
            outputs[layer] = new
            return new

        return hook

    fwd = [(site.hook_name(layer), capture(layer)) for layer in range(site.n_layers)]
    with torch.enable_grad():
        value = row_metric(model, rows, metric, fwd)
        grads = torch.autograd.grad(value.sum(), outputs, allow_unused=True)
    out = [
        torch.zeros(len(index), site.d_mlp, device=index.device)
        if g is None
        else (g[:, 0] if rows.forward_kwargs else g[index, pos])
        for g in grads
    ]
    return torch.stack(out, dim=1).float()
