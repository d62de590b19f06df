"""The knowledge-circuit graph and the passes that score and patch its edges (private: the public
API is [`tl_capability.circuits`][tl_capability.circuits]).

Parents (node outputs) are indexed ``input, a0.h0 … a0.h{H-1}, m0, a1.h0, …``; children (node
inputs) per layer ``q`` of every head, ``k`` and ``v`` of every key/value head, the MLP, then
``logits``. A child's parents are a prefix of the parents (everything computed before it), so the
valid edges of child ``c`` are the parents ``< upstream[c]``.

What the passes read of TransformerLens (3.x ``HookedTransformer`` or 4.x ``TransformerBridge``):
``use_split_qkv_input`` (``blocks.{l}.hook_q_input`` / ``hook_k_input`` / ``hook_v_input``,
``[batch, pos, head, d_model]`` copies of the residual *before* the block's first norm, one per
query head and one per key/value head), ``use_hook_mlp_in`` (``blocks.{l}.hook_mlp_in``, the
residual the MLP branch reads, before its norm), ``blocks.{l}.attn.hook_z`` with the block's
``attn.W_O`` (a head's output is ``z[..., h, :] @ W_O[h]``; the output bias ``b_O`` is the same on
every run, so it belongs to no node and cancels in every difference), ``blocks.{l}.hook_mlp_out``,
``blocks.0.hook_resid_pre`` (the input node: token and position embeddings) and the last block's
``hook_resid_post`` (the logits' input, before the final norm).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.utilities import get_act_name

from tl_capability.sites import block_modules, final_resid_hook_name, resid_pre_hook_name

NEEDS = (
    "knowledge circuits need per-head inputs and outputs from TransformerLens: split q/k/v "
    "inputs (model.set_use_split_qkv_input(True): blocks.{l}.hook_q_input / hook_k_input / "
    "hook_v_input, one residual copy per head), blocks.{l}.hook_mlp_in "
    "(model.set_use_hook_mlp_in(True)) and per-head outputs (blocks.{l}.attn.hook_z with "
    "attn.W_O). TransformerLens 3.x HookedTransformer has them; on 4.x they exist for bridges "
    "of Hugging Face models whose attention is a JointQKV or PositionEmbeddings bridge (GPT-2, "
    "Llama, Mistral, Qwen2, NeoX, ...), not for boot_native models"
)


@dataclass(frozen=True)
class Graph:
    """The node and edge layout of a model: ``n_layers`` blocks of ``n_heads`` heads (``n_kv_heads``
    key/value heads) and one MLP; ``parallel``: attention and MLP read the same residual."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool = False

    @classmethod
    def of(cls, model: Any) -> Graph:
        cfg = model.cfg
        heads = int(cfg.n_heads)
        kv = int(getattr(cfg, "n_key_value_heads", None) or heads)
        return cls(int(cfg.n_layers), heads, kv, bool(getattr(cfg, "parallel_attn_mlp", False)))

    # parents
    @property
    def n_parents(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def head(self, layer: int, head: int = 0) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp(self, layer: int) -> int:
        return self.head(layer, self.n_heads)

    # children
    @property
    def _width(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    def q(self, layer: int) -> int:
        return layer * self._width

    def k(self, layer: int) -> int:
        return self.q(layer) + self.n_heads

    def v(self, layer: int) -> int:
        return self.k(layer) + self.n_kv_heads

    def mlp_in(self, layer: int) -> int:
        return self.v(layer) + self.n_kv_heads

    @property
    def logits(self) -> int:
        return self.n_layers * self._width

    @property
    def n_children(self) -> int:
        return self.logits + 1

    @functools.cached_property
    def parent_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @functools.cached_property
    def child_names(self) -> list[str]:
        group = "h" if self.n_kv_heads == self.n_heads else "g"
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
            for kind in "kv":
                names += [f"a{layer}.{group}{g}<{kind}>" for g in range(self.n_kv_heads)]
            names.append(f"m{layer}")
        return [*names, "logits"]

    @functools.cached_property
    def upstream(self) -> Int[Tensor, " child"]:
        """How many parents (a prefix) feed each child."""
        out = torch.empty(self.n_children, dtype=torch.long)
        for layer in range(self.n_layers):
            out[self.q(layer) : self.mlp_in(layer)] = self.head(layer)
            out[self.mlp_in(layer)] = self.head(layer) if self.parallel else self.mlp(layer)
        out[self.logits] = self.n_parents
        return out

    @functools.cached_property
    def valid(self) -> Bool[Tensor, "parent child"]:
        """``valid[u, c]``: parent ``u`` feeds child ``c``."""
        return torch.arange(self.n_parents)[:, None] < self.upstream[None, :]

    @functools.cached_property
    def feeds(self) -> list[list[int]]:
        """The parent indices of the node(s) each child is an input of (``[]`` for logits): a
        key/value input feeds every query head of its group."""
        per_group = self.n_heads // self.n_kv_heads
        out: list[list[int]] = []
        for layer in range(self.n_layers):
            out += [[self.head(layer, h)] for h in range(self.n_heads)]
            groups = [
                [self.head(layer, g * per_group + j) for j in range(per_group)]
                for g in range(self.n_kv_heads)
            ]
            out += groups + groups + [[self.mlp(layer)]]
        return [*out, []]

    def top(self, scores: Tensor, among: Tensor, n: int | None) -> Bool[Tensor, "parent child"]:
        """The ``n`` edges of ``among`` with the largest ``|scores|`` (all of them for ``None``)."""
        count = int(among.sum()) if n is None else min(n, int(among.sum()))
        flat = torch.where(among & self.valid, scores.abs(), -1.0).flatten()
        out = torch.zeros(flat.numel(), dtype=torch.bool)
        out[flat.topk(count).indices] = True
        return out.view_as(among)

    def prune(self, chosen: Bool[Tensor, "parent child"]) -> Bool[Tensor, "parent child"]:
        """The chosen edges that lie on a path input → … → logits."""
        chosen = chosen & self.valid
        reached = torch.zeros(self.n_parents, dtype=torch.bool)  # from the input
        reached[0] = True
        for child in range(self.n_children - 1):  # children come in topological order
            if (chosen[:, child] & reached).any():
                reached[self.feeds[child]] = True
        live = torch.zeros(self.n_parents, dtype=torch.bool)  # reach the logits
        useful = torch.zeros(self.n_children, dtype=torch.bool)
        useful[self.logits] = True
        for child in range(self.n_children - 1, -1, -1):
            if child != self.logits:
                useful[child] = bool(live[self.feeds[child]].any())
            live |= chosen[:, child] & useful[child]
        on_path = reached & live
        feeds_path = torch.tensor([bool(on_path[f].any()) for f in self.feeds[:-1]] + [True])
        return chosen & on_path[:, None] & feeds_path[None, :]


# ---------------------------------------------------------------------------------- hooks


@contextmanager
def split_inputs(model: Any) -> Iterator[None]:
    """Turns on split q/k/v inputs and ``hook_mlp_in`` for the block, restoring them after."""
    cfg = model.cfg
    before = (
        bool(getattr(cfg, "use_split_qkv_input", False)),
        bool(getattr(cfg, "use_hook_mlp_in", False)),
    )
    try:
        if not hasattr(model, "set_use_split_qkv_input") or not hasattr(
            model, "set_use_hook_mlp_in"
        ):
            raise NotImplementedError("no set_use_split_qkv_input / set_use_hook_mlp_in")
        model.set_use_split_qkv_input(True)
        model.set_use_hook_mlp_in(True)
    except (NotImplementedError, AttributeError, ValueError) as error:
        _restore(model, before)
        raise ValueError(f"{NEEDS}; this model refuses: {error}") from error
    try:
        yield
    finally:
        _restore(model, before)


def _restore(model: Any, before: tuple[bool, bool]) -> None:
    if hasattr(model, "set_use_split_qkv_input"):
        model.set_use_split_qkv_input(before[0])
    if hasattr(model, "set_use_hook_mlp_in"):
        model.set_use_hook_mlp_in(before[1])


Store = Callable[[int, Tensor], None]
"""``store(first_parent, outputs[batch, pos, k, d_model])``."""


def output_hooks(model: Any, graph: Graph, store: Store) -> list[tuple[str, Any]]:
    """Forward hooks that hand every node's output to ``store`` (and change nothing)."""
    w_o = [block.attn.W_O.detach() for block in block_modules(model)]  # [head, d_head, d_model]

    def at(first: int, per_head: Tensor | None = None) -> Any:
        def hook(x: Tensor, hook: Any) -> None:
            if per_head is None:
                store(first, x[:, :, None])
            else:
                store(first, torch.einsum("bphe,hed->bphd", x, per_head.to(x.dtype)))

        return hook

    hooks = [(resid_pre_hook_name(0), at(0))]
    for layer in range(graph.n_layers):
        hooks.append((get_act_name("z", layer), at(graph.head(layer), w_o[layer])))
        hooks.append((get_act_name("mlp_out", layer), at(graph.mlp(layer))))
    return hooks


def input_hook_points(model: Any, graph: Graph) -> list[tuple[str, int, int]]:
    """``(hook name, first child, number of children)`` of every node input, in pass order."""
    points = []
    for layer in range(graph.n_layers):
        points.append((get_act_name("q_input", layer), graph.q(layer), graph.n_heads))
        points.append((get_act_name("k_input", layer), graph.k(layer), graph.n_kv_heads))
        points.append((get_act_name("v_input", layer), graph.v(layer), graph.n_kv_heads))
        points.append((get_act_name("mlp_in", layer), graph.mlp_in(layer), 1))
    return [*points, (final_resid_hook_name(model), graph.logits, 1)]


def input_hooks(
    model: Any, graph: Graph, edit: Callable[[int, int, Tensor], Tensor]
) -> list[tuple[str, Any]]:
    """Forward hooks at every node input: ``edit(first_child, k, x[batch, pos, k, d_model])``
    returns the input to use (same shape)."""

    def at(name: str, first: int, k: int) -> Any:
        def hook(x: Tensor, hook: Any) -> Tensor:
            flat = x.dim() == 3
            view = x[:, :, None] if flat else x
            if view.shape[2] != k:
                raise ValueError(f"{name} has {view.shape[2]} heads, expected {k}. {NEEDS}")
            out = edit(first, k, view)
            return out[:, :, 0] if flat else out

        return hook

    return [(name, at(name, first, k)) for name, first, k in input_hook_points(model, graph)]


# ---------------------------------------------------------------------------------- passes


def record_pass(
    model: Any, graph: Graph, tokens: Int[Tensor, "batch pos"], buffer: Tensor, sign: float
) -> Float[Tensor, "batch pos vocab"]:
    """One pass (no gradient) that adds ``sign`` × every node's output to ``buffer``
    (``[batch, pos, parent, d_model]``); returns the logits."""

    def store(first: int, value: Tensor) -> None:
        buffer[:, :, first : first + value.shape[2]] += sign * value.to(buffer.dtype)

    with torch.no_grad(), model.hooks(fwd_hooks=output_hooks(model, graph, store)):
        return model(tokens)


def gradient_pass(
    model: Any,
    graph: Graph,
    tokens: Int[Tensor, "batch pos"],
    first_input: Float[Tensor, "batch pos d_model"],
    metric: Callable[[Tensor], Tensor],
    diff: Float[Tensor, "batch pos parent d_model"],
    scores: Float[Tensor, "parent child"],
) -> None:
    """Runs ``tokens`` with the input node's output replaced by ``first_input``, and adds, for
    ``metric`` summed over the batch,
    ``Σ_{batch, pos} diff[u] · ∂metric/∂input(c)`` to ``scores[u, c]`` for every edge."""
    seen: list[tuple[int, int, Tensor]] = []

    def keep(first: int, k: int, x: Tensor) -> Tensor:
        seen.append((first, k, x))
        return x

    leaf = first_input.detach().clone().requires_grad_(True)
    hooks = [(resid_pre_hook_name(0), lambda x, hook: leaf.to(x.dtype))]
    hooks += input_hooks(model, graph, keep)
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(tokens)).sum()
        grads = torch.autograd.grad(value, [x for _, _, x in seen], allow_unused=True)
    for (first, k, _), grad in zip(seen, grads, strict=True):
        if grad is None:
            continue
        n = int(graph.upstream[first])
        scores[:n, first : first + k] += torch.einsum(
            "bpnd,bpkd->nk", diff[:, :, :n], grad.to(diff.dtype)
        )


def patched_pass(
    model: Any,
    graph: Graph,
    tokens: Int[Tensor, "batch pos"],
    corrupted: Float[Tensor, "batch pos parent d_model"],
    outside: Float[Tensor, "parent child"],
) -> Float[Tensor, "batch pos vocab"]:
    """Runs ``tokens`` with every edge where ``outside`` is 1 carrying its parent's corrupted
    output: each node input gets ``Σ_u outside[u, c] (corrupted[u] − current[u])`` added, the
    current outputs recorded in the same pass (parents run before their children)."""
    current = torch.zeros_like(corrupted)

    def store(first: int, value: Tensor) -> None:
        current[:, :, first : first + value.shape[2]] = value.to(current.dtype)

    def patch(first: int, k: int, x: Tensor) -> Tensor:
        n = int(graph.upstream[first])
        delta = (corrupted[:, :, :n] - current[:, :, :n]).to(x.dtype)
        return x + torch.einsum("bpnd,nk->bpkd", delta, outside[:n, first : first + k].to(x.dtype))

    hooks = output_hooks(model, graph, store) + input_hooks(model, graph, patch)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens)
